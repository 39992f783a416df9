"""Shared fixtures: a real redis-server, Redis Cluster and Kafka-protocol broker, started once per session.

Servers start only when a test asks for them (unit tests start nothing), on free loopback
ports via devtools.servers, and stop at session end. To use servers you already run, set
LEADSCORE_TEST_REDIS_URL (its database is FLUSHED before each test that uses it),
LEADSCORE_TEST_REDIS_CLUSTER_URL (one node of a three-master cluster; nothing is flushed there)
and/or LEADSCORE_TEST_KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.cluster

from devtools.servers import LocalRedis, start_broker, start_redis, start_redis_cluster
from tests.support import RedisBackend

REDIS_URL_ENV = "LEADSCORE_TEST_REDIS_URL"
REDIS_CLUSTER_URL_ENV = "LEADSCORE_TEST_REDIS_CLUSTER_URL"
KAFKA_BOOTSTRAP_ENV = "LEADSCORE_TEST_KAFKA_BOOTSTRAP_SERVERS"

# Tests using any of these talk to real servers; they get the `integration` marker so
# `pytest -m "not integration"` runs the pure unit tests alone.
SERVER_FIXTURES = frozenset(
    {
        "redis_url",
        "redis_cluster_url",
        "redis_backend",
        "kafka_bootstrap",
        "redis_client",
        "async_redis_client",
        "local_redis",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _compiled_models_in_a_temp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiled models (the consumer's default cache is under XDG_CACHE_HOME) stay out of the user's home;
    the service processes the tests start inherit the variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's Redis ("redis://127.0.0.1:PORT/0")."""
    external = os.environ.get(REDIS_URL_ENV)
    if external:
        yield external
        return
    with start_redis(workdir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one node of the session's three-master Redis Cluster ("redis://127.0.0.1:PORT");
    a cluster client finds the other nodes from it."""
    external = os.environ.get(REDIS_CLUSTER_URL_ENV)
    if external:
        yield external
        return
    with start_redis_cluster(workdir=tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka-protocol broker ("127.0.0.1:PORT")."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with start_broker(workdir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(params=["one Redis", "Redis Cluster"])
def redis_backend(request: pytest.FixtureRequest) -> Iterator[RedisBackend]:
    """Each test that takes it runs twice: on one Redis and on a Redis Cluster."""
    clustered = request.param == "Redis Cluster"
    url: str = request.getfixturevalue("redis_cluster_url" if clustered else "redis_url")
    client: redis.Redis | redis.cluster.RedisCluster
    client = redis.cluster.RedisCluster.from_url(url) if clustered else redis.Redis.from_url(url)
    try:
        client.flushall() if clustered else client.flushdb()
        yield RedisBackend(request.param, url, client, clustered)
    finally:
        if isinstance(client, redis.cluster.RedisCluster):
            client.disconnect_connection_pools()  # the nodes' pools are not the client's own: close() leaves them
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on the session Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client on the session Redis, emptied before the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.flushdb()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis of this test's own, for outage tests that stop, kill or restart it (its data survives)."""
    with start_redis(workdir=tmp_path / "redis", persist=True) as server:
        yield server


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names unique to this test run: unique_name("events") -> "events-test-foo-1a2b3c4d".

    Topics and consumer groups on the shared session broker never collide between tests.
    """
    # Kafka names allow [A-Za-z0-9._-] up to 249 characters.
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80]

    def make(prefix: str) -> str:
        return f"{prefix}-{test_name}-{uuid.uuid4().hex[:8]}"

    return make
