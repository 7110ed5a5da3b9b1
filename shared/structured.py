"""Structured output's part of the wire contract: the grammar dialect, its limits, the tool-call tags.

The gateway turns ``response_format``, ``guided_*`` and ``tools`` into one grammar in llguidance's
Lark dialect (JSON schemas embedded as ``%json{...}``) and checks it against these limits; the worker
compiles exactly that text against its tokenizer. Both sides use the limits here, so a grammar the
gateway accepted is one the worker can run, and no grammar can make a step slow: a mask computation
that would pass the per-token budget fails that request alone.
"""

from __future__ import annotations

import re

import llguidance

# The largest grammar text a request may carry (a JSON schema counts its JSON).
MAX_GRAMMAR_BYTES = 64 * 1024
# llguidance's own budgets. ~14k lexer fuel and ~20k Earley items per millisecond: one constrained
# row costs at most a few ms of mask computation per token, whatever the grammar.
STEP_LEXER_FUEL = 50_000
STEP_MAX_ITEMS = 20_000
MAX_GRAMMAR_SYMBOLS = 100_000

# Tool calls travel in the model's text in the Hermes format (Qwen2's and SmolLM's templates):
# <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(
        step_lexer_fuel=STEP_LEXER_FUEL, step_max_items=STEP_MAX_ITEMS, max_grammar_size=MAX_GRAMMAR_SYMBOLS
    )


def grammar_error(grammar: str, tokenizer: llguidance.LLTokenizer | None = None) -> str | None:
    """Why ``grammar`` cannot be used, or None when it can."""
    if len(grammar.encode("utf-8")) > MAX_GRAMMAR_BYTES:
        return f"the grammar or schema is over {MAX_GRAMMAR_BYTES // 1024} KiB"
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, tokenizer, limits=parser_limits()
    )
    if not is_error:
        return None
    lines = []
    for line in messages[0].strip().splitlines():
        if re.match(r"\s*\d+ \| ", line):  # llguidance quotes the grammar from here on
            break
        lines.append(line.strip())
    return re.sub(r"^at \d+\(\d+\): ", "", " ".join(lines))
