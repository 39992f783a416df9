"""Every Redis key leadscore uses, built in one place (the write script receives each one it touches in KEYS).

On one Redis:
  lead:{<lead_id>}           one packed record (app.storage.codec)
  lead:{<lead_id>}:history   the lead's score history (a bounded list)
  segment:<set>:<segment>    sorted set ranking a segment's leads by score
  due:<partition>            sorted set of a partition's leads by the time they are due for a rescore
  record-layout:<hex>        the names a record layout stands for, by its fingerprint
  models, model:<version>, model:active   the model registry
  activity:events:<second>   events processed in that second (kept two minutes: the page's events/s)
  activity:changes           the latest segment changes (a short list: the page's feed)
A lead's keys share the hash tag `{<lead_id>}`.

On a Redis Cluster a script may only touch keys of one hash slot, and a batch write must touch a lead's record,
its history, the segment sets and the due index it moves in together. So each lead belongs to one of
`CLUSTER_GROUPS` groups (a hash of its id), and every key a write touches for it carries its group's tag:
  lead:{g<group>}:<lead_id>, history:{g<group>}:<lead_id>, segment:{g<group>}:<set>:<segment>,
  due:{g<group>}:<partition>, record-layout:{g<group>}:<hex>
A batch write is one script call per group; a segment listing merges the group's sorted sets; the registry's
keys share the tag `{models}`, the activity keys `{activity}` (written beside a batch's script calls, not by them).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

LEAD_KEY_PREFIX = "lead:"
SEGMENT_KEY_PREFIX = "segment:"
# Groups of leads on a cluster: enough to spread over the masters of a large cluster, few enough that a segment
# listing (one sorted set per group) stays cheap. Fixed: a lead's keys are named after its group.
CLUSTER_GROUPS = 64


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


ACTIVITY_EVENTS_PREFIX = "activity:events:"
ACTIVITY_CHANGES_KEY = "activity:changes"


@dataclass(frozen=True)
class KeySpace:
    """The names of the keys on one Redis (`clustered=False`: the names above) or on a Redis Cluster."""

    clustered: bool = False

    @property
    def groups(self) -> range:
        return range(CLUSTER_GROUPS if self.clustered else 1)

    def group(self, lead_id: str) -> int:
        """The group whose hash tag a lead's keys carry (always 0 on one Redis)."""
        return zlib.crc32(lead_id.encode()) % CLUSTER_GROUPS if self.clustered else 0

    def lead(self, lead_id: str) -> str:
        if not self.clustered:
            return lead_key(lead_id)
        return f"{LEAD_KEY_PREFIX}{_tag(self.group(lead_id))}:{lead_id}"

    def history(self, lead_id: str) -> str:
        if not self.clustered:
            return history_key(lead_id)
        return f"history:{_tag(self.group(lead_id))}:{lead_id}"

    def lead_pattern(self) -> str:
        """A SCAN pattern matching every record key (and nothing else of ours)."""
        return f"{LEAD_KEY_PREFIX}{{g*}}:*" if self.clustered else f"{LEAD_KEY_PREFIX}{{*}}"

    def lead_id(self, key: str) -> str:
        """The lead a record key names."""
        if not self.clustered:
            return key[len(LEAD_KEY_PREFIX) + 1 : -1]
        return key.split("}:", 1)[1]

    def segment(self, segment_set: str, segment: str, group: int) -> str:
        if not self.clustered:
            return segment_key(segment_set, segment)
        return f"{SEGMENT_KEY_PREFIX}{_tag(group)}:{segment_set}:{segment}"

    def due(self, partition: int, group: int) -> str:
        return f"due:{_tag(group)}:{partition}" if self.clustered else due_key(partition)

    def layout(self, fingerprint: bytes, group: int) -> str:
        return f"record-layout:{_tag(group)}:{fingerprint.hex()}" if self.clustered else layout_key(fingerprint)

    @property
    def model_index(self) -> str:
        return f"{{models}}:{MODEL_INDEX_KEY}" if self.clustered else MODEL_INDEX_KEY

    @property
    def active_model(self) -> str:
        return f"{{models}}:{ACTIVE_MODEL_KEY}" if self.clustered else ACTIVE_MODEL_KEY

    def model(self, version: str) -> str:
        return f"{{models}}:{model_key(version)}" if self.clustered else model_key(version)

    def activity_events(self, second: int) -> str:
        key = f"{ACTIVITY_EVENTS_PREFIX}{second}"
        return f"{{activity}}:{key}" if self.clustered else key

    @property
    def activity_changes(self) -> str:
        return f"{{activity}}:{ACTIVITY_CHANGES_KEY}" if self.clustered else ACTIVITY_CHANGES_KEY


def _tag(group: int) -> str:
    return f"{{g{group}}}"
