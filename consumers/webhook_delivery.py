"""One webhook delivery: a signed POST of a change message to a subscription's URL, retried with exponential
backoff until the receiver takes it, refuses it or the attempts run out. No Kafka here (consumers/webhooks.py
reads the change topic, keeps each lead's order and dead-letters what this gives up on)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import httpx

from app import metrics
from app.settings import Settings, WebhookSubscription
from consumers.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from schemas.changes import LeadErased, SegmentChange

log = logging.getLogger(__name__)

# Worth another attempt: the receiver may be back later. Any other non-2xx answer is a refusal.
RETRYABLE_STATUSES = frozenset({408, 429})
_ERROR_CHARS = 200
_USER_AGENT = "leadscore-webhooks"


class DeadLetterReason(StrEnum):
    REFUSED = "refused"  # a 4xx (but 408 and 429) or a redirect: the same request would be refused again
    FAILED = "failed"  # every attempt failed: connection errors, timeouts, 5xx, 408, 429
    UNREADABLE = "unreadable"  # not a change message: nothing to deliver


@dataclass(frozen=True)
class DeliveryOutcome:
    """Delivered (`reason` None) or given up on, with the last error and how many attempts were made."""

    attempts: int
    reason: DeadLetterReason | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.reason is None


def wants(subscription: WebhookSubscription, message: SegmentChange | LeadErased) -> bool:
    """Does the subscription receive this message? Erasures always (a receiver holding the lead must drop it); a
    segment change when its set is among `segment_sets` and its from or to segment among `segments` (unset:
    any)."""
    if isinstance(message, LeadErased):
        return True
    if subscription.segment_sets is not None and message.segment_set not in subscription.segment_sets:
        return False
    if subscription.segments is None:
        return True
    return message.to_segment in subscription.segments or message.from_segment in subscription.segments


def safe_url(url: str) -> str:
    """The URL as logs may show it: no user info, no query string (either may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookSender:
    """Delivers change messages to one subscription; one instance per subscription (its own connection pool)."""

    def __init__(
        self,
        subscription: WebhookSubscription,
        settings: Settings,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.subscription = subscription
        self.client = client
        self.max_attempts = settings.webhook_max_attempts
        self.backoff = settings.webhook_backoff_seconds
        self.backoff_max = settings.webhook_backoff_max_seconds
        self.timeout = settings.webhook_timeout_seconds
        self.clock = clock
        self._url = str(subscription.url)
        self.shown_url = safe_url(self._url)  # what logs show
        self._secret = subscription.secret.get_secret_value()
        self._deliveries = {
            outcome: metrics.WEBHOOK_DELIVERIES.labels(subscription.name, outcome)
            for outcome in ("delivered", "retried", "dead_lettered")
        }
        self._seconds = metrics.WEBHOOK_DELIVERY_SECONDS.labels(subscription.name)

    async def deliver(
        self, message: SegmentChange | LeadErased, body: bytes, give_up: asyncio.Event
    ) -> DeliveryOutcome | None:
        """POST `body` (the message's bytes as on the topic) until a 2xx, a refusal or the last attempt; None if
        `give_up` was set before that (stopping, partitions revoked): the message stays undelivered, not dead."""
        next_delay = self.backoff
        wait = 0.0
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                # A stop or a rebalance does not wait for the backoff: the message is redelivered later.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(give_up.wait(), timeout=wait)
                if give_up.is_set():
                    return None
                self._deliveries["retried"].inc()
            status, error, retry_after = await self._attempt(message, body)
            if status is not None and 200 <= status < 300:
                self._deliveries["delivered"].inc()
                return DeliveryOutcome(attempt)
            if status is not None and not (status >= 500 or status in RETRYABLE_STATUSES):
                return DeliveryOutcome(attempt, DeadLetterReason.REFUSED, error)
            log.debug(
                "webhook %s: %s for lead %s (attempt %d of %d)",
                self.subscription.name,
                error,
                message.lead_id,
                attempt,
                self.max_attempts,
            )
            # Doubling from the first delay up to the longest; a receiver's Retry-After (429, 503) is honoured
            # up to the longest too.
            wait = min(max(next_delay, retry_after or 0.0), self.backoff_max)
            next_delay = min(next_delay * 2, self.backoff_max)
        return DeliveryOutcome(self.max_attempts, DeadLetterReason.FAILED, error)

    async def _attempt(self, message: SegmentChange | LeadErased, body: bytes) -> tuple[int | None, str, float | None]:
        """One POST: (status or None when no answer, the error to record, Retry-After seconds if given)."""
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            EVENT_HEADER: message.kind.value,
            DELIVERY_HEADER: message.change_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        started = time.perf_counter()
        try:
            response = await self.client.post(self._url, content=body, headers=headers, timeout=self.timeout)
        except httpx.TimeoutException:
            return None, f"no answer within {self.timeout:g} s", None
        except httpx.TransportError as exc:
            # The error's text can quote the URL: show the safe form.
            text = str(exc).replace(self._url, self.shown_url)
            return None, f"{type(exc).__name__}: {text}"[:_ERROR_CHARS], None
        finally:
            self._seconds.observe(time.perf_counter() - started)
        return response.status_code, f"HTTP {response.status_code}", _retry_after(response)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
