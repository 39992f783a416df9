"""Producing to Kafka: events (the simulator, `leadscore dev`) and segment changes (the worker, `rescore`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas.changes import SegmentChange


class EventProducer:
    """Keyed by lead_id, so a lead's events stay in order on one partition."""

    def __init__(self, bootstrap_servers: str, topic: str, *, enable_idempotence: bool = False) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=5,
        )

    async def __aenter__(self) -> EventProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event (delivery is awaited by `flush`)."""
        await self._producer.send(self.topic, value=orjson.dumps(event), key=str(event["lead_id"]).encode())

    async def flush(self) -> None:
        await self._producer.flush()

    async def send_paced(self, events: Iterable[Mapping[str, Any]], rate: float, limit: int | None = None) -> int:
        """Send at about `rate` events/s (0 = as fast as possible); stops after `limit` events if given."""
        sent = 0
        started = time.monotonic()
        for event in events:
            if limit is not None and sent >= limit:
                break
            await self.send(event)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await self.flush()
        return sent


class SegmentChangePublisher:
    """Sends segment changes keyed by lead and waits for the broker's acknowledgements."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def __call__(self, changes: list[SegmentChange]) -> None:
        futures = [
            await self.producer.send(self.topic, value=change.model_dump_json().encode(), key=change.lead_id.encode())
            for change in changes
        ]
        await asyncio.gather(*futures)
