"""Creating the service's topics when they do not exist yet."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(bootstrap_servers: str, topics: list[str], partitions: int, replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics([NewTopic(t, partitions, replication) for t in missing])
        except TopicAlreadyExistsError:
            return  # another worker created them first
        for topic, code, message in (e[:3] for e in response.topic_errors):
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"could not create topic {topic}: error {code} {message or ''}".strip())
            if code == 0:
                log.info("created topic %s with %d partitions", topic, partitions)
    finally:
        await admin.close()
