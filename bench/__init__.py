"""Benchmarks and the small CIFAR-10 models and checkpoints they (and core's real-data tests) use."""
