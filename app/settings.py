"""Service settings: environment variables prefixed LEADSCORE_ (validated once at start-up)."""

from __future__ import annotations

import logging
import os
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from app.domain.segments import SegmentSets, check_segments, rule_event_types
from models.spec import (
    ConfigError,
    ConfigProblem,
    FeatureSpec,
    Severity,
    check_event_types,
    check_features,
    did_you_mean,
    read_config_document,
)
from models.training_spec import TrainingSpec, check_training

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def parse_key(entry: str) -> tuple[str, frozenset[Scope]]:
    """`key` (every scope) or `key:scope+scope`. A bad scope name raises ValueError naming it, not the key."""
    key, separator, scopes = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if not separator:
        return entry, frozenset(Scope)
    names = [name.strip() for name in scopes.split("+") if name.strip()]
    unknown = [name for name in names if name not in Scope.__members__.values()]
    if unknown or not names or not key:
        raise ValueError(
            f"scopes {unknown or scopes!r} of a key: write key:scope+scope with scopes from {[s.value for s in Scope]}"
        )
    return key, frozenset(Scope(name) for name in names)


_SUBSCRIPTION_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class WebhookSubscription(BaseModel):
    """One webhook receiver of segment changes (an entry of LEADSCORE_WEBHOOKS). Erasures reach every
    subscription whatever its filters: a receiver that holds the lead must drop it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: HttpUrl = Field(description="http:// or https:// URL the changes are POSTed to")
    # SecretStr: a secret printed by accident (a repr, a log line) shows as '**********'.
    secret: SecretStr
    segment_sets: frozenset[str] | None = Field(default=None, description="only changes in these sets; all if unset")
    segments: frozenset[str] | None = Field(
        default=None, description="only changes from or to one of these segments; all if unset"
    )

    @field_validator("name")
    @classmethod
    def _group_name(cls, name: str) -> str:
        # It becomes part of a consumer group's name and a metric label.
        if not _SUBSCRIPTION_NAME.fullmatch(name):
            raise ValueError(f"name {name!r}: use 1-100 letters, digits, '.', '_' or '-'")
        return name

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value()) < 16:
            raise ValueError("the secret is shorter than 16 characters: use a long random one (openssl rand -hex 32)")
        return secret


class Settings(BaseSettings):
    """Every setting is a flat LEADSCORE_<NAME> variable (the names people already set); they are grouped here and
    in the README by what they tune."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", env_nested_delimiter="__", extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str = Field(default="localhost:9092", description="comma-separated host:port list")
    events_topic: str = "lead-events"
    dlq_topic: str = "lead-events-dlq"
    segment_changes_topic: str = "lead-segment-changes"
    consumer_group: str = "leadscore"
    topic_partitions: int = Field(default=6, ge=1, description="partitions for topics the service creates")
    topic_replication_factor: int = Field(default=1, ge=1)
    kafka_enable_idempotence: bool = Field(default=False, description="off: some Kafka-protocol brokers lack it")
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        le=300_000,
        description="a consumer that sends no heartbeat this long (killed, frozen) loses its partitions to the others",
    )
    fetch_max_wait_ms: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="how long the broker may hold a fetch while it has no new data (Kafka answers as soon as data"
        " arrives; the local dev broker needs this above the time it takes to list its log)",
    )
    max_message_bytes: int = Field(default=65_536, ge=256)

    # Redis
    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://localhost:6379/0"), description="a Redis URL: redis://[:password@]host:port/db"
    )
    redis_cluster: bool = Field(
        default=False,
        description="the URL names any node of a Redis Cluster (keys grouped by hash tag: app/storage/keys.py)",
    )
    redis_timeout_seconds: float = Field(default=2.0, gt=0)

    # The feature and segment config, and the model
    config_path: Path | None = Field(default=None, description="feature + segment YAML; the shipped default if unset")
    model_path: Path = Field(default=DEFAULT_MODEL_PATH, description="directory of the model artifact to serve")
    model_poll_seconds: float = Field(default=2.0, gt=0, le=300, description="how often the active model is checked")
    compiled_model: bool = Field(
        default=True, description="consumer: predict with the model's trees compiled to native code (lleaves)"
    )
    compiled_model_cache: Path = Field(
        default_factory=lambda: _user_cache_dir() / "leadscore" / "compiled-models",
        description="where compiled models are kept across restarts (compiled at each start if not writable)",
    )

    # Consuming events
    batch_max_records: int = Field(default=2000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(default=50, ge=0, le=10_000)
    dedupe_window: int = Field(default=8, ge=0, le=64, description="recent event ids per lead checked for duplicates")
    event_max_age_days: float = Field(default=400.0, gt=0, description="older event timestamps go to the DLQ")
    event_max_future_seconds: float = Field(default=3600.0, ge=0, description="tolerated clock skew into the future")

    # Time: the sweeper and the score history
    sweeper_enabled: bool = Field(default=True, description="rescore quiet leads whose score moves with time")
    staleness_seconds: float = Field(default=60.0, gt=0, description="an active lead is rescored at least this often")
    sweep_interval_seconds: float = Field(default=1.0, gt=0, le=60, description="how often the sweeper looks")
    sweep_batch: int = Field(default=2000, ge=1, le=100_000, description="due leads rescored per sweeper round trip")
    active_epsilon: float = Field(default=0.05, gt=0, description="decayed signal below which a lead is settled")
    history_length: int = Field(default=10, ge=0, le=1000, description="score-history entries kept per lead")
    history_min_delta: float = Field(default=0.01, ge=0, le=1, description="score change that makes a history entry")

    # The API and segment-change events
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="if set, requests need X-API-Key: a comma-separated list (k1,k2) or a JSON list",
    )
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get 413")
    api_reasons: int = Field(default=3, ge=1, le=20, description="top reasons (each way) in GET /leads/{id}")
    change_reasons: int = Field(
        default=0, ge=0, le=10, description="top reasons (each way) in segment changes; 0: read them from the API"
    )

    # Health and logs
    stall_seconds: float = Field(
        default=60.0, gt=0, description="a consumer with lag that commits nothing this long is reported stalled"
    )
    wedged_seconds: float = Field(
        default=30.0, gt=0, description="a consumer whose event loop has not run this long fails its health check"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object a line (time, level, component, message, lead and offset)"
    )

    # Webhooks (`leadscore webhooks`)
    webhooks: list[WebhookSubscription] = Field(
        default_factory=list,
        description='a JSON list of {"name", "url", "secret", "segment_sets"?, "segments"?} (README, Webhooks)',
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=100, description="attempts per delivery, the first included")
    webhook_backoff_seconds: float = Field(default=0.5, gt=0, le=3600, description="first retry delay, then doubling")
    webhook_backoff_max_seconds: float = Field(default=60.0, gt=0, le=3600, description="longest delay between tries")
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=300, description="one attempt's time limit")
    webhook_dlq_topic: str = "lead-segment-changes-webhook-dlq"
    webhook_group_prefix: str = Field(
        default="leadscore-webhooks", description="a subscription's consumer group is <prefix>-<name>"
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=1000, description="leads delivered at once per subscription")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        """A comma-separated list (what people type in a shell) or a JSON list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"starts like a JSON list but is not valid JSON ({exc})") from None
        return [key.strip() for key in text.split(",") if key.strip()]

    @field_validator("api_keys")
    @classmethod
    def _scoped(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_key(entry)  # a bad scope is named, the key never
        return entries

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, subscriptions: list[WebhookSubscription]) -> list[WebhookSubscription]:
        names = [subscription.name for subscription in subscriptions]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"subscription names {repeated} are used more than once: give each its own name")
        return subscriptions

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Settings:
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise ValueError(
                f"LEADSCORE_WEBHOOK_BACKOFF_MAX_SECONDS ({self.webhook_backoff_max_seconds:g}) is below"
                f" LEADSCORE_WEBHOOK_BACKOFF_SECONDS ({self.webhook_backoff_seconds:g}): raise it or lower the other"
            )
        return self

    @cached_property
    def service_config(self) -> ServiceConfig:
        return ServiceConfig.load(self.config_path)


class SettingsInvalid(ValueError):
    """One or more LEADSCORE_* variables are wrong; the message names each with what it expects."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with errors that name the variable and the expected format."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsInvalid("\n".join(_describe(error) for error in exc.errors())) from None
    except SettingsError as exc:
        raise SettingsInvalid(f"{exc}: check the LEADSCORE_* variable of that field") from None


