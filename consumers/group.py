"""A consumer-group member as every leadscore consumer configures it (the scoring worker, each webhook
subscription): manual commits, a short heartbeat, fetches sized for the largest accepted message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.settings import Settings


def group_member(
    settings: Settings, group: str, *, start_at: Literal["earliest", "latest"], **options: Any
) -> AIOKafkaConsumer:
    """A member of `group`, not started; `start_at`: where a group without commits begins; `options`: more
    AIOKafkaConsumer options."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,  # offsets are committed after the work, by the caller
        auto_offset_reset=start_at,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        # A member learns of a rebalance at its next heartbeat: 1 s (not aiokafka's 3 s) shortens every
        # rebalance's pause; Kafka asks for at most a third of the session timeout.
        heartbeat_interval_ms=min(1_000, settings.kafka_session_timeout_ms // 3),
        max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes * 2),
        **options,
    )


def uncommitted(consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int]) -> dict[int, int]:
    """Messages not yet committed (high watermark minus the next offset to commit), per owned partition whose high
    watermark a fetch has reported."""
    lag = {}
    for tp, position in positions.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            lag[tp.partition] = max(highwater - position, 0)
    return lag
