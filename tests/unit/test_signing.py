"""Webhook signatures: what `sign` makes, `verify` accepts, and everything else it refuses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from consumers.signing import sign, verify

SECRET = "whsec-0123456789abcdef"
BODY = b'{"kind":"segment_change","change_id":"c-1","lead_id":"L-1"}'
AT = 1_790_000_000


def test_the_signature_is_hmac_sha256_over_the_timestamp_a_dot_and_the_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{AT}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, AT, BODY) == f"v1={expected}"


def test_a_signature_verifies_within_the_tolerance_either_side() -> None:
    signature = sign(SECRET, AT, BODY)
    assert verify(SECRET, signature, str(AT), BODY, now=AT)
    assert verify(SECRET, signature, str(AT), BODY, now=AT + 300)
    assert verify(SECRET, signature, str(AT), BODY, now=AT - 300)  # the sender's clock a little ahead


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "now"),
    [
        ("whsec-another-secret-0000", str(AT), BODY, AT),  # wrong secret
        (SECRET, str(AT), BODY.replace(b"L-1", b"L-2"), AT),  # tampered body
        (SECRET, str(AT + 1), BODY, AT),  # timestamp changed: it is inside the MAC
        (SECRET, str(AT), BODY, AT + 301),  # too old: a replay
        (SECRET, str(AT), BODY, AT - 301),  # too far in the future
        (SECRET, "not-a-number", BODY, AT),
        (SECRET, None, BODY, AT),
        (SECRET, "", BODY, AT),
    ],
)
def test_anything_else_is_refused(secret: str, timestamp: str | None, body: bytes, now: float) -> None:
    assert not verify(secret, sign(SECRET, AT, BODY), timestamp, body, now=now)


@pytest.mark.parametrize("signature", [None, "", "v1=", "v0=" + "0" * 64, sign(SECRET, AT, BODY).upper()])
def test_a_missing_or_malformed_signature_is_refused(signature: str | None) -> None:
    assert not verify(SECRET, signature, str(AT), BODY, now=AT)


def test_the_tolerance_is_the_callers() -> None:
    signature = sign(SECRET, AT, BODY)
    assert not verify(SECRET, signature, str(AT), BODY, now=AT + 61, tolerance=60)
    assert verify(SECRET, signature, str(AT), BODY, now=AT + 3600, tolerance=3600)
