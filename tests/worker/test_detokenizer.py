"""Streaming detokenization: deltas concatenate to the full decode; stop strings cut exactly."""

from __future__ import annotations

import os
import random

import pytest
from tokenizers import SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from worker.loader.default_model import default_gguf_path
from worker.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "Crème brûlée à Zürich, naïve café — “quotes” and ½ ≠ ∞.",
    "Emoji: 😀🎉 👩‍👩‍👧 🇫🇷 and 🧑🏽‍🚀 in a row😀😀.",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Mixed: Привет, мир! Γειά σου κόσμε! مرحبا 👋 — done.\n\n  indented\ttab",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    path = default_gguf_path()
    return Tokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> Tokenizer:
    """A tiny SentencePiece-style BPE (Llama 2's family): leading-space handling differs from byte BPE."""
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(TEXTS * 3 + ["the cat sat on the mat", "hello world"], vocab_size=300)
    return Tokenizer(PreTrainedTokenizerFast(tokenizer_object=sp))


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk_sizes: list[int] | None = None) -> list[str]:
    deltas, i = [], 0
    for size in chunk_sizes or [1] * len(ids):
        deltas.append(detok.push(ids[i : i + size]))
        i += size
    assert i >= len(ids)
    deltas.append(detok.flush())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_full_decode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    deltas = stream(IncrementalDetokenizer(tokenizer), ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)  # no half characters on the wire
    assert any(d == "" for d in deltas) or text.isascii()  # multi-byte chars spanned tokens


@pytest.mark.parametrize("text", TEXTS)
def test_uneven_chunks_and_prompt_context(tokenizer: Tokenizer, text: str) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say it."}])
    ids = tokenizer.encode(text)
    rng = random.Random(len(text))
    chunks = []
    while sum(chunks) < len(ids):
        chunks.append(rng.randint(1, 4))
    deltas = stream(IncrementalDetokenizer(tokenizer, prompt_ids=prompt), ids, chunks)
    assert "".join(deltas) == text


def test_incomplete_character_at_the_end_flushes_as_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀")[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detok.push([i]) for i in ids)
    assert "\ufffd" not in streamed
    assert streamed + detok.flush() == tokenizer.decode(ids)


def test_special_tokens_are_skipped(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi there") + [tokenizer.eos_token_id]
    assert "".join(stream(IncrementalDetokenizer(tokenizer), ids)) == "Hi there"


@pytest.mark.parametrize("text", ["the cat sat on the mat", "hello world, the cat"])
def test_sentencepiece_leading_spaces(sentencepiece_tokenizer: Tokenizer, text: str) -> None:
    tok = sentencepiece_tokenizer
    ids = tok.encode(text)
    assert len(ids) > 3
    assert "".join(stream(IncrementalDetokenizer(tok), ids)) == tok.decode(ids) == text
    # After a prompt, the first word keeps its space, as in the decode of prompt + output.
    prompt = tok.encode("hello world")
    with_prompt = "".join(stream(IncrementalDetokenizer(tok, prompt_ids=prompt), ids))
    assert with_prompt == tok.decode(prompt + ids)[len(tok.decode(prompt)) :]


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("The capital of France is Paris. It is big.", ["Paris"]),
        ("The capital of France is Paris. It is big.", [". It"]),  # across tokens
        ("The capital of France is Paris. It is big.", ["apit"]),  # inside one token
        ("東京は日本の首都です。", ["日本"]),
        ("Emoji 😀🎉 party", ["🎉"]),  # a stop string inside a multi-token character run
        ("a b c d e", ["d", "b"]),  # the earliest match wins
        ("aaab", ["aab"]),  # the stop starts inside held-back text
    ],
)
def test_stop_strings_cut_exactly(tokenizer: Tokenizer, text: str, stop: list[str]) -> None:
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, stop=stop)
    deltas = stream(detok, ids)
    cut = min(text.index(s) for s in stop)
    assert "".join(deltas) == text[:cut]
    assert detok.finished_by_stop and detok.stop_str == text[cut : cut + len(detok.stop_str)]
    assert detok.push(tokenizer.encode(" more")) == ""


def test_partial_stop_is_held_until_it_fails_or_the_end(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, stop=["Paris!"])
    emitted = ""
    for token_id in tokenizer.encode("Hello Paris"):
        emitted += detok.push([token_id])
    assert emitted == "Hello "  # "Paris" may still become "Paris!"
    emitted += detok.push(tokenizer.encode("."))
    assert emitted == "Hello Paris."
    detok = IncrementalDetokenizer(tokenizer, stop=["Paris!"])
    assert detok.push(tokenizer.encode("to Par")) == "to "
    assert detok.flush() == "Par"  # the sequence ended: the held text was never a stop string
    assert not detok.finished_by_stop


def test_chat_template_from_gguf_metadata(tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert tokenizer.render_chat(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages)
    assert ids[0] == 1 and ids[-4:] == tokenizer.encode("<|im_start|>assistant\n")
    assert tokenizer.decode(ids, skip_special_tokens=False) == tokenizer.render_chat(messages)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("stop", [[], ["首都", "done"]])
def test_a_stream_resumed_after_any_token_continues_byte_exact(
    tokenizer: Tokenizer, text: str, stop: list[str]
) -> None:
    """A worker dies after any token, mid-character included; the next one resumes from the tokens and
    the text the client got, and the client's text is the same as from one uninterrupted stream."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say it."}])
    ids = tokenizer.encode(text)
    whole = IncrementalDetokenizer(tokenizer, prompt_ids=prompt, stop=stop)
    expected = "".join(stream(whole, ids))
    for cut in range(1, len(ids)):
        first = IncrementalDetokenizer(tokenizer, prompt_ids=prompt, stop=stop)
        sent = "".join(first.push([i]) for i in ids[:cut])
        if first.finished_by_stop:
            break
        second = IncrementalDetokenizer(tokenizer, prompt_ids=prompt, stop=stop)
        rest = second.resume(ids[:cut], sent) + "".join(stream(second, ids[cut:]))
        assert sent + rest == expected, cut


def test_a_cut_inside_a_character_is_where_pushing_all_at_once_repeats_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀 yes")
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    sent = "".join(IncrementalDetokenizer(tokenizer).push([i]) for i in ids[:cut])
    naive = IncrementalDetokenizer(tokenizer)
    naive.push(ids[:cut])
    assert sent + "".join(stream(naive, ids[cut:])) != "ok 😀 yes"  # what a resume used to send
    resumed = IncrementalDetokenizer(tokenizer)
    assert sent + resumed.resume(ids[:cut], sent) + "".join(stream(resumed, ids[cut:])) == "ok 😀 yes"
