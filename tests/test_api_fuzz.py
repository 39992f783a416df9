"""Schemathesis generates requests from the API's own OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

import itertools
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.stack import StackNames, stack_env, start_api


def test_no_generated_request_gets_a_server_error(
    redis_url: str, kafka_bootstrap: str, tmp_path: Path, redis_client: object
) -> None:
    env = stack_env(redis_url, kafka_bootstrap, StackNames.unique("fuzz"))
    process, base = start_api(env, tmp_path)
    try:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 5
        statuses: list[int] = []
        for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def no_server_error(case: schemathesis.Case) -> None:
                response = case.call(timeout=10)
                statuses.append(response.status_code)
                where = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:300]}"
                if response.status_code >= 400:
                    assert response.json()["message"], f"{where}: errors carry a message"

            try:
                no_server_error()
            except Unsatisfiable:
                # no invalid input exists for an operation without parameters or body
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
        assert len(statuses) > 100 and {404, 422} <= set(statuses), "the fuzzer should reach the error paths"
    finally:
        process.stop()
