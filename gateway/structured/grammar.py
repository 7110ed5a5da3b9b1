"""From OpenAI's and vLLM's request fields to one grammar in shared/structured.py's dialect.

JSON output is compact (no free whitespace between tokens), as OpenAI's strict mode writes it: a
small model may otherwise spend its whole budget on newlines. A forced tool call is the Hermes
``<tool_call>`` block with the function's name fixed and its arguments held to its parameters'
schema; with ``parallel_tool_calls`` the model may make several calls, one after another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import llguidance

from shared.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, grammar_error

COMPACT = {"whitespace_flexible": False}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": {**COMPACT, **schema.get("x-guidance", {})}})


def json_schema_grammar(schema: dict[str, Any]) -> str:
    return f"start: {_json(schema)}"


def regex_grammar(regex: str) -> str:
    return f"start: /{llguidance.regex_to_lark(regex)}/"


def choice_grammar(choices: Sequence[str]) -> str:
    return "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def tool_call_grammar(functions: Sequence[tuple[str, dict[str, Any] | None]], parallel: bool) -> str:
    """Output that is one call (or, with ``parallel``, several) of the named functions."""
    rules = ["start: call" + (' ("\\n" call)*' if parallel else "")]
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(functions))))
    for i, (name, parameters) in enumerate(functions):
        head = json.dumps(f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": ')
        tail = json.dumps(f"}}\n{TOOL_CALL_CLOSE}")
        rules.append(f"call_{i}: {head} args_{i} {tail}")
        rules.append(f"args_{i}: {_json(parameters or ANY_OBJECT)}")
    return "\n".join(rules)


def checked(grammar: str) -> str:
    """``grammar``, or ValueError saying why it cannot be used (a pydantic validator's error)."""
    if (why := grammar_error(grammar)) is not None:
        raise ValueError(f"cannot be used for structured output: {why}")
    return grammar
