"""The GGUF tokenizer cache: a cached tokenizer is the converted one, and a bad entry is rebuilt."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from worker.loader.default_model import default_gguf_path
from worker.loader.tokenizer_cache import cache_entry, gguf_tokenizer
from worker.tokenizer import Tokenizer

TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "ünïcödé, 日本語, emoji 😀👍🏽 and a split surrogate-free string",
    "def f(x):\n    return {'a': [1, 2.5e-3]}  # code",
    "<|im_start|>user\nspecial tokens as text<|im_end|>",
]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 😀"}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workdir")


@pytest.fixture(scope="module")
def converted(workdir: Path) -> Tokenizer:
    """Straight from the GGUF, no cache (converted in an empty working directory)."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return gguf_tokenizer(default_gguf_path(), "")
    finally:
        os.chdir(cwd)


def assert_same(a: Tokenizer, b: Tokenizer) -> None:
    assert a.hf.get_vocab() == b.hf.get_vocab()
    assert a.eos_token_id == b.eos_token_id and a.hf.bos_token_id == b.hf.bos_token_id
    assert a.vocab_size == b.vocab_size
    assert a.hf.all_special_tokens == b.hf.all_special_tokens
    for text in TEXTS:
        ids = a.encode(text)
        assert ids == b.encode(text), text
        assert a.hf.decode(ids) == b.hf.decode(ids)
    assert a.render_chat(MESSAGES) == b.render_chat(MESSAGES)


def test_the_second_load_comes_from_the_cache_and_is_the_same_tokenizer(
    converted: Tokenizer, tmp_path: Path
) -> None:
    path = default_gguf_path()
    first = gguf_tokenizer(path, str(tmp_path))
    entry = cache_entry(path, str(tmp_path))
    assert (entry / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no staging left behind
    second = gguf_tokenizer(path, str(tmp_path))
    assert Path(second.hf.name_or_path) == entry
    assert_same(converted, first)
    assert_same(converted, second)


def test_an_unreadable_entry_is_converted_again_and_replaced(converted: Tokenizer, tmp_path: Path) -> None:
    path = default_gguf_path()
    entry = cache_entry(path, str(tmp_path))
    entry.mkdir(parents=True)
    (entry / "tokenizer_config.json").write_text("{ cut short")
    tokenizer = gguf_tokenizer(path, str(tmp_path))
    assert_same(converted, tokenizer)
    assert (entry / "tokenizer.json").is_file()
    assert_same(converted, Tokenizer.from_pretrained(entry))


def test_an_empty_cache_dir_keeps_nothing(converted: Tokenizer, workdir: Path) -> None:
    assert list(workdir.iterdir()) == []  # "" is not the working directory


def test_a_changed_file_gets_a_new_entry(tmp_path: Path) -> None:
    copy = tmp_path / "model.gguf"
    shutil.copyfile(default_gguf_path(), copy)
    before = cache_entry(str(copy), str(tmp_path / "cache"))
    os.utime(copy, ns=(0, os.stat(copy).st_mtime_ns + 1_000_000))
    assert cache_entry(str(copy), str(tmp_path / "cache")) != before
