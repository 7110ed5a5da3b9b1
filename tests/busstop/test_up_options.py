"""`busstop up`'s keys and options, without starting anything."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from busstop.banner import banner
from busstop.stack import LocalStack, add_arguments, worker_env
from gateway.core.auth import KeyClass, KeyStore, load_keys_file


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_a_keys_file_the_stack_serves_a_public_and_an_internal_dev_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BUSSTOP_KEYS_FILE", raising=False)
    stack = LocalStack(port=0)
    try:
        store = KeyStore(load_keys_file(Path(str(stack.keys_file))).keys)
        public, internal = store.authenticate(stack.api_key), store.authenticate(stack.internal_key)
        assert public is not None and public.key_class is KeyClass.PUBLIC
        assert internal is not None and internal.key_class is KeyClass.INTERNAL
        assert stack.child_env()["BUSSTOP_KEYS_FILE"] == stack.keys_file
        text = banner(stack.url, "redis://x", "smollm2", 2, stack.api_key, stack.internal_key, "")
        assert stack.api_key in text and stack.internal_key in text and "priority" in text
    finally:
        stack.stop()
    assert not Path(str(stack.keys_file)).exists()


def test_with_a_keys_file_the_stack_serves_exactly_it_and_prints_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entries = [{"sha256": "ab" * 32, "tenant": "t1"}, {"sha256": "cd" * 32, "tenant": "t2"},
               {"sha256": "ef" * 32, "tenant": "t3", "traffic_class": "internal"}]  # fmt: skip
    path.write_text(json.dumps({"keys": entries}))
    stack = LocalStack(port=0, env={"BUSSTOP_KEYS_FILE": str(path)})
    assert (stack.api_key, stack.internal_key, stack.keys_file) == ("", "", str(path))
    assert "BUSSTOP_DEV_API_KEY" not in stack.child_env()
    text = banner(stack.url, "redis://x", "m", 1, "", "", str(path))
    assert f"{path} (2 public, 1 internal)" in text and "sk-" not in text


def test_options_map_onto_the_workers_settings(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"")
    env = worker_env(options("--model", str(model), "--dtype", "bfloat16", "--kv-cache", "2",
                             "--tensor-parallel-size", "2"))  # fmt: skip
    assert env["BUSSTOP_MODEL_PATH"] == str(model) and env["BUSSTOP_MODEL_NAME"] == "tiny"
    assert env["BUSSTOP_MODEL_DTYPE"] == "bfloat16"
    assert env["BUSSTOP_MODEL_KV_CACHE_BYTES"] == str(2 * 2**30)
    assert env["BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE"] == "2"


def test_options_default_to_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSSTOP_WORKERS", "3")
    monkeypatch.setenv("BUSSTOP_MODEL_KV_CACHE_BYTES", str(2**30))
    args = options()
    assert (args.workers, args.kv_cache) == (3, 1.0)


def test_a_model_that_cannot_be_loaded_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "busstop.cli", "up", "--model", str(tmp_path / "missing.gguf")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "missing.gguf" in done.stderr
    assert "busstop is up" not in done.stdout
