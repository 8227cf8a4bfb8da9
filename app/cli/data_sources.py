"""``--data PATH_OR_URI`` for local commands: a path, or a ``file://``, ``http(s)://`` or ``s3://`` URI.

On the user's own machine the user is the operator, so any reference they give is read (the service, by
contrast, reads only references its operator allows). Remote data is streamed to a private cache file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from app.cli.failures import CommandError

CACHE = Path(tempfile.gettempdir()) / "specprune-data"


def local_path(source: str) -> Path:
    """The local file for ``source``, fetching remote references once per run into a private file."""
    parsed = urlparse(source)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme == "file" else source)
    CACHE.mkdir(mode=0o700, exist_ok=True)
    target = Path(tempfile.mkstemp(dir=CACHE, suffix=Path(parsed.path).suffix)[1])
    try:
        if parsed.scheme in ("http", "https"):
            with httpx.stream("GET", source, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                with target.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        elif parsed.scheme == "s3":
            import boto3

            endpoint = os.environ.get("SPECPRUNE_S3_ENDPOINT_URL") or None
            boto3.client("s3", endpoint_url=endpoint).download_file(
                parsed.netloc, parsed.path.lstrip("/"), str(target)
            )
        else:
            raise CommandError(
                f"{source}: unsupported data reference (use a path, file://, http(s):// or s3://)"
            )
    except (httpx.HTTPError, OSError) as exc:
        target.unlink(missing_ok=True)
        raise CommandError(f"{source}: could not fetch the data ({exc})") from None
    except Exception as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, CommandError):
            raise
        raise CommandError(f"{source}: could not fetch the data ({type(exc).__name__}: {exc})") from None
    return target
