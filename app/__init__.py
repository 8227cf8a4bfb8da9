"""specprune service: the HTTP API, its database models, storage, settings and CLI."""
