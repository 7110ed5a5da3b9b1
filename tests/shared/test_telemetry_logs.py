"""JSON log lines: request and trace ids as fields; prompt text and keys kept out above DEBUG."""

from __future__ import annotations

import json
import logging

from shared.telemetry.logs import JsonFormatter


def render(level: int, **extra: object) -> dict[str, object]:
    record = logging.makeLogRecord(
        {
            "name": "busstop.test",
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": "request %s done",
            "args": ("r1",),
            **extra,
        }
    )
    return json.loads(JsonFormatter().format(record))


def test_info_line_has_ids_and_no_prompt_or_key() -> None:
    line = render(
        logging.INFO, req_id="r1", trace_id="ab" * 16, prompt="my secret", api_key="sk-x", status=200
    )
    assert line["msg"] == "request r1 done"
    assert line["req_id"] == "r1" and line["trace_id"] == "ab" * 16 and line["status"] == 200
    assert "prompt" not in line and "api_key" not in line
    assert "my secret" not in json.dumps(line)


def test_debug_line_may_carry_the_prompt() -> None:
    assert render(logging.DEBUG, prompt="hello")["prompt"] == "hello"
