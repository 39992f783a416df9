"""observe_many: a batch of observations lands in a histogram exactly as one `observe` each would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from app.metrics import observe_many

BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


@pytest.mark.parametrize("count", [0, 1, 2_000])
def test_observe_many_equals_observing_one_by_one(count: int) -> None:
    rng = random.Random(count)
    # bounds themselves, values between, above the last bucket and at zero
    amounts = [rng.choice([0.0, *BUCKETS, rng.uniform(0, 2), rng.uniform(0, 0.002)]) for _ in range(count)]
    one_by_one = Histogram("one", "one by one", buckets=BUCKETS, registry=CollectorRegistry())
    batched = Histogram("batched", "batched", buckets=BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.observe(amount)
    observe_many(batched, amounts)
    expected = {(name.replace("one", "batched", 1), le): v for (name, le), v in _samples(one_by_one).items()}
    actual = _samples(batched)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value), key
    assert actual[("batched_count", "")] == count
