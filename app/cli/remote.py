"""What the commands that talk to a server share: ``--server`` / ``--api-key`` (else ``SPECPRUNE_URL`` /
``SPECPRUNE_API_KEY``), the Python client, and how its errors end a command."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from app.cli.failures import EXIT_FAILED, CommandError
from client import Client, JobCancelled, JobFailed, SpecpruneAPIError, TransportError, WaitTimeout
from client.client import API_KEY_VARIABLE, DEFAULT_URL, URL_VARIABLE


def add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server", metavar="URL", help=f"the service (default ${URL_VARIABLE}, else {DEFAULT_URL})"
    )
    group.add_argument("--api-key", metavar="KEY", help=f"API key (default ${API_KEY_VARIABLE})")


def client_from_args(args: argparse.Namespace) -> Client:
    """The client for ``--server`` / ``--api-key`` (or the environment)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is not for people
    return Client(args.server, args.api_key)


def translate_error(exc: Exception) -> CommandError | None:
    """Refused requests and bad local files exit 2; failed jobs, server errors and lost connections 1."""
    if isinstance(exc, SpecpruneAPIError):
        code = EXIT_FAILED if exc.status >= 500 else 2
        return CommandError(f"{exc.detail} (HTTP {exc.status}{_error_list(exc.problem)})", code)
    if isinstance(exc, JobFailed | JobCancelled | WaitTimeout):
        return CommandError(str(exc), EXIT_FAILED)
    if isinstance(exc, TransportError):
        return CommandError(f"cannot reach the server: {exc}", EXIT_FAILED)
    if isinstance(exc, OSError):
        return CommandError(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
    return None


def _error_list(problem: dict[str, Any]) -> str:
    errors = problem.get("errors")
    if not isinstance(errors, list) or not errors:
        return ""
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}"
        for e in errors[:3]
        if isinstance(e, dict)
    ]
    return "; " + "; ".join(parts) if parts and len(parts) > 1 else ""


def info(message: str) -> None:
    """A line for people (stderr; stdout carries results)."""
    print(message, file=sys.stderr)
