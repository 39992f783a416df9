"""A lead as the API shows it: its record as JSON-ready data (`LeadView`'s fields), rendered or as a model.

`leadscore lead` prints the same document, so the command line and GET /leads/{id} agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from app.domain.batch import score_leads
from app.domain.lead import LeadRecord
from app.settings import ServiceConfig
from models.explain import explain
from models.scoring import Scorer
from models.state import LeadState
from models.vector import FeatureBatch, FeatureValue
from schemas.api import LeadView


def _iso(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def lead_document(
    record: LeadRecord,
    config: ServiceConfig,
    scorer: Scorer | None = None,
    *,
    reasons: int = 0,
    fresh_at_ms: int | None = None,
    features: dict[str, FeatureValue] | None = None,
) -> dict[str, Any]:
    """The API's view of a record as plain JSON-ready data (`LeadView`'s fields); `reasons` > 0 explains the
    stored score, `fresh_at_ms` rescores as of then. Rendered with orjson, it is byte-equal to the LeadView
    pydantic would render (a test holds them equal) at a fraction of the cost. `features`: the record's, when
    already computed with other leads' (`lead_views`)."""
    state = record.state
    if features is None:
        (features,) = features_of([record], config)
    document: dict[str, Any] = {
        "lead_id": record.lead_id,
        "score": record.score,
        "segment": record.segments.get(config.segments.primary),
        "segments": record.segments,
        "model_version": record.model_version,
        "scored_at": _iso(record.scored_ms),
        "last_event_at": _iso(state.anchor_ms),
        "first_event_at": _iso(state.first_event_ms),
        "event_counts": state.counts,
        "features": features,
        "profile": state.profile,
        "status": lead_status(state, config.features.conversion_type),
        "exited_at": _iso(state.exited_ms),
        "invalid_values": state.invalid_values,
        "reasons": None,
        "raw_score": None,
        "bias": None,
        "current": None,
    }
    if state.exited_ms:
        reasons = 0  # scored 0 because it exited, not by the model: there is nothing of the model's to explain
    if scorer is not None and reasons > 0:
        explanation = explain(scorer, [features], config.features, reasons)[0]
        document["reasons"] = [
            {"feature": r.feature, "value": r.value, "contribution": r.contribution, "sentence": r.sentence}
            for r in explanation.reasons
        ]
        document["raw_score"], document["bias"] = explanation.raw_score, explanation.bias
    if scorer is not None and fresh_at_ms is not None:
        now = LeadRecord(record.lead_id, state, segments=dict(record.segments))
        score_leads([now], fresh_at_ms, scorer, config.features, config.segments)
        document["current"] = {
            "as_of": datetime.fromtimestamp(fresh_at_ms / 1000, tz=UTC),
            "score": now.score or 0.0,
            "segments": now.segments,
        }
    return document


def lead_status(state: LeadState, conversion_type: str) -> str:
    if state.exited_ms:
        return "exited"
    return "converted" if state.counts.get(conversion_type) else "open"


def render_lead(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


def lead_view(record: LeadRecord, config: ServiceConfig) -> LeadView:
    """A record as a LeadView model (without reasons), for responses that embed leads."""
    return lead_views([record], config)[0]


def lead_views(records: Sequence[LeadRecord], config: ServiceConfig) -> list[LeadView]:
    """`lead_view` of many records, their features computed together."""
    # model_construct: the values are ours and typed; validating ~50 of them would cost more than the rest
    return [
        LeadView.model_construct(**lead_document(record, config, features=features))
        for record, features in zip(records, features_of(records, config), strict=True)
    ]


def features_of(records: Sequence[LeadRecord], config: ServiceConfig) -> list[dict[str, FeatureValue]]:
    """Each record's features as of its scoring, computed in one batch."""
    batch = FeatureBatch.of([r.state for r in records], [_features_as_of(r) for r in records], config.features)
    return [batch.values(i) for i in range(len(records))]


def _features_as_of(record: LeadRecord) -> int:
    """The features a record's score was computed from are as of its scoring (its last event if never scored)."""
    return record.scored_ms or record.state.anchor_ms
