"""Events that arrive over HTTP (`POST /events`): each is checked as the consumer checks a Kafka message
(`parse_message`: the same schema, size and time rules), and the valid ones are produced to the events topic
keyed by lead, as any producer's would be. The caller hears back once the broker has acknowledged them.
Erasure requests (`DELETE /leads/{id}`) go the same way, marked by a header, so they take their place among the
lead's events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.settings import Settings
from consumers.messages import AcceptedTime, Rejection, parse_message
from consumers.producer import RECORD_BATCH_BYTES, REQUEST_BYTES
from schemas.api import IngestResult
from schemas.events import ERASURE_HEADER, ErasureRequest

# How long a request waits for the broker (to connect, then to acknowledge) before it answers 503.
BROKER_WAIT_SECONDS = 10.0


class IngestUnavailable(ConnectionError):
    """The broker did not take the events: nothing of the request is known to be stored, the caller retries
    (the consumer drops a retried event it already applied: its event_id). A ConnectionError, which is what
    the API answers 503 for."""


class EventIngest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        self.max_bytes = settings.max_message_bytes
        self.accepted_time = AcceptedTime(
            max_age_ms=int(settings.event_max_age_days * 86_400_000),
            max_future_ms=int(settings.event_max_future_seconds * 1000),
        )
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        """The producer, started on first use (the API serves reads while the broker is away)."""
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    acks="all",
                    enable_idempotence=self.settings.kafka_enable_idempotence,
                    max_batch_size=RECORD_BATCH_BYTES,
                    max_request_size=REQUEST_BYTES,
                    request_timeout_ms=int(BROKER_WAIT_SECONDS * 1000),
                )
                try:
                    await asyncio.wait_for(producer.start(), BROKER_WAIT_SECONDS)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    where = self.settings.kafka_bootstrap_servers
                    raise IngestUnavailable(f"the broker at {where} is unreachable ({exc})") from None
                self._producer = producer
            return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def submit(self, items: Sequence[object]) -> list[IngestResult]:
        """Check each item, produce the valid ones and wait for the broker's acknowledgement of all of them.

        Raises IngestUnavailable when the broker does not acknowledge them all: the caller gets a 503 and sends
        the request again (none of it is reported accepted, so none of it is lost silently)."""
        now_ms = time.time_ns() // 1_000_000
        results: list[IngestResult] = []
        valid: list[tuple[bytes, bytes]] = []
        for index, item in enumerate(items):
            value = orjson.dumps(item)
            lead = item.get("lead_id") if isinstance(item, dict) else None
            key = lead.encode() if isinstance(lead, str) else None
            checked = parse_message(key, value, self.max_bytes, self.accepted_time, now_ms)
            if not isinstance(checked, Rejection):
                valid.append((key or b"", value))
                accepted = IngestResult(index=index, accepted=True, event_id=checked.event_id, lead_id=checked.lead_id)
                results.append(accepted)
            else:
                event_id = item.get("event_id") if isinstance(item, dict) else None
                results.append(
                    IngestResult(
                        index=index,
                        accepted=False,
                        event_id=event_id if isinstance(event_id, str) else None,
                        lead_id=lead if isinstance(lead, str) else None,
                        reason=checked.reason,
                        message=checked.detail,
                    )
                )
        if valid:
            producer = await self._started()
            try:
                deliveries = [await producer.send(self.topic, value=value, key=key) for key, value in valid]
                await asyncio.wait_for(asyncio.gather(*deliveries), BROKER_WAIT_SECONDS)
            except (KafkaError, TimeoutError) as exc:
                problem = f"the broker did not acknowledge the events ({exc!r}); send them again"
                raise IngestUnavailable(problem) from None
        return results

    async def request_erasure(self, request: ErasureRequest) -> None:
        """Produce an erasure request to the events topic, keyed by its lead, and wait for the broker's
        acknowledgement (IngestUnavailable if it does not come)."""
        producer = await self._started()
        try:
            delivery = await producer.send(
                self.topic,
                value=request.model_dump_json().encode(),
                key=request.lead_id.encode(),
                headers=[(ERASURE_HEADER, request.erasure_id.encode())],
            )
            await asyncio.wait_for(delivery, BROKER_WAIT_SECONDS)
        except (KafkaError, TimeoutError) as exc:
            problem = f"the broker did not acknowledge the erasure request ({exc!r})"
            raise IngestUnavailable(problem) from None
