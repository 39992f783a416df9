"""Every Prometheus metric of leadscore, in one place (prefix `leadscore_`)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_SCORE_BUCKETS = tuple(round(b / 20, 2) for b in range(1, 21))


class BatchHistogram(Collector):
    """A histogram observed a batch at a time: a batch observes thousands of latencies and scores, and
    prometheus-client's `observe` costs ~2 µs of Python each. Counts are kept per bucket with numpy and exposed
    through the library's public collector API, in the same text format as a `Histogram`."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray([*buckets, math.inf], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()  # observed in the event loop, collected from the scrape thread
        if registry is not None:
            registry.register(self)

    def observe_many(self, amounts: Sequence[float] | np.ndarray) -> None:
        values = np.asarray(amounts, dtype=np.float64)
        if values.size == 0:
            return
        # bucket i counts values <= bound i (Prometheus' `le`), the last one everything
        per_bucket = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        with self._lock:
            self._counts += per_bucket[: len(self._bounds)]
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(_le(bound), count) for bound, count in zip(self._bounds.tolist(), cumulative, strict=True)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client's own histograms write it (1.0, 0.05, +Inf)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


EVENTS_CONSUMED = Counter("leadscore_events_consumed_total", "Valid events consumed, by event type.", ["type"])
EVENTS_SKIPPED = Counter(
    "leadscore_events_skipped_total",
    "Valid events not applied: replayed (at or below the lead's stored offset), duplicate (event id seen"
    " recently), fenced (a newer owner had already written the lead).",
    ["reason"],
)
INVALID_EVENTS = Counter(
    "leadscore_invalid_events_total", "Events sent to the dead-letter topic, by reason.", ["reason"]
)
INVALID_VALUES = Counter(
    "leadscore_invalid_values_total",
    "Applied events whose numeric property a signal reads was missing or not a number (the signal skipped it).",
    ["signal"],
)
BATCH_SIZE = Histogram("leadscore_batch_size", "Records per consumed micro-batch.", buckets=_BATCH_BUCKETS)
BATCH_STAGE_SECONDS = Histogram(
    "leadscore_batch_stage_seconds",
    "Time per micro-batch stage: parse, load, fold, score; then publish, write and commit, which overlap with"
    " the next batch's; wait is the next batch waiting for them.",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
EVENT_TO_SCORED_SECONDS = BatchHistogram(
    "leadscore_event_to_scored_seconds",
    "From the broker's timestamp of an event to its lead's new score being stored.",
    _LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "leadscore_consumer_lag",
    "Messages of an owned partition not yet committed (high watermark - committed offset).",
    ["partition"],
)
CONSUMER_STALLED = Gauge(
    "leadscore_consumer_stalled",
    "1 while the consumer is behind and has committed nothing for LEADSCORE_STALL_SECONDS (its readiness fails).",
)
LAST_COMMIT = Gauge("leadscore_consumer_last_commit_timestamp_seconds", "When the consumer last committed offsets.")
SCORES = BatchHistogram("leadscore_score", "Scores written.", _SCORE_BUCKETS)
SEGMENT_TRANSITIONS = Counter(
    "leadscore_segment_transitions_total",
    "Leads moved between segments, by segment set, from and to (the flows).",
    ["segment_set", "from_segment", "to_segment"],
)
SEGMENT_CHANGES_PUBLISHED = Counter(
    "leadscore_segment_changes_published_total", "Segment-change events acknowledged by the broker."
)
LEADS_ERASED = Counter(
    "leadscore_leads_erased_total", "Erasure requests a consumer carried out (and published as lead_erased)."
)
SEGMENT_SIZE = Gauge("leadscore_segment_size", "Leads in each segment.", ["segment_set", "segment"])
SWEPT_LEADS = Counter("leadscore_swept_leads_total", "Leads rescored by the sweeper because time moved them.")
SWEEP_SECONDS = Histogram("leadscore_sweep_seconds", "One sweeper round trip.", buckets=_STAGE_BUCKETS)
DUE_LEADS = Gauge("leadscore_due_leads", "Leads whose due time has come and not yet rescored.", ["partition"])
MODEL_INFO = Info("leadscore_model", "The model serving in this process.")
MODEL_LOAD_FAILURES = Counter(
    "leadscore_model_load_failures_total", "Activated models refused (unreadable or not fitting the config)."
)
REDIS_ERRORS = Counter("leadscore_redis_errors_total", "Failed Redis operations, by operation.", ["operation"])
HTTP_REQUEST_SECONDS = Histogram(
    "leadscore_http_request_seconds",
    "HTTP request latency by route template, method and status.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "leadscore_webhook_deliveries_total",
    "Webhook deliveries by subscription and outcome: delivered (2xx), retried (an attempt failed and another"
    " follows), dead_lettered (sent to the webhook dead-letter topic: refused, failed every attempt, unreadable).",
    ["subscription", "outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "leadscore_webhook_delivery_seconds",
    "One webhook attempt: the POST until its response, error or timeout.",
    ["subscription"],
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_LAG = Gauge(
    "leadscore_webhook_lag",
    "Change messages a subscription has not yet delivered or dead-lettered (high watermark - committed offset,"
    " summed over its partitions).",
    ["subscription"],
)