# Settings holding secrets: an error names the variable (and where in it), never echoes what was given.
_SECRET_FIELDS = frozenset({"api_keys", "webhooks"})


def _describe(error: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across settings: its message names them
        return str(message)
    field = str(error["loc"][0])
    # Where inside a list of objects: LEADSCORE_WEBHOOKS[1].url
    inside = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:])
    variable = f"LEADSCORE_{field.upper()}{inside}"
    info = Settings.model_fields.get(field)
    expected = info.description if info is not None and info.description else None
    given = error.get("input")
    shown = f"={given!r}" if isinstance(given, str | int | float) and field not in _SECRET_FIELDS else ""
    return f"{variable}{shown}: {message}" + (f" (expected: {expected})" if expected else "")


class ServiceConfig:
    """The YAML config, parsed and checked: the feature spec, the segment rules and the training options."""

    SECTIONS = ("features", "segments", "training")

    def __init__(self, features: FeatureSpec, segments: SegmentSets, training: TrainingSpec | None = None) -> None:
        self.features = features
        self.segments = segments
        self.training = training or TrainingSpec()  # the section is optional: training's defaults

    @classmethod
    def load(cls, path: Path | None) -> ServiceConfig:
        """The config at `path` (the shipped one when None): ConfigError listing its errors; warnings are logged."""
        config, problems = cls._parse(path)
        if config is None:
            raise ConfigError(problems)
        for problem in problems:
            logging.getLogger(__name__).warning("%s", problem)
        return config

    @classmethod
    def check(cls, path: Path | None) -> list[ConfigProblem]:
        """Every problem of the config at `path` in line order: the errors `load` refuses, the warnings it logs."""
        return cls._parse(path)[1]

    @classmethod
    def _parse(cls, path: Path | None) -> tuple[ServiceConfig | None, list[ConfigProblem]]:
        try:
            document = read_config_document(path)
        except ConfigError as exc:  # unreadable, or not YAML: nothing more to check
            return None, list(exc.problems)
        problems = document.repeated_keys()
        for key in document.data:
            if key not in cls.SECTIONS:
                problems.append(
                    document.warning(
                        (str(key),),
                        f"unknown top-level key {key!r} is ignored: a config has only 'features', 'segments' and"
                        " 'training'" + did_you_mean(str(key), cls.SECTIONS),
                    )
                )
        spec, found = check_features(document)
        problems += found
        segments, found = check_segments(document, spec)
        problems += found
        if spec is not None and "segments" in document.data:  # without rules, every type would look unmentioned
            problems += check_event_types(document, spec, rule_event_types(document.data["segments"]))
        training, found = check_training(document)
        problems += found
        problems.sort(key=lambda problem: problem.line or 0)
        if spec is None or segments is None or training is None or any(p.severity is Severity.ERROR for p in problems):
            return None, problems
        return cls(spec, segments, training), problems
