"""Service settings: environment variables prefixed LEADSCORE_ (validated once at start-up)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, RedisDsn
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.segments import SegmentSets
from models.spec import FeatureSpec, read_config_file

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", env_nested_delimiter="__", extra="ignore")

    kafka_bootstrap_servers: str = Field(default="localhost:9092", description="comma-separated host:port list")
    redis_url: RedisDsn = Field(default=RedisDsn("redis://localhost:6379/0"))
    events_topic: str = "lead-events"
    dlq_topic: str = "lead-events-dlq"
    segment_changes_topic: str = "lead-segment-changes"
    consumer_group: str = "leadscore"
    topic_partitions: int = Field(default=6, ge=1, description="partitions for topics the service creates")
    topic_replication_factor: int = Field(default=1, ge=1)
    kafka_enable_idempotence: bool = Field(default=False, description="off: some Kafka-protocol brokers lack it")
    model_path: Path = Field(default=DEFAULT_MODEL_PATH, description="directory of the model artifact to serve")
    compiled_model: bool = Field(
        default=True, description="consumer: predict with the model's trees compiled to native code (lleaves)"
    )
    compiled_model_cache: Path = Field(
        default_factory=lambda: _user_cache_dir() / "leadscore" / "compiled-models",
        description="where compiled models are kept across restarts (compiled at each start if not writable)",
    )
    config_path: Path | None = Field(default=None, description="feature + segment YAML; the shipped default if unset")
    api_keys: list[str] = Field(default_factory=list, description="if set, requests need X-API-Key (JSON list)")
    batch_max_records: int = Field(default=2000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(default=50, ge=0, le=10_000)
    fetch_max_wait_ms: int = Field(
        default=10, ge=0, le=10_000, description="how long the broker may hold a fetch for more data (freshness)"
    )
    max_message_bytes: int = Field(default=65_536, ge=256)
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get 413")
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    sweeper_enabled: bool = Field(default=True, description="rescore quiet leads whose score moves with time")
    staleness_seconds: float = Field(default=60.0, gt=0, description="an active lead is rescored at least this often")
    sweep_interval_seconds: float = Field(default=1.0, gt=0, le=60, description="how often the sweeper looks")
    sweep_batch: int = Field(default=2000, ge=1, le=100_000, description="due leads rescored per sweeper round trip")
    active_epsilon: float = Field(default=0.05, gt=0, description="decayed signal below which a lead is settled")
    model_poll_seconds: float = Field(default=2.0, gt=0, le=300, description="how often the active model is checked")
    history_length: int = Field(default=10, ge=0, le=1000, description="score-history entries kept per lead")
    history_min_delta: float = Field(default=0.01, ge=0, le=1, description="score change that makes a history entry")
    api_reasons: int = Field(default=3, ge=1, le=20, description="top reasons (each way) in GET /leads/{id}")
    change_reasons: int = Field(
        default=0, ge=0, le=10, description="top reasons (each way) in segment changes; 0: read them from the API"
    )
    dedupe_window: int = Field(default=8, ge=0, le=64, description="recent event ids per lead checked for duplicates")
    event_max_age_days: float = Field(default=400.0, gt=0, description="older event timestamps go to the DLQ")
    event_max_future_seconds: float = Field(default=3600.0, ge=0, description="tolerated clock skew into the future")
    log_level: str = "INFO"

    @cached_property
    def service_config(self) -> ServiceConfig:
        return ServiceConfig.load(self.config_path)


class ServiceConfig:
    """The YAML config, parsed: the feature spec and the segment rules."""

    def __init__(self, features: FeatureSpec, segments: SegmentSets) -> None:
        self.features = features
        self.segments = segments

    @classmethod
    def load(cls, path: Path | None) -> ServiceConfig:
        raw = read_config_file(path)
        if "features" not in raw or "segments" not in raw:
            raise ValueError(f"config {path or 'default'} needs both a 'features' and a 'segments' section")
        return cls(FeatureSpec.model_validate(raw["features"]), SegmentSets.from_config(raw["segments"]))
