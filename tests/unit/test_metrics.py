"""BatchHistogram: a batch of observations exposed exactly as prometheus-client's Histogram exposes one `observe`
each."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.metrics import BatchHistogram

BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text a scrape reads, without the `_created` timestamp a Histogram adds."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@pytest.mark.parametrize("count", [0, 1, 2_000])
def test_a_batch_histogram_scrapes_as_observing_one_by_one(count: int) -> None:
    rng = random.Random(count)
    # bounds themselves, values between, above the last bucket and at zero
    amounts = [rng.choice([0.0, *BUCKETS, rng.uniform(0, 2), rng.uniform(0, 0.002)]) for _ in range(count)]
    one_by_one_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    one_by_one = Histogram("latency", "how long", buckets=BUCKETS, registry=one_by_one_registry)
    batched = BatchHistogram("latency", "how long", BUCKETS, registry=batched_registry)
    for amount in amounts:
        one_by_one.observe(amount)
    for chunk in (amounts[:7], amounts[7:]):  # more than one batch
        batched.observe_many(chunk)
    expected, actual = _exposition(one_by_one_registry), _exposition(batched_registry)
    # the sums may differ in the last digits (added in another order)
    assert [line for line in actual if "_sum" not in line] == [line for line in expected if "_sum" not in line]
    expected_sum = next(float(line.split()[-1]) for line in expected if line.startswith("latency_sum"))
    actual_sum = next(float(line.split()[-1]) for line in actual if line.startswith("latency_sum"))
    assert actual_sum == pytest.approx(expected_sum)
    assert f"latency_count {float(count)}" in actual
