"""The tool-call parser: any split of an answer into stream pieces gives exactly the calls and content
of the whole answer parsed at once, with OpenAI's delta shape (id and name once, then arguments)."""

from __future__ import annotations

import random

import pytest

from gateway.serving.formats import ChatFormat, Choice
from gateway.structured.tool_calls import ToolCallDelta, ToolCallParser
from shared.messages import Usage

TWO_CALLS = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris \\"Ville\\" }", '
    '"days": [1, {"a": 2}]}}\n</tool_call>\n<tool_call>\n{"arguments": {"q": "é"}, "name": "search"}\n'
    "</tool_call>"
)
ANSWERS = {
    "two calls, one in the other key order": (
        TWO_CALLS, "Let me check.\n",
        [("get_weather", '{"city": "Paris \\"Ville\\" }", "days": [1, {"a": 2}]}'),
         ("search", '{"q": "é"}')]),
    "no call, a lone '<' and a tag's start": (
        "a < b and <tool but no call", "a < b and <tool but no call", []),
    "empty arguments": ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "", [("f", "{}")]),
    "cut off inside a call": ('<tool_call>\n{"name": "f", "argu', '<tool_call>\n{"name": "f", "argu', []),
    "not JSON inside the tags": (
        "<tool_call>oops</tool_call> after", "<tool_call>oops</tool_call> after", []),
    "arguments as a string": ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "",
                              [("f", '{"x": 1}')]),
}


def assemble(pieces: list[str]) -> tuple[str, list[tuple[str, str]], list[ToolCallDelta]]:
    parser = ToolCallParser(new_id=lambda: "call_x")
    content, deltas = "", []
    for piece in pieces:
        text, new = parser.feed(piece)
        content, deltas = content + text, deltas + new
    text, new = parser.finish()
    content, deltas = content + text, deltas + new
    calls: dict[int, list[str]] = {}
    for d in deltas:
        if d.id is not None:
            assert d.index not in calls, "a call's id and name come once"
            calls[d.index] = [d.name or "", ""]
        calls[d.index][1] += d.arguments
    return content, [(n, a) for n, a in (calls[i] for i in sorted(calls))], deltas


@pytest.mark.parametrize("case", list(ANSWERS))
def test_any_split_gives_the_calls_and_content_of_the_whole_answer(case: str) -> None:
    answer, content, calls = ANSWERS[case]
    assert assemble([answer])[:2] == (content, calls)
    rng = random.Random(case)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(answer)), k=min(len(answer) - 1, rng.randint(1, 12))))
        pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
        assert assemble(pieces)[:2] == (content, calls), pieces


def test_arguments_stream_in_fragments_after_a_first_delta_with_the_name() -> None:
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    _, _, deltas = assemble([answer[i:i + 4] for i in range(0, len(answer), 4)])
    first, *rest = deltas
    assert first.json() == {"index": 0, "id": "call_x", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}
    assert len(rest) > 3
    assert all(d.json() == {"index": 0, "function": {"arguments": d.arguments}} for d in rest)


def test_the_chat_format_gives_the_same_call_streamed_and_whole() -> None:
    fmt = ChatFormat("chatcmpl-1", 0, "m", parses_tool_calls=True)
    whole = fmt.response([Choice(TWO_CALLS, "stop")], Usage())["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    assert whole["message"]["content"] == "Let me check.\n"
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in whole["message"]["tool_calls"]]
    streamed: dict[int, list[str]] = {}
    finish = None
    pieces = [TWO_CALLS[i:i + 3] for i in range(0, len(TWO_CALLS), 3)]
    for i, piece in enumerate(pieces):
        chunk = fmt.delta_chunk(0, piece, None, "stop" if i == len(pieces) - 1 else None)
        if chunk is None:
            continue
        choice = chunk["choices"][0]
        finish = choice["finish_reason"] or finish
        for d in choice["delta"].get("tool_calls", []):
            entry = streamed.setdefault(d["index"], ["", ""])
            entry[0] = d["function"].get("name", entry[0])
            entry[1] += d["function"]["arguments"]
    assert finish == "tool_calls"
    assert [tuple(streamed[i]) for i in sorted(streamed)] == calls
