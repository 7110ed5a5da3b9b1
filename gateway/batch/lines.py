"""Batch input lines: parse and check each one, and shape the output and error lines.

Input: ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {...}}`` per line.
A line that breaks these rules becomes an error line; the other lines still run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class BatchLine:
    index: int  # 0-based position among the file's non-blank lines
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    index: int
    custom_id: str | None
    code: str
    message: str


def count_lines(lines: Iterable[bytes]) -> int:
    return sum(1 for line in lines if line.strip())


def parse_lines(lines: Iterable[bytes], endpoint: str) -> Iterator[BatchLine | LineError]:
    """Each non-blank line in order, checked; deterministic, so a resumed batch sees the same indexes."""
    seen: set[str] = set()
    index = -1
    for raw in lines:
        if not raw.strip():
            continue
        index += 1
        yield _parse_one(index, raw, endpoint, seen)


def _parse_one(index: int, raw: bytes, endpoint: str, seen: set[str]) -> BatchLine | LineError:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return LineError(index, None, "invalid_json_line", f"line {index + 1} is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return LineError(index, None, "invalid_json_line", f"line {index + 1} is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(index, None, "missing_custom_id", f"line {index + 1} has no custom_id string")
    if custom_id in seen:
        return LineError(
            index, custom_id, "duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line"
        )
    seen.add(custom_id)
    if obj.get("method", "POST") != "POST":
        return LineError(
            index, custom_id, "invalid_method", f"method must be POST, got {obj.get('method')!r}"
        )
    if obj.get("url") != endpoint:
        return LineError(
            index,
            custom_id,
            "invalid_url",
            f"url must be the batch's endpoint {endpoint}, got {obj.get('url')!r}",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(index, custom_id, "invalid_body", "body must be a JSON object")
    return BatchLine(index, custom_id, body)


def line_id(batch_id: str, index: int) -> str:
    """The ``id`` of a batch's output or error line, and the req_id of its request."""
    return f"{batch_id}-{index}"


def output_line(batch_id: str, index: int, custom_id: str, status_code: int, body: dict[str, Any]) -> str:
    """A line of the output file (status 200) or of the error file (the request failed)."""
    rid = line_id(batch_id, index)
    response = {"status_code": status_code, "request_id": rid, "body": body}
    return json.dumps({"id": rid, "custom_id": custom_id, "response": response, "error": None})


def error_line(batch_id: str, error: LineError) -> str:
    """A line of the error file for an input line that could not run at all."""
    return json.dumps(
        {
            "id": line_id(batch_id, error.index),
            "custom_id": error.custom_id,
            "response": None,
            "error": {"code": error.code, "message": error.message, "line": error.index + 1},
        }
    )
