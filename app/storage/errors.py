"""What a storage operation raises when Redis cannot answer: callers catch these, not the client library's types,
so only this package knows which Redis client is behind it."""

from __future__ import annotations

from redis.exceptions import RedisError

# redis-py raises its own errors, and a plain OSError where a socket fails underneath it.
StoreError = RedisError
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (RedisError, OSError)
