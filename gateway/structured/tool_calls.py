"""Tool calls out of an answer's text, as it streams: content passes through, ``<tool_call>`` blocks
become OpenAI's ``tool_calls`` deltas.

A call's first delta carries its ``index``, ``id``, ``type`` and ``function.name``; its arguments
follow in fragments, the exact text the model wrote, as soon as they are known to be arguments (a
JSON scan finds where the arguments object ends). A call written in another key order, or not as JSON
the scan can follow, is parsed whole when its closing tag arrives. The whole answer fed at once gives
the same calls as the answer fed in any pieces, so a streamed answer reassembles into the non-streamed
one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None  # with the name, on a call's first delta only
    name: str | None = None
    arguments: str = ""

    def json(self) -> dict[str, object]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""

    def json(self) -> dict[str, object]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass
class _OpenCall:
    """A call whose closing tag has not arrived: its text so far and how far the scan got."""

    raw: str = ""
    call: ToolCall | None = None  # set once the name is known
    args_pos: int = 0  # where in raw the scan of the arguments stands
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    args_done: bool = False
    args_whole: bool = False  # the arguments are no object: taken from the whole call at its end


def _prefix_overlap(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a start of ``tag``."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class ToolCallParser:
    new_id: Callable[[], str] = new_call_id
    calls: list[ToolCall] = field(default_factory=list)
    _pending: str = ""  # text not yet given out: a possible start of a tag, or whitespace after a call
    _open: _OpenCall | None = None

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """The content and call deltas that ``text`` completes."""
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        buffer = self._pending + text
        self._pending = ""
        while buffer:
            if self._open is None:
                at = buffer.find(TOOL_CALL_OPEN)
                if at < 0:
                    keep = _prefix_overlap(buffer, TOOL_CALL_OPEN)
                    out, self._pending = buffer[: len(buffer) - keep], buffer[len(buffer) - keep:]
                    if self.calls and not out.strip():  # separators between calls are not content
                        self._pending = out + self._pending
                    else:
                        content.append(out)
                    break
                before = buffer[:at]
                if before.strip() or not self.calls:
                    content.append(before)
                self._open, buffer = _OpenCall(), buffer[at + len(TOOL_CALL_OPEN):]
                continue
            buffer = self._feed_call(self._open, buffer, deltas, content)
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left at the end of the answer (an unclosed call is parsed as far as it goes)."""
        deltas: list[ToolCallDelta] = []
        content = self._pending if self._pending.strip() or not self.calls else ""
        self._pending = ""
        if self._open is not None:
            content += self._close(self._open, deltas, closed=False)
            self._open = None
        return content, deltas

    def _feed_call(self, open_: _OpenCall, text: str, deltas: list[ToolCallDelta], content: list[str]) -> str:
        """Add ``text`` to the open call; returns what follows its closing tag."""
        start = len(open_.raw)
        open_.raw += text
        at = open_.raw.find(TOOL_CALL_CLOSE, max(0, start - len(TOOL_CALL_CLOSE)))
        end = len(open_.raw) if at < 0 else at
        if open_.call is None and (m := _HEAD.match(open_.raw, 0, end)) and m.end() < end:
            open_.call = ToolCall(self.new_id(), json.loads(f'"{m.group(1)}"'))
            open_.args_pos = m.end()
            self.calls.append(open_.call)
            deltas.append(ToolCallDelta(len(self.calls) - 1, open_.call.id, open_.call.name))
        if open_.call is not None and not open_.args_done:
            fragment = self._scan_arguments(open_, end)
            if fragment:
                open_.call.arguments += fragment
                deltas.append(ToolCallDelta(len(self.calls) - 1, arguments=fragment))
        if at < 0:
            return ""
        rest = open_.raw[at + len(TOOL_CALL_CLOSE):]
        open_.raw = open_.raw[:at]
        content.append(self._close(open_, deltas, closed=True))
        self._open = None
        return rest

    @staticmethod
    def _scan_arguments(open_: _OpenCall, end: int) -> str:
        """The arguments text between ``args_pos`` and ``end``, up to the object's closing brace."""
        raw, i = open_.raw, open_.args_pos
        if open_.depth == 0 and i < end and raw[i] not in "{[":
            open_.args_done = open_.args_whole = True  # not an object: parsed when the call closes
            return ""
        while i < end:
            ch = raw[i]
            i += 1
            if open_.in_string:
                open_.escaped = not open_.escaped and ch == "\\"
                open_.in_string = open_.escaped or ch != '"'
            elif ch == '"':
                open_.in_string = True
            elif ch in "{[":
                open_.depth += 1
            elif ch in "}]":
                open_.depth -= 1
                if open_.depth == 0:
                    open_.args_done = True
                    break
        fragment, open_.args_pos = raw[open_.args_pos:i], i
        return fragment

    def _close(self, open_: _OpenCall, deltas: list[ToolCallDelta], closed: bool) -> str:
        """Finish a call at its closing tag (or the end); returns its text when it is no call at all."""
        parsed = _parse_call(open_.raw)
        if open_.call is not None:
            if open_.args_whole and parsed is not None:
                open_.call.arguments = parsed[1]
                deltas.append(ToolCallDelta(self.calls.index(open_.call), arguments=parsed[1]))
            return ""
        if parsed is None:
            return f"{TOOL_CALL_OPEN}{open_.raw}{TOOL_CALL_CLOSE if closed else ''}"
        call = ToolCall(self.new_id(), *parsed)
        self.calls.append(call)
        deltas.append(ToolCallDelta(len(self.calls) - 1, call.id, call.name, call.arguments))
        return ""


def _parse_call(raw: str) -> tuple[str, str] | None:
    """(name, arguments text) of a whole call's JSON; None when it is not one."""
    try:
        obj = json.loads(raw)
        name = obj["name"]
        arguments = obj.get("arguments", obj.get("parameters", {}))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(name, str):
        return None
    return name, arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
