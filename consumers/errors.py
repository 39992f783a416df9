"""What a broker operation raises when Kafka cannot answer (for callers outside consumers/, which do not import
the Kafka client)."""

from __future__ import annotations

from aiokafka.errors import KafkaError

BrokerError = KafkaError
