"""Schemathesis against a real API process, every check on: the API does exactly what its OpenAPI schema says.

The run is what `schemathesis run --checks all --mode all` does, driven from Python: requests generated from the
schema the API serves, valid (positive) and invalid (negative), in the examples, coverage (boundaries, missing
parameters, undeclared methods) and fuzzing phases. Every response must conform: documented status codes,
content types, headers and bodies; valid data accepted; invalid data refused with a 4xx; a 405 with an Allow
header for a method the path does not serve; never a 5xx.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import redis
import schemathesis
from schemathesis.checks import CHECKS, is_check_class, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, StopReason, events

from tests.support import StackNames, stack_env, start_api

CONFIG = {
    # positive and negative data; 100 examples per operation keep the run near 30 s; no example database, so runs
    # stay independent of earlier ones
    "generation": {"mode": "all", "max-examples": 100, "database": "none"},
    # Stateful testing chains operations through the schema's links; it declares none, and no operation creates
    # anything for another to read back.
    "phases": {"examples": {}, "coverage": {}, "fuzzing": {}, "stateful": {"enabled": False}},
    "checks": {"enabled": True},  # every check (`max_response_time` has no limit set, so it has nothing to check)
    "request-timeout": 10,
}


def test_api_conforms_to_its_schema(
    redis_url: str, kafka_bootstrap: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    env = stack_env(redis_url, kafka_bootstrap, StackNames.unique("fuzz"))
    process, base = start_api(env, tmp_path)
    problems: list[str] = []
    statuses: Counter[int] = Counter()
    tested: set[str] = set()
    ran: set[str] = set()
    try:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=SchemathesisConfig.from_dict(CONFIG))
        for event in schemathesis.engine.from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                recorder = event.recorder
                if event.status is not Status.SKIP:  # the examples phase skips: the schema has no examples
                    tested.add(recorder.label)
                ran.update(check.name for checks in recorder.checks.values() for check in checks)
                statuses.update(i.response.status_code for i in recorder.interactions.values() if i.response)
                problems += [
                    f"{recorder.label} [{event.phase}] {check.name}: {check.failure_info.failure}\n"
                    f"{check.failure_info.code_sample}"
                    for checks in recorder.checks.values()
                    for check in checks
                    if check.status is Status.FAILURE and check.failure_info is not None
                ]
            elif isinstance(event, events.NonFatalError):
                problems.append(f"{event.label} [{event.phase}]: {event.info.message}")
            elif isinstance(event, events.FatalError):
                problems.append(f"schemathesis stopped: {event.exception!r}")
            elif isinstance(event, events.EngineFinished):
                problems += [str(failure) for failure in event.failures]
                assert event.stop_reason is StopReason.COMPLETED, event.stop_reason
    finally:
        process.stop()
    # A failure is usually found many times over: each distinct one once is enough to read.
    assert not problems, "\n\n".join(dict.fromkeys(problems))
    load_all_checks()
    every_check = {check.__name__ for check in CHECKS.get_all() if not is_check_class(check)}
    assert ran == every_check, f"checks that never ran: {every_check - ran}"
    # The run reached every operation and the API's error paths, not only its front door.
    assert len(tested) >= 7, tested
    assert sum(statuses.values()) > 500 and {200, 404, 405, 422} <= set(statuses), statuses
