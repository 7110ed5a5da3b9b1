"""Tools in the prompt: passed to chat templates that render them, written out for those that don't.

A template that knows tools (Qwen2's, Llama 3's) gets OpenAI's tool objects and the conversation's
calls and results in transformers' shape. For one that does not (SmolLM2's), the tools go into the
system message and calls and results become text in the Hermes format (``shared/structured.py``),
the same format the gateway parses the answer in and constrains it to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shared.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

Message = dict[str, Any]

TOOLS_SYSTEM_PROMPT = """You can call functions to help with the user's request. The functions are \
described, one JSON object each, between <tools> and </tools>:
<tools>
{tools}
</tools>

To call a function, answer with one JSON object per call, each between {open} and {close}:
{open}
{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}
{close}"""


def template_renders_tools(chat_template: str) -> bool:
    return "tools" in chat_template


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # sent back as the model wrote it


def call_text(name: str, arguments: Any) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def for_template(messages: Sequence[Message]) -> list[Message]:
    """Messages in transformers' tool-calling shape (arguments as objects, results as role "tool")."""
    out: list[Message] = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": _arguments(c["arguments"])}}
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def written_out(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None) -> list[Message]:
    """Messages for a template that knows nothing of tools: everything as plain text."""
    out: list[Message] = []
    rest = list(messages)
    if tools:
        system = TOOLS_SYSTEM_PROMPT.format(
            tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools),
            open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE,
        )
        if rest and rest[0]["role"] == "system":
            system = f"{rest.pop(0)['content']}\n\n{system}"
        out.append({"role": "system", "content": system})
    for m in rest:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        elif m.get("tool_calls"):
            calls = [call_text(c["name"], _arguments(c["arguments"])) for c in m["tool_calls"]]
            content = "\n".join(([m["content"]] if m["content"] else []) + calls)
            out.append({"role": m["role"], "content": content})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out
