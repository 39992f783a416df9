"""Webhook signatures: HMAC-SHA256 over the delivery's timestamp and body, and checking one as a receiver does.

The signed bytes are `f"{timestamp}.".encode() + body`: the timestamp is inside the MAC, so a captured delivery
cannot be replayed later with a fresh timestamp, and the receiver refuses old ones (`tolerance`).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Leadscore-Signature"
TIMESTAMP_HEADER = "X-Leadscore-Timestamp"
EVENT_HEADER = "X-Leadscore-Event"
DELIVERY_HEADER = "X-Leadscore-Delivery"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Leadscore-Signature value: `v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify(
    secret: str,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if `signature` (the header's value) signs `body` at `timestamp` (the header's value, unix seconds)
    with `secret`, and that timestamp is within `tolerance` seconds of `now`. Constant-time comparison."""
    if not signature or not timestamp or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
