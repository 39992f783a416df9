"""The model registry in Redis: every registered artifact, and which version is active."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis, RedisCluster

from app.storage.keys import KeySpace


@dataclass(frozen=True)
class StoredModel:
    version: str
    model_text: str
    metadata_json: bytes


class ModelStore:
    """The model registry in Redis: every registered artifact, and which version is active.

    Keeping artifacts in Redis (a LightGBM text model is well under a few MB) lets every API and consumer
    process, on any host, pick up an activation without a shared file system.
    """

    def __init__(self, redis: Redis | RedisCluster, keys: KeySpace) -> None:
        self.redis = redis
        self.keys = keys

    async def register(
        self,
        version: str,
        model_text: str,
        metadata_json: bytes,
        trained_at_ms: int,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Store an artifact: the model, its metadata and its other files by name (the evaluation report and plots,
        which the API serves to people)."""
        mapping: dict[str, str | bytes] = {"model": model_text, "metadata": metadata_json}
        mapping.update((_FILE + name, content) for name, content in (files or {}).items())
        # The artifact first, then the index entry: the index never names a version that is not stored (no
        # transaction, which a cluster client offers only in one slot).
        await self.redis.hset(self.keys.model(version), mapping=mapping)  # type: ignore[arg-type]
        await self.redis.zadd(self.keys.model_index, {version: trained_at_ms})

    async def file_names(self, version: str) -> list[str]:
        """The names of the artifact's other files (e.g. report.md, roc.png), sorted."""
        fields = [_text(field) for field in await self.redis.hkeys(self.keys.model(version))]
        return sorted(field.removeprefix(_FILE) for field in fields if field.startswith(_FILE))

    async def file(self, version: str, name: str) -> bytes | None:
        raw = await self.redis.hget(self.keys.model(version), _FILE + name)
        return None if raw is None else _bytes(raw)

    async def versions(self) -> list[str]:
        """Registered versions, newest training first."""
        return [_text(v) for v in cast(list[bytes], await self.redis.zrange(self.keys.model_index, 0, -1, desc=True))]

    async def metadata(self, version: str) -> bytes | None:
        raw = await self.redis.hget(self.keys.model(version), "metadata")
        return None if raw is None else _bytes(raw)

    async def get(self, version: str) -> StoredModel | None:
        model_text, metadata_json = await self.redis.hmget(self.keys.model(version), ["model", "metadata"])
        if model_text is None or metadata_json is None:
            return None
        return StoredModel(version, _text(model_text), _bytes(metadata_json))

    async def active(self) -> str | None:
        raw = await self.redis.get(self.keys.active_model)
        return None if raw is None else _text(raw)

    async def activate(self, version: str, by: str = "") -> None:
        """Make `version` active, recording who did and when on its entry."""
        at_ms = time.time_ns() // 1_000_000
        await self.redis.hset(self.keys.model(version), mapping={"activated_at_ms": at_ms, "activated_by": by})
        await self.redis.set(self.keys.active_model, version)

    async def activation(self, version: str) -> tuple[int, str] | None:
        """When and by whom `version` was last made active (None: never through `activate`)."""
        at_ms, by = await self.redis.hmget(self.keys.model(version), ["activated_at_ms", "activated_by"])
        return None if at_ms is None else (int(at_ms), _text(by or b""))

    async def activate_if_none(self, version: str) -> bool:
        """Make `version` active unless one already is (processes starting together agree on one)."""
        return bool(await self.redis.set(self.keys.active_model, version, nx=True))


# Hash fields of an artifact's other files: the prefix keeps a file named "model" apart from the model.
_FILE = "file:"


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
