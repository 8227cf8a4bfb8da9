"""Verifying specprune's webhooks on the receiving side (Standard Webhooks signatures).

Each delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(space-separated ``v1,<base64>`` entries). The signature is HMAC-SHA256, keyed with the base64-decoded
part of the tenant's ``whsec_...`` secret, over ``f"{id}.{timestamp}.{body}"`` (the raw body bytes).

    from client import verify_webhook
    job = verify_webhook(secret, request.headers, request.body)   # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from client.errors import SpecpruneClientError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(SpecpruneClientError):
    """The delivery is not authentic (bad or missing signature) or too old (a replay)."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and timestamp; returns the job object it carries."""
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp!r} is not unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (a replay?)")
    payload = body if isinstance(body, bytes) else body.encode()
    expected = _signature(secret, f"{message_id}.{sent_at}.".encode() + payload)
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            result: dict[str, Any] = json.loads(payload)
            return result
    raise WebhookVerificationError("no webhook-signature matches")


def _signature(secret: str, content: bytes) -> str:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not a whsec_ secret") from None
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
