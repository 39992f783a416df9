"""`leadscore webhooks` against the session's real broker and a real local HTTP receiver that can be told to fail,
hang past the timeout, refuse, and recover: signatures (checked with the README's own snippet), retries with
backoff, order per lead, dead letters, restarts, filters, and one subscription's receiver down beside another's."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from app.settings import Settings
from consumers import dlq
from consumers.signing import sign
from consumers.webhooks import WebhookService
from devtools.servers import free_port, leadscore_process
from schemas.changes import Trigger, segment_change_json
from tests.support import REPO_ROOT, async_wait_until, metric_sum, produce_raw, wait_until

SECRET = "whsec-test-0123456789abcdef"
ATTEMPT_TIMEOUT = 0.5  # seconds; a hanging receiver answers after HANG_SECONDS
HANG_SECONDS = 1.5
HANG = -1  # an answer: hold the request past the attempt timeout, then 200 (too late)
DEFAULT_MAX_ATTEMPTS = 4


# --- the receiver -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]  # lower-case names
    body: bytes
    answer: int  # the status answered, or HANG

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def change_id(self) -> str:
        return str(self.json["change_id"])


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that answers each POST as it is told and records every request in
    arrival order. `plans[change_id]` answers that change's attempts in turn (then 200); `failing_leads` are
    answered with their status every time; everything else gets 200."""

    port: int = 0
    plans: dict[str, list[int]] = field(default_factory=dict)
    failing_leads: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/leadscore?token=not-for-logs"

    def answer_for(self, document: dict[str, Any]) -> int:
        with self.lock:
            if document["lead_id"] in self.failing_leads:
                return self.failing_leads[document["lead_id"]]
            plan = self.plans.get(document["change_id"])
            return plan.pop(0) if plan else 200

    def record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def delivered(self) -> list[Request]:
        """The requests answered with a 2xx: what the receiver's success handler took, in order."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.answer < 300]

    def attempts(self, change_id: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.change_id == change_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


def _serve(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = receiver.answer_for(orjson.loads(body))
            receiver.record(Request({k.lower(): v for k, v in self.headers.items()}, body, answer))
            if answer == HANG:
                receiver.closing.wait(HANG_SECONDS)
                answer = 200
            try:
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client gave up waiting (the hang's point)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test's assertions say what went wrong."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the service under test -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    changes: str
    dead_letters: str
    group_prefix: str


@pytest.fixture
def topics(unique_name: Callable[[str], str]) -> Topics:
    return Topics(unique_name("changes"), unique_name("webhook-dlq"), unique_name("webhooks"))


def subscription(name: str, receiver: Receiver, **filters: list[str]) -> dict[str, Any]:
    return {"name": name, "url": receiver.url, "secret": SECRET, **filters}


def webhook_settings(
    kafka_bootstrap: str, topics: Topics, subscriptions: list[dict[str, Any]], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "segment_changes_topic": topics.changes,
        "webhook_dlq_topic": topics.dead_letters,
        "webhook_group_prefix": topics.group_prefix,
        "webhooks": subscriptions,
        "topic_partitions": 2,
        "fetch_max_wait_ms": 10,
        "kafka_session_timeout_ms": 3000,  # a stopped member that did not leave cleanly is replaced sooner
        "webhook_max_attempts": DEFAULT_MAX_ATTEMPTS,
        "webhook_backoff_seconds": 0.05,
        "webhook_backoff_max_seconds": 0.2,
        "webhook_timeout_seconds": ATTEMPT_TIMEOUT,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[WebhookService]:
    """The service as a task, ready (every subscription has its partitions and start positions) when yielded;
    stopped as SIGTERM stops it, and required to return, at the end."""
    service = WebhookService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))

    async def ready() -> bool:
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError("the webhook service returned before it was ready")
        return service.ready

    try:
        await async_wait_until(ready, timeout=30, message="every subscription assigned")
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def change(
    lead_id: str, n: int, *, segment_set: str = "tier", from_segment: str | None = None, to: str = "hot"
) -> bytes:
    return segment_change_json(
        change_id=f"{lead_id}-{segment_set}-{n}",
        lead_id=lead_id,
        segment_set=segment_set,
        from_segment=from_segment,
        to_segment=to,
        score=0.42,
        at=datetime.now(UTC),
        model_version="m-test",
        trigger=Trigger.EVENT,
        reasons=[],
    )


def erasure(lead_id: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        {
            "kind": "lead_erased",
            "change_id": f"{lead_id}-erased",
            "lead_id": lead_id,
            "segments": {"tier": "hot"},
            "requested_at": now,
            "at": now,
        }
    )


async def produce(kafka_bootstrap: str, topic: str, messages: list[bytes]) -> list[str]:
    """Each message keyed by its lead, acknowledged on return; their change ids in order."""
    records = [(orjson.loads(m)["lead_id"], m) for m in messages]
    await asyncio.to_thread(produce_raw, kafka_bootstrap, topic, records)
    return [orjson.loads(m)["change_id"] for m in messages]


async def delivered_at_least(receiver: Receiver, count: int, within: float = 20) -> list[Request]:
    async def enough() -> list[Request] | None:
        delivered = receiver.delivered()
        return delivered if len(delivered) >= count else None

    return await async_wait_until(enough, timeout=within, message=f"{count} deliveries")


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


async def read_dead_letters(kafka_bootstrap: str, topic: str, expected: int, within: float = 20) -> list[DeadLetter]:
    """The webhook dead-letter topic from the beginning, with headers, until `expected` letters are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + within
        while len(letters) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                letters += [
                    DeadLetter(r.key, r.value, {name: value.decode() for name, value in r.headers}) for r in records
                ]
    finally:
        await consumer.stop()
    assert len(letters) >= expected, f"{len(letters)} of {expected} dead letters on {topic} within {within} s"
    return letters


