"""How leadscore's processes log: plain text lines, or one JSON object a line for log pipelines
(`LEADSCORE_LOG_FORMAT=json`) with the time, level, component (the logger), message and, where the code gives
them, the lead, topic, partition and offset."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

# Fields a log call may attach with `extra=` that a JSON line carries as its own keys.
CONTEXT_FIELDS = ("lead_id", "topic", "partition", "offset", "model_version")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if (value := getattr(record, field, None)) is not None:
                line[field] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, log_format: str = "text") -> None:
    """The root logger's one handler on stderr, in the chosen format (replacing any set before)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
