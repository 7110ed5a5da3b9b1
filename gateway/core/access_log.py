"""uvicorn's access log, kept useful and safe: no probe noise, no secrets from query strings.

A client may put its API key in the URL (``?api_key=sk-...``) although the gateway refuses it; the
access line would then carry the key. Query values are therefore printed only for the parameters the
API defines (pagination and the like), every other value as ``***``.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})
# Query parameters of busstop's own routes, whose values are never secret.
SAFE_QUERY_PARAMS = frozenset({"limit", "after", "order", "purpose"})


def redact_query(full_path: str) -> str:
    """``full_path`` with the value of every query parameter outside ``SAFE_QUERY_PARAMS`` hidden."""
    path, sep, query = full_path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        return f"{path}?***"  # not name=value pairs: nothing in it is known to be safe
    shown = [f"{quote(k)}={quote(v) if k in SAFE_QUERY_PARAMS else '***'}" for k, v in pairs]
    return f"{path}?{'&'.join(shown)}"


class AccessLogFilter(logging.Filter):
    """Drops probe and scrape lines, and redacts query strings in the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client address, method, full path, HTTP version, status)
        if not (isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str)):
            return True
        full_path = args[2]
        if full_path.partition("?")[0] in PROBE_PATHS:
            return False
        if "?" in full_path:
            record.args = (*args[:2], redact_query(full_path), *args[3:])
        return True


def install_access_log_filter() -> None:
    logging.getLogger("uvicorn.access").addFilter(AccessLogFilter())