def deliveries(name: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("leadscore_webhook_deliveries_total", {"subscription": name, "outcome": outcome}) or 0
    )


# --- (1) signatures -------------------------------------------------------------------------------------------------


def readme_verification_snippet() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Webhooks") :]
    snippets = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    (snippet,) = [s for s in snippets if "def verify_leadscore_signature" in s]
    return snippet


async def test_a_delivery_is_signed_and_the_readmes_snippet_verifies_it(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    namespace: dict[str, Any] = {}
    exec(readme_verification_snippet(), namespace)  # the README's code, as a receiver would paste it
    verify = namespace["verify_leadscore_signature"]

    async with running(webhook_settings(kafka_bootstrap, topics, [subscription("signed", receiver)])):
        message = change("L-sig", 1)
        await produce(kafka_bootstrap, topics.changes, [message])
        (delivery,) = await delivered_at_least(receiver, 1)

    headers = delivery.headers
    assert delivery.body == message  # the bytes as on the topic
    assert headers["content-type"] == "application/json"
    assert headers["x-leadscore-event"] == "segment_change"
    assert headers["x-leadscore-delivery"] == "L-sig-tier-1"
    assert abs(int(headers["x-leadscore-timestamp"]) - time.time()) < 60
    assert headers["x-leadscore-signature"] == sign(SECRET, int(headers["x-leadscore-timestamp"]), message)

    assert verify(SECRET, headers, delivery.body)
    assert not verify("whsec-some-other-secret-000", headers, delivery.body)
    assert not verify(SECRET, headers, delivery.body.replace(b"L-sig", b"L-bad"))
    stale = headers | {"x-leadscore-timestamp": str(int(headers["x-leadscore-timestamp"]) - 3600)}
    assert not verify(SECRET, stale, delivery.body)


# --- (2) retries with backoff ---------------------------------------------------------------------------------------


async def test_failures_and_a_timeout_are_retried_with_backoff_until_delivered_once(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("retry")
    message = change("L-retry", 1)
    receiver.plans["L-retry-tier-1"] = [500, 503, HANG]  # then 200
    settings = webhook_settings(kafka_bootstrap, topics, [subscription(name, receiver)], webhook_max_attempts=5)
    async with running(settings):
        await produce(kafka_bootstrap, topics.changes, [message])
        (delivery,) = await delivered_at_least(receiver, 1)
        assert delivery.body == message

    attempts = receiver.attempts("L-retry-tier-1")
    assert [a.answer for a in attempts] == [500, 503, HANG, 200]
    assert len(receiver.delivered()) == 1  # the success handler saw it once
    assert {a.headers["x-leadscore-delivery"] for a in attempts} == {"L-retry-tier-1"}  # one id for every attempt
    assert deliveries(name, "retried") == 3 and deliveries(name, "delivered") == 1
    assert deliveries(name, "dead_lettered") == 0
    histogram = {"subscription": name}
    assert REGISTRY.get_sample_value("leadscore_webhook_delivery_seconds_count", histogram) == 4


# --- (3) order per lead ---------------------------------------------------------------------------------------------


async def test_a_leads_changes_arrive_in_topic_order_while_the_receiver_fails_now_and_then(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    leads = [f"L-order-{n}" for n in range(4)]
    messages = [change(lead, n) for n in range(6) for lead in leads]  # the leads interleaved
    for k, message in enumerate(messages):
        if k % 3 == 0:  # every third change fails once or twice first
            receiver.plans[orjson.loads(message)["change_id"]] = [503] * (1 + k % 2)
    async with running(webhook_settings(kafka_bootstrap, topics, [subscription("ordered", receiver)])):
        await produce(kafka_bootstrap, topics.changes, messages)
        await delivered_at_least(receiver, len(messages))

    delivered = receiver.delivered()
    assert len(delivered) == len(messages)  # none twice
    for lead in leads:
        assert [r.change_id for r in delivered if r.json["lead_id"] == lead] == [f"{lead}-tier-{n}" for n in range(6)]
        # every attempt of a lead, failed ones too, came in order: a change is never tried before its predecessor
        tried = [r.change_id for r in receiver.requests if r.json["lead_id"] == lead]
        assert tried == sorted(tried, key=lambda change_id: int(change_id.rsplit("-", 1)[1]))


async def test_one_failing_lead_does_not_hold_back_the_others_for_ever(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    receiver.failing_leads["L-stuck"] = 503
    first = [change("L-stuck", 1), change("L-free", 1)]
    later = [change("L-free", 2), change("L-stuck", 2)]
    async with running(webhook_settings(kafka_bootstrap, topics, [subscription("stuck", receiver)])):
        await produce(kafka_bootstrap, topics.changes, first)
        # the other lead of the same batch goes while the stuck one retries
        await delivered_at_least(receiver, 1)
        await produce(kafka_bootstrap, topics.changes, later)
        # and a later change of it once the stuck one is dead-lettered (bounded by the attempts)
        delivered = await delivered_at_least(receiver, 2)
        await read_dead_letters(kafka_bootstrap, topics.dead_letters, expected=2)
    assert [r.change_id for r in delivered] == ["L-free-tier-1", "L-free-tier-2"]
    assert len(receiver.attempts("L-stuck-tier-1")) == DEFAULT_MAX_ATTEMPTS


# --- (4) dead letters -----------------------------------------------------------------------------------------------


async def test_a_change_that_keeps_failing_is_dead_lettered_and_the_leads_next_one_goes(
    kafka_bootstrap: str,
    topics: Topics,
    receiver: Receiver,
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for logger in ("consumers", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=logger)
    name = unique_name("dead")
    receiver.plans["L-dead-tier-1"] = [500] * DEFAULT_MAX_ATTEMPTS
    receiver.plans["L-dead-tier-2"] = [400]  # refused: dead-lettered at the first answer
    messages = [change("L-dead", 1), change("L-dead", 2), change("L-dead", 3)]
    settings = webhook_settings(kafka_bootstrap, topics, [subscription(name, receiver)])
    async with running(settings):
        await produce(kafka_bootstrap, topics.changes, messages)
        (delivered,) = await delivered_at_least(receiver, 1)
        failed, refused = await read_dead_letters(kafka_bootstrap, topics.dead_letters, expected=2)
    # what `leadscore dlq show --topic <the webhooks' DLQ>` lists
    shown = await dlq.read_dead_letters(settings, topic=topics.dead_letters, within_seconds=10)
    assert [(letter.reason, letter.error) for letter in shown] == [("failed", "HTTP 500"), ("refused", "HTTP 400")]
    assert shown[0].source == f"{topics.changes}/{failed.headers['leadscore-source-partition']}/0"

    assert delivered.change_id == "L-dead-tier-3"
    assert len(receiver.attempts("L-dead-tier-1")) == DEFAULT_MAX_ATTEMPTS
    assert len(receiver.attempts("L-dead-tier-2")) == 1
    assert (failed.key, failed.value) == (b"L-dead", messages[0])  # the original bytes, keyed by lead
    assert failed.headers["leadscore-subscription"] == name
    assert failed.headers["leadscore-reason"] == "failed"
    assert failed.headers["leadscore-error"] == "HTTP 500"
    assert failed.headers["leadscore-attempts"] == str(DEFAULT_MAX_ATTEMPTS)
    assert failed.headers["leadscore-source-topic"] == topics.changes
    assert failed.headers["leadscore-source-offset"] == "0" and "leadscore-source-partition" in failed.headers
    assert SECRET not in str(failed.headers)
    assert (refused.value, refused.headers["leadscore-reason"]) == (messages[1], "refused")
    assert (refused.headers["leadscore-error"], refused.headers["leadscore-attempts"]) == ("HTTP 400", "1")
    assert deliveries(name, "dead_lettered") == 2
    assert deliveries(name, "retried") == DEFAULT_MAX_ATTEMPTS - 1
    # the log tells what happened, without the secret or the URL's query string (httpx's own lines included)
    assert "dead-lettered" in caplog.text and "HTTP 500" in caplog.text and "/hooks/leadscore" in caplog.text
    assert SECRET not in caplog.text and "not-for-logs" not in caplog.text


async def test_a_message_that_is_not_a_change_is_dead_lettered_unread_and_blocks_nothing(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    async with running(webhook_settings(kafka_bootstrap, topics, [subscription("unreadable", receiver)])):
        records = [("L-junk", b"{not json"), ("L-junk", orjson.dumps({"kind": "segment_change"}))]
        await asyncio.to_thread(produce_raw, kafka_bootstrap, topics.changes, records)
        await produce(kafka_bootstrap, topics.changes, [change("L-junk", 1)])
        (delivered,) = await delivered_at_least(receiver, 1)
        letters = await read_dead_letters(kafka_bootstrap, topics.dead_letters, expected=2)
    assert delivered.change_id == "L-junk-tier-1"
    assert [letter.headers["leadscore-reason"] for letter in letters] == ["unreadable", "unreadable"]
    assert [letter.value for letter in letters] == [value for _, value in records]
    assert all(letter.headers["leadscore-attempts"] == "0" for letter in letters)


# --- (5) restart ----------------------------------------------------------------------------------------------------


async def test_a_restart_delivers_exactly_what_came_after_the_last_delivery(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    settings = webhook_settings(kafka_bootstrap, topics, [subscription("restarted", receiver)])
    before = [change(f"L-r{n % 3}", n) for n in range(6)]
    while_down = [change(f"L-r{n % 3}", n) for n in range(6, 12)]
    async with running(settings):
        await produce(kafka_bootstrap, topics.changes, before)
        await delivered_at_least(receiver, len(before))
    await produce(kafka_bootstrap, topics.changes, while_down)  # nobody delivering
    async with running(settings):
        delivered = await delivered_at_least(receiver, len(before) + len(while_down))
        await asyncio.sleep(0.5)  # a repeat would arrive within this: the loop fetches every 0.2 s at most
    ids = [r.change_id for r in receiver.delivered()]
    assert sorted(ids) == sorted(orjson.loads(m)["change_id"] for m in before + while_down)  # none lost, none twice
    assert len(delivered) == len(ids)


async def test_a_new_subscription_starts_at_the_end_of_the_topic(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver
) -> None:
    await produce(kafka_bootstrap, topics.changes, [change("L-old", 1)])  # before the subscription existed
    async with running(webhook_settings(kafka_bootstrap, topics, [subscription("newcomer", receiver)])):
        await produce(kafka_bootstrap, topics.changes, [change("L-new", 1)])
        await delivered_at_least(receiver, 1)
        await asyncio.sleep(0.5)
    assert [r.change_id for r in receiver.requests] == ["L-new-tier-1"]


# --- (6) filters ----------------------------------------------------------------------------------------------------


async def test_filters_pick_changes_by_set_and_segment_and_erasures_reach_everyone(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver, second_receiver: Receiver
) -> None:
    subscriptions = [
        subscription("hot-tier", receiver, segment_sets=["tier"], segments=["hot"]),
        subscription("lifecycle", second_receiver, segment_sets=["lifecycle"]),
    ]
    messages = [
        change("L-f", 1, segment_set="tier", from_segment="warm", to="hot"),  # hot-tier: into hot
        change("L-f", 2, segment_set="tier", from_segment="warm", to="cold"),  # neither
        change("L-f", 3, segment_set="lifecycle", from_segment=None, to="engaged"),  # lifecycle
        change("L-f", 4, segment_set="tier", from_segment="hot", to="warm"),  # hot-tier: out of hot
        change("L-f", 5, segment_set="fit", from_segment=None, to="hot"),  # neither: another set
        erasure("L-f"),  # both
    ]
    async with running(webhook_settings(kafka_bootstrap, topics, subscriptions)):
        await produce(kafka_bootstrap, topics.changes, messages)
        await delivered_at_least(receiver, 3)
        await delivered_at_least(second_receiver, 2)
        await asyncio.sleep(0.5)
    assert [r.change_id for r in receiver.requests] == ["L-f-tier-1", "L-f-tier-4", "L-f-erased"]
    assert [r.change_id for r in second_receiver.requests] == ["L-f-lifecycle-3", "L-f-erased"]
    assert receiver.requests[-1].headers["x-leadscore-event"] == "lead_erased"


# --- (7) subscriptions are independent ------------------------------------------------------------------------------


async def test_a_receiver_down_holds_back_only_its_own_subscription(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver, second_receiver: Receiver
) -> None:
    messages = [change(f"L-two-{n}", n) for n in range(5)]
    for message in messages:
        receiver.plans[orjson.loads(message)["change_id"]] = [HANG, HANG, 503, 503]  # down for a while, then back
    subscriptions = [subscription("down", receiver), subscription("up", second_receiver)]
    async with running(webhook_settings(kafka_bootstrap, topics, subscriptions, webhook_max_attempts=6)):
        await produce(kafka_bootstrap, topics.changes, messages)
        up = await delivered_at_least(second_receiver, len(messages), within=5)
        assert receiver.delivered() == []  # the other one is still retrying
        down = await delivered_at_least(receiver, len(messages))
    assert sorted(r.change_id for r in up) == sorted(r.change_id for r in down)


# --- the command ----------------------------------------------------------------------------------------------------


def test_the_command_delivers_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topics: Topics, receiver: Receiver, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEADSCORE_")}
    env |= {
        "LEADSCORE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LEADSCORE_SEGMENT_CHANGES_TOPIC": topics.changes,
        "LEADSCORE_WEBHOOK_DLQ_TOPIC": topics.dead_letters,
        "LEADSCORE_WEBHOOK_GROUP_PREFIX": topics.group_prefix,
        "LEADSCORE_WEBHOOKS": orjson.dumps([subscription("cli", receiver)]).decode(),
        "LEADSCORE_FETCH_MAX_WAIT_MS": "10",
        "LEADSCORE_KAFKA_SESSION_TIMEOUT_MS": "3000",
    }
    status = f"http://127.0.0.1:{metrics_port}"
    with leadscore_process("webhooks", ["webhooks", "--metrics-port", str(metrics_port)], env, tmp_path) as process:

        def ready() -> bool:
            assert process.running, f"leadscore webhooks exited: {process.log_tail()}"
            return httpx.get(f"{status}/readyz", timeout=1).status_code == 200

        wait_until(ready, timeout=30, message="leadscore webhooks ready", ignore=(httpx.TransportError,))
        produce_raw(kafka_bootstrap, topics.changes, [("L-cli", change("L-cli", 1))])
        wait_until(lambda: receiver.delivered(), message="the delivery")
        wait_until(
            lambda: metric_sum(f"{status}/metrics", "leadscore_webhook_deliveries_total") == 1,
            message="the delivery counted",
        )
        assert process.stop() == 0  # SIGTERM
    log = process.log_path.read_text()
    assert "webhooks stopped" in log
    assert SECRET not in log and "not-for-logs" not in log
    assert [r.change_id for r in receiver.delivered()] == ["L-cli-tier-1"]
