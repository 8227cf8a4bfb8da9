"""API keys: ``spk_<id>_<secret>``, shown once; only the secret's SHA-256 is stored, looked up by id."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "spk"


@dataclass(frozen=True)
class NewApiKey:
    """A freshly made key: ``token`` is what the client sends, ``secret_sha256`` what is stored."""

    key_id: str
    token: str
    secret_sha256: str


def generate_api_key() -> NewApiKey:
    """A random key with a 12-hex-digit public id and a 256-bit secret."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(
        key_id=key_id, token=f"{KEY_PREFIX}_{key_id}_{secret}", secret_sha256=hash_secret(secret)
    )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` from a presented token, None when it is not shaped like a key."""
    prefix, sep, rest = token.partition("_")
    key_id, sep2, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not sep or not sep2 or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


def secret_matches(secret: str, stored_sha256: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_sha256)
