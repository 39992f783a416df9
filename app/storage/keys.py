"""Every Redis key leadscore uses, built in one place (the write script receives each one it touches in KEYS).

  lead:{<lead_id>}           one packed record (app.storage.codec)
  lead:{<lead_id>}:history   the lead's score history (a bounded list)
  segment:<set>:<segment>    sorted set ranking a segment's leads by score
  due:<partition>            sorted set of a partition's leads by the time they are due for a rescore
  record-layout:<hex>        the names a record layout stands for, by its fingerprint
  models, model:<version>, model:active   the model registry
A lead's keys share the hash tag `{<lead_id>}`.
"""

from __future__ import annotations

LEAD_KEY_PREFIX = "lead:"
SEGMENT_KEY_PREFIX = "segment:"


def lead_key(lead_id: str) -> str:
    return f"{LEAD_KEY_PREFIX}{{{lead_id}}}"


def segment_key(segment_set: str, segment: str) -> str:
    return f"{SEGMENT_KEY_PREFIX}{segment_set}:{segment}"


def history_key(lead_id: str) -> str:
    return f"{lead_key(lead_id)}:history"


def due_key(partition: int) -> str:
    return f"due:{partition}"


def layout_key(fingerprint: bytes) -> str:
    return f"record-layout:{fingerprint.hex()}"


MODEL_INDEX_KEY = "models"
ACTIVE_MODEL_KEY = "model:active"


def model_key(version: str) -> str:
    return f"model:{version}"
