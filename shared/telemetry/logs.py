"""Structured JSON log lines, one object per line, carrying ``req_id`` and ``trace_id``.

Fields passed with ``extra=`` become top-level keys. ``trace_id`` comes from ``extra`` (the
worker's step loop logs for many requests, so it passes each request's own) or else from the
current span. Prompt text and credentials never reach a line below DEBUG: fields named in
``SENSITIVE_FIELDS`` are dropped from INFO-and-above records, so a stray ``extra={"prompt": ...}``
cannot leak them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

from shared.telemetry.settings import LogSettings

SENSITIVE_FIELDS = frozenset({"prompt", "messages", "api_key", "authorization", "key", "text"})
# uvicorn adds color_message, a duplicate of msg with terminal escapes.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({})))
_STANDARD_ATTRS = _RECORD_ATTRS | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or (key in SENSITIVE_FIELDS and record.levelno > logging.DEBUG):
                continue
            line[key] = value
        if "trace_id" not in line:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                line["trace_id"] = format(ctx.trace_id, "032x")
                line["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(settings: LogSettings | None = None) -> None:
    """Route the root logger (and uvicorn's) to stderr, as ``BUSSTOP_LOG_FORMAT`` says."""
    settings = settings or LogSettings()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if settings.format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
