"""Opaque pagination cursors (``?after=``): a resource kind and a row sequence number, base64url."""

from __future__ import annotations

import base64
import binascii

from app.problems import Problem


def encode_cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int:
    """The sequence number in ``cursor``; 400 problem+json for anything this API did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, seq = text.partition(":")
        if prefix != kind or not seq.isdigit():
            raise ValueError(text)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem("bad-request", "'after' is not a cursor returned by this API") from None
