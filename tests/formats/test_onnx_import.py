"""The ONNX converter on hand-built graphs in the styles real exporters write.

``load_model`` checks every conversion against onnxruntime (at two batch sizes when the batch is
dynamic), so a passing load is already a numerical check; these tests add what the program looks like.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from core.errors import CalibrationError
from core.formats import ExampleInputRequiredError, LoadedModel, UnsupportedFormatError, load_model
from tests.formats.conftest import write_zip

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _load(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    opset: int,
    example: torch.Tensor | None = None,
) -> LoadedModel:
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "test", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / "model.bin"
    path.write_bytes(model.SerializeToString())
    return load_model(path, example_input=example)


def _targets(loaded: LoadedModel) -> set[object]:
    return {n.target for n in loaded.program.graph.nodes if n.op == "call_function"}


def test_cnn_in_legacy_exporter_style(tmp_path: Path) -> None:
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 2, 2], strides=[1, 1]
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "bn1.weight", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"]
        ),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight"], ["c2"], group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("HardSwish", ["r2"], ["h2"]),
        helper.make_node("GlobalAveragePool", ["h2"], ["g"]),
        helper.make_node("Shape", ["g"], ["shape"]),
        helper.make_node("Gather", ["shape", "index0"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["g", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    initializers = [
        _weight("conv1.weight", 8, 3, 3, 3),
        _weight("conv1.bias", 8),
        _weight("bn1.weight", 8),
        _weight("bn1.bias", 8),
        _weight("bn1.mean", 8),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, 8).astype(np.float32), "bn1.var"),
        _weight("conv2.weight", 8, 4, 3, 3),
        _scalar("zero", 0.0),
        _scalar("six", 6.0),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "index0"),
        _ints("axis0", [0]),
        _ints("minus_one", [-1]),
        _weight("fc.weight", 5, 8),
        _weight("fc.bias", 5),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=14)

    assert loaded.input_shape == (None, 3, 16, 16) and loaded.output_shape == (None, 5)
    aten = torch.ops.aten
    assert {
        aten.conv2d.default,
        aten.batch_norm.default,
        aten.linear.default,
        aten.relu6.default,
    } <= _targets(loaded)
    assert {"conv1.weight", "conv2.weight", "bn1.weight", "fc.weight", "fc.bias"} <= set(
        loaded.program.graph_signature.parameters
    )
    assert {"bn1.running_mean", "bn1.running_var"} <= set(loaded.program.graph_signature.buffers)
    stored = sum(t.numel() for t in loaded.program.state_dict.values())
    weights = sum(int(np.prod(t.dims)) for t in initializers if t.data_type == TensorProto.FLOAT)
    assert stored <= weights + 8, "weights copied into layers must not also be kept as buffers"


def test_layers_are_named_after_the_modules_the_exporters_record(tmp_path: Path) -> None:
    """The TorchScript-based exporter folds each BatchNorm into anonymous ``onnx::Conv_7`` weights but
    scopes its node names (``/features/features.0/features.0.0/Conv``); the dynamo exporter records name
    scopes in the node's metadata (a transposed weight copy is ``val_3``). The layers take those module
    paths, and a ``Clip(0, 6)`` between two convolutions leaves the first one prunable."""
    from core.graph import analyse

    nodes = [
        helper.make_node(
            "Conv", ["x", "onnx::Conv_7", "onnx::Conv_8"], ["c1"], "/features/features.0/features.0.0/Conv"
        ),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], "/features/features.0/features.0.2/Clip"),
        helper.make_node("Conv", ["r1", "onnx::Conv_10"], ["c2"], "/features/features.1/Conv"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "val_3"], ["m"], "node_linear"),
        helper.make_node("Add", ["m", "val_4"], ["y"], "node_linear_bias"),
    ]
    scopes = nodes[5].metadata_props.add()
    scopes.key, scopes.value = "pkg.torch.onnx.name_scopes", "['', 'head', 'linear']"
    initializers = [
        _weight("onnx::Conv_7", 8, 3, 3, 3),
        _weight("onnx::Conv_8", 8),
        _scalar("zero", 0.0),
        _scalar("six", 6.0),
        _weight("onnx::Conv_10", 6, 8, 1, 1),
        _weight("val_3", 6, 4),
        _weight("val_4", 4),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=13)
    assert {
        "features.0.0.weight",
        "features.0.0.bias",
        "features.1.weight",
        "head.weight",
        "head.bias",
    } <= set(loaded.program.graph_signature.parameters)
    groups = {g.name: g for g in analyse(loaded.program.module(), (torch.randn(2, 3, 8, 8),)).groups}
    assert groups["features.0.0"].skipped is None


@pytest.mark.parametrize(("upper", "k"), [(0, None), (1, 1), (1, -2)])
def test_trilu_keeps_a_triangle(tmp_path: Path, upper: int, k: int | None) -> None:
    """A causal mask, as the dynamo exporter writes ``scaled_dot_product_attention(..., is_causal=True)``."""
    inputs = ["x"] if k is None else ["x", "k"]
    nodes = [helper.make_node("Trilu", inputs, ["t"], upper=upper), helper.make_node("Relu", ["t"], ["y"])]
    initializers = [] if k is None else [numpy_helper.from_array(np.array(k, dtype=np.int64), "k")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 5])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=14)
    data = torch.randn(3, 5, 5)
    expected = (torch.triu if upper else torch.tril)(data, k or 0).relu()
    assert torch.equal(loaded.program.module()(data), expected)


def test_elementwise_operators_of_other_models(tmp_path: Path) -> None:
    """Rotary embeddings' ``Sin``/``Cos``, ``Mod`` (both signs), ``Mean``, ``Round``, the tests
    ``IsNaN``/``IsInf``/``Xor`` and ``CastLike``: each checked against onnxruntime by load_model."""
    nodes = [
        helper.make_node("Sin", ["x"], ["sin"]),
        helper.make_node("Cos", ["x"], ["cos"]),
        helper.make_node("Mean", ["sin", "cos", "x"], ["mean"]),
        helper.make_node("Mul", ["mean", "four"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["round"]),
        helper.make_node("Cast", ["scaled"], ["whole"], to=TensorProto.INT64),
        helper.make_node("Mod", ["whole", "three"], ["int_mod"]),  # the divisor's sign
        helper.make_node("Cast", ["int_mod"], ["mod"], to=TensorProto.FLOAT),
        helper.make_node("Mod", ["x", "step"], ["fmod"], fmod=1),  # the dividend's
        helper.make_node("IsNaN", ["x"], ["nan"]),
        helper.make_node("IsInf", ["x"], ["inf"], detect_negative=0),
        helper.make_node("Greater", ["x", "zero"], ["positive"]),
        helper.make_node("Xor", ["positive", "nan"], ["xor"]),
        helper.make_node("Or", ["xor", "inf"], ["flag"]),
        helper.make_node("CastLike", ["flag", "x"], ["flag_float"]),
        helper.make_node("Sum", ["round", "mod", "fmod", "flag_float"], ["y"]),
    ]
    initializers = [
        _scalar("four", 4.0),
        numpy_helper.from_array(np.array(-3, dtype=np.int64), "three"),
        _scalar("step", -0.7),
        _scalar("zero", 0.0),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])
    _load(tmp_path, nodes, [x], initializers, opset=18)


def test_reductions_and_selections_of_other_models(tmp_path: Path) -> None:
    """``ReduceL2``/``ReduceProd``/``ReduceSumSquare``/``ReduceLogSumExp`` (axes as an input),
    ``ArgMax``/``ArgMin`` (last index too), ``CumSum`` (exclusive, reversed) and ``TopK``."""
    nodes = [
        helper.make_node("ReduceL2", ["x", "axis2"], ["l2"]),
        helper.make_node("ReduceProd", ["x", "axis2"], ["prod"]),
        helper.make_node("ReduceSumSquare", ["x", "axis2"], ["sq"]),
        helper.make_node("ReduceLogSumExp", ["x", "axis2"], ["lse"]),
        helper.make_node("ArgMax", ["x"], ["amax"], axis=2, select_last_index=1),
        helper.make_node("ArgMin", ["x"], ["amin"], axis=-1),
        helper.make_node("Cast", ["amax"], ["amax_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["amin"], ["amin_f"], to=TensorProto.FLOAT),
        helper.make_node("Sum", ["l2", "prod", "sq", "lse", "amax_f", "amin_f"], ["pooled"]),
        helper.make_node("CumSum", ["x", "axis_scalar"], ["cum"], exclusive=1, reverse=1),
        helper.make_node("TopK", ["cum", "k"], ["top", "top_index"], axis=-1),
        helper.make_node("Add", ["top", "pooled"], ["y"]),
    ]
    initializers = [
        _ints("axis2", [2]),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "axis_scalar"),
        _ints("k", [1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=18)
    assert loaded.output_shape == (None, 3, 1)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_layout_operators_of_other_models(tmp_path: Path, mode: str) -> None:
    """``Einsum``, ``Tile``, ``GatherElements``, ``DepthToSpace`` (super-resolution's pixel shuffle, in
    both modes) and ``SpaceToDepth``."""
    nodes = [
        helper.make_node("Einsum", ["x", "mix"], ["mixed"], equation="nchw,cd->ndhw"),
        helper.make_node("DepthToSpace", ["mixed"], ["up"], blocksize=2, mode=mode),
        helper.make_node("SpaceToDepth", ["up"], ["down"], blocksize=2),
        helper.make_node("Tile", ["down", "repeats"], ["tiled"]),
        helper.make_node("GatherElements", ["tiled", "index"], ["y"], axis=1),
    ]
    index = RNG.integers(-8, 8, size=(2, 8, 4, 4)).astype(np.int64)
    initializers = [
        _weight("mix", 4, 8),
        _ints("repeats", [1, 2, 1, 1]),
        numpy_helper.from_array(index, "index"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 4, 4])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=18)
    assert loaded.output_shape == (2, 8, 4, 4)


def test_a_split_conv_output_is_pruned_part_by_part(tmp_path: Path) -> None:
    """ONNX ``Split`` (a CSP block's chunk) becomes ``split_with_sizes``: each part of the conv it cuts is
    a group of its own, and the compressed program splits at the parts' new widths."""
    from core import CompressionConfig, compress

    nodes = [
        helper.make_node("Conv", ["x", "stem.weight"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Split", ["r", "halves"], ["a", "b"], axis=1),
        helper.make_node("Conv", ["b", "inner.weight"], ["i"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["i"], ["ri"]),
        helper.make_node("Concat", ["a", "ri"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "head.weight"], ["y"]),
    ]
    initializers = [
        _weight("stem.weight", 8, 3, 3, 3),
        _ints("halves", [3, 5]),
        _weight("inner.weight", 6, 5, 3, 3),
        _weight("head.weight", 4, 9, 1, 1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=13)
    data = torch.randn(64, 3, 8, 8)
    result = compress(
        loaded.program,
        data,
        CompressionConfig(widths={"stem[0:3]": 2, "stem[3:8]": 3}),
        measure_latency=False,
    )
    assert result.program.state_dict["stem.weight"].shape[0] == 5
    splits = [
        n.args[1] for n in result.program.graph.nodes if n.target is torch.ops.aten.split_with_sizes.default
    ]
    assert splits == [[2, 3]]
    assert result.program.module()(data).shape == (64, 4, 8, 8)


def test_a_vit_exported_to_onnx_keeps_its_heads_prunable(tmp_path: Path) -> None:
    """torch's ONNX exporter writes a fused q/k/v's unbind as Split + Squeeze and aliases shared weights
    through Identity nodes: both separate and fused q/k/v heads stay prunable after the import."""
    from core import CompressionConfig, compress
    from tests.core import models

    torch.manual_seed(0)
    model, x = models.TinyViT().eval(), torch.randn(64, 3, 16, 16)
    path = tmp_path / "vit.onnx"
    torch.onnx.export(model, (x[:2],), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert any(node.op_type == "Identity" for node in onnx.load(path).graph.node)
    program = load_model(path).program
    heads = {"blocks.0.attn.q+2": 2, "blocks.1.attn.qkv[0:32]+2": 3}
    result = compress(program, x, CompressionConfig(widths=heads), measure_latency=False)
    assert {layer["name"]: layer["width_after"] for layer in result.report["layers"]} == {
        **heads,
        "blocks.0.mlp.0": 128,
        "blocks.1.mlp.0": 128,
    }
    assert result.program.state_dict["blocks.1.attn.qkv.weight"].shape == (72, 32)
    assert result.program.module()(x[:5]).shape == (5, 5)


def test_torch_multihead_attention_keeps_its_heads_prunable_after_onnx(tmp_path: Path) -> None:
    """The ONNX round trip of ``nn.MultiheadAttention`` folds heads into the batch from their own axis
    (``(B, H, N, D) -> (-1, N, D)``) with inferred sizes: a dead head is still dropped exactly."""
    from core import CompressionConfig, compress
    from core.formats.onnx_export import save_onnx
    from tests.formats.conftest import TransformerBlock

    torch.manual_seed(0)
    model, x = TransformerBlock().eval(), torch.randn(64, 6, 16)
    with torch.no_grad():  # v's rows of head 1 (of 2, 8 rows each)
        model.attn.in_proj_weight[40:48] = 0
        model.attn.in_proj_bias[40:48] = 0
    program = torch.export.export(model, (x[:3],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    save_onnx(program, tmp_path / "block.onnx")
    loaded = load_model(tmp_path / "block.onnx").program
    heads = "attn.in_proj[0:16]+2"
    result = compress(loaded, x, CompressionConfig(widths={heads: 1}), measure_latency=False)
    assert next(layer["kept"] for layer in result.report["layers"] if layer["name"] == heads) == [0]
    assert result.program.state_dict["attn.in_proj.weight"].shape == (24, 16)  # as the ONNX file names it
    with torch.no_grad():
        y = result.program.module()(x[:5])
        assert float((y - model(x[:5])).norm() / model(x[:5]).norm()) < 1e-4


def test_transformer_mlp_with_matmul_bias_and_erf_gelu(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.weight", "ln.bias"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["n", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "mlp.fc1.bias"], ["a1"]),
        helper.make_node("Div", ["a1", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["a1", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"]),
        helper.make_node("Add", ["mlp.fc2.bias", "m2"], ["a2"]),
        helper.make_node("Add", ["x", "a2"], ["res"]),
        helper.make_node("Transpose", ["res"], ["t"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["t"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Softmax", ["pooled"], ["out"], axis=-1),
    ]
    initializers = [
        _weight("ln.weight", 16),
        _weight("ln.bias", 16),
        _weight("w1", 16, 32),
        _weight("mlp.fc1.bias", 32),
        _scalar("sqrt2", 2.0**0.5),
        _scalar("one", 1.0),
        _scalar("half", 0.5),
        _weight("w2", 32, 16),
        _weight("mlp.fc2.bias", 16),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 16])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=17)

    targets = _targets(loaded)
    assert torch.ops.aten.gelu.default in targets and torch.ops.aten.erf.default not in targets
    linears = [n for n in loaded.program.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == 2 and all(len(n.args) == 3 for n in linears)  # bias fused into the linear
    parameters = set(loaded.program.graph_signature.parameters)
    assert {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ln.weight"} <= parameters
    assert loaded.dynamic_batch


def test_resize_pad_and_pooling(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
        helper.make_node(
            "AveragePool", ["padded"], ["avg"], kernel_shape=[3, 3], count_include_pad=1, pads=[1, 1, 1, 1]
        ),
        helper.make_node("Resize", ["avg", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Sigmoid", ["up"], ["gate"]),
        helper.make_node("Tanh", ["up"], ["value"]),
        helper.make_node("Mul", ["gate", "value"], ["mixed"]),
        helper.make_node("Concat", ["mixed", "up"], ["both"], axis=1),
        helper.make_node("Flatten", ["both"], ["out"], axis=1),
    ]
    initializers = [
        _ints("pads", [0, 0, 1, 1, 0, 0, 1, 1]),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=13)
    assert loaded.output_shape == (None, 4 * 14 * 14)


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 1, 0]], ids=["symmetric", "asymmetric"])
def test_transposed_convolutions_upsample_as_onnxruntime_does(tmp_path: Path, pads: list[int]) -> None:
    """A decoder's ``ConvTranspose`` (grouped, strided, output padding) becomes a torch layer; load_model
    compares it with onnxruntime at two batch sizes."""
    nodes = [
        helper.make_node(
            "ConvTranspose",
            ["x", "up.weight", "up.bias"],
            ["y"],
            strides=[2, 2],
            pads=pads,
            output_padding=[1, 1],
            group=2,
        ),
        helper.make_node("Relu", ["y"], ["out"]),
    ]
    initializers = [_weight("up.weight", 4, 3, 3, 3), _weight("up.bias", 6)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=13)
    assert torch.ops.aten.conv_transpose2d.input in _targets(loaded)
    full = 2 * 4 + 1 + 3  # stride (in - 1) + output_padding + k, before the pads
    assert loaded.output_shape == (None, 6, full - pads[0] - pads[2], full - pads[1] - pads[3])


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("RoiAlign", ["x", "rois", "k"], ["values"]),
        helper.make_node("NonZero", ["values"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    with pytest.raises(UnsupportedFormatError, match="NonZero, RoiAlign"):
        _load(tmp_path, nodes, [x], [_ints("k", [2])], opset=13)


def test_custom_domain_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("FusedGemm", ["x", "x"], ["y"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedFormatError, match=r"com\.microsoft"):
        load_model(path)


def _linear_model_nodes() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    return [helper.make_node("MatMul", ["x", "w"], ["out"])], [_weight("w", 8, 4)]


def test_example_must_fit_static_dimensions(tmp_path: Path) -> None:
    nodes, initializers = _linear_model_nodes()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    with pytest.raises(CalibrationError, match=r"takes shape \(N, 8\)"):
        _load(tmp_path, nodes, [x], initializers, opset=13, example=torch.randn(4, 9))


def test_symbolic_feature_dimensions_need_an_example(tmp_path: Path) -> None:
    nodes, initializers = _linear_model_nodes()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", 8])
    with pytest.raises(ExampleInputRequiredError):
        _load(tmp_path, nodes, [x], initializers, opset=13)
    loaded = _load(tmp_path, nodes, [x], initializers, opset=13, example=torch.randn(2, 5, 8))
    assert loaded.input_shape == (None, None, 8)


def _external_linear(tmp_path: Path, location: str) -> tuple[Path, np.ndarray]:
    """``y = x @ w`` with ``w``'s bytes in the file ``location`` (relative to the model's directory)."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(model.SerializeToString())
    (path.parent / location).write_bytes(w.tobytes())
    return path, w


def test_external_data_beside_a_local_model_is_read_when_asked(tmp_path: Path) -> None:
    path, w = _external_linear(tmp_path, "model.onnx.data")
    with pytest.raises(UnsupportedFormatError, match="external"):
        load_model(path)  # the default (and the service): refused
    loaded = load_model(path, external_data=True)
    x = torch.randn(5, 4)
    assert torch.allclose(loaded.program.module()(x), x @ torch.from_numpy(w), atol=1e-6)


def test_external_data_outside_the_models_directory_is_refused(tmp_path: Path) -> None:
    path, _ = _external_linear(tmp_path, "../weights.bin")
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(UnsupportedFormatError, match="not a file beside the model"):
        load_model(path, external_data=True)


def test_a_zip_of_the_onnx_file_and_its_external_data_loads(tmp_path: Path) -> None:
    path, w = _external_linear(tmp_path, "model.onnx.data")
    archive = write_zip(
        tmp_path / "model.zip",
        {
            "net/model.onnx": path.read_bytes(),
            "net/model.onnx.data": (path.parent / "model.onnx.data").read_bytes(),
            "__MACOSX/net/._model.onnx": b"\x00\x05\x16\x07",  # what macOS's Finder adds: not a model
        },
    )
    (path.parent / "model.onnx.data").unlink()  # read from the archive, never from beside it
    loaded = load_model(archive)
    assert loaded.format == "onnx"
    x = torch.randn(5, 4)
    assert torch.allclose(loaded.program.module()(x), x @ torch.from_numpy(w), atol=1e-6)


def test_a_zipped_onnx_file_reads_nothing_from_outside_its_archive(tmp_path: Path) -> None:
    path, _ = _external_linear(tmp_path, "model.onnx.data")
    alone = write_zip(tmp_path / "alone.zip", {"model.onnx": path.read_bytes()})  # the data stays on disk
    with pytest.raises(
        UnsupportedFormatError, match=r"not a file beside 'model\.onnx' in the zip"
    ) as refused:
        load_model(alone)
    assert "zip" in refused.value.hint
    (tmp_path / "up").mkdir()
    path, _ = _external_linear(tmp_path / "up", "../model.onnx.data")
    escaping = write_zip(
        tmp_path / "up.zip", {"a/model.onnx": path.read_bytes(), "model.onnx.data": b"\0" * 48}
    )
    with pytest.raises(UnsupportedFormatError, match="not a file beside"):
        load_model(escaping)


def test_a_zip_of_two_onnx_files_is_refused(tmp_path: Path) -> None:
    path, _ = _external_linear(tmp_path, "model.onnx.data")
    archive = write_zip(tmp_path / "two.zip", {"a.onnx": path.read_bytes(), "b.onnx": path.read_bytes()})
    with pytest.raises(UnsupportedFormatError, match="2 ONNX files"):
        load_model(archive)


def test_normalisations_and_activations_of_older_and_other_exporters(tmp_path: Path) -> None:
    """InstanceNormalization, PRelu (per channel and shared), LRN (AlexNet, GoogLeNet), the ELU family
    and others: load_model compares each with onnxruntime. A layer named ``in`` (a Python keyword) is
    renamed so the generated code can name it."""
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c1", "in.scale", "in.bias"], ["n1"], epsilon=1e-3),
        helper.make_node("PRelu", ["n1", "prelu.slope"], ["p1"]),
        helper.make_node("LRN", ["p1"], ["l1"], size=5, alpha=1e-2, beta=0.75, bias=2.0),
        helper.make_node("Elu", ["l1"], ["e1"], alpha=0.5),
        helper.make_node("Selu", ["e1"], ["s1"]),
        helper.make_node("Selu", ["s1"], ["s2"], alpha=1.5, gamma=1.1),
        helper.make_node("Celu", ["s2"], ["ce"], alpha=2.0),
        helper.make_node("ThresholdedRelu", ["ce"], ["t1"], alpha=0.1),
        helper.make_node("Softsign", ["t1"], ["ss"]),
        helper.make_node("Mish", ["ss"], ["m1"]),
        helper.make_node("PRelu", ["m1", "shared.slope"], ["p2"]),
        helper.make_node("Sign", ["p2"], ["sg"]),
        helper.make_node("Mul", ["sg", "p2"], ["out"]),
    ]
    initializers = [
        _weight("conv1.weight", 6, 3, 3, 3),
        _weight("in.scale", 6),
        _weight("in.bias", 6),
        _weight("prelu.slope", 6, 1, 1),
        numpy_helper.from_array(np.array([0.2], dtype=np.float32), "shared.slope"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    loaded = _load(tmp_path, nodes, [x], initializers, opset=18)
    assert loaded.output_shape == (None, 6, 6, 6)
    assert {torch.ops.aten.instance_norm.default, torch.ops.aten.prelu.default} <= _targets(loaded)
