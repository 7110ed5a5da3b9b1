"""``python -m worker.generate``: streams the default model's answer; bad input is one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from worker.generate import main
from worker.loader.default_model import default_gguf_path


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """CI machines are small and shared: several spinning intra-op threads slow a 135M model down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_answers_with_the_chat_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--prompt", "What is the capital of France?", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert "smollm2: loaded in" in err and "prompt tokens" in err


def test_stop_string_ends_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--prompt", "What is the capital of France?", "--max-tokens", "16", "--stop", "Paris"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == "The capital of France is"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.generate", "--prompt", "hi", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_path_is_one_line() -> None:
    result = run_cli("--model", "/no/such/model.gguf")
    assert result.returncode == 1
    assert result.stderr == "error: /no/such/model.gguf: no such file or directory\n"
    assert result.stdout == ""


def test_truncated_gguf_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with open(default_gguf_path(), "rb") as f:
        path.write_bytes(f.read(os.path.getsize(default_gguf_path()) // 3))
    result = run_cli("--model", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: truncated or corrupt GGUF file")
    assert "Traceback" not in result.stderr


def test_unsupported_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert main(["--prompt", "hi", "--model", str(tmp_path)]) == 1
    _, err = capsys.readouterr()
    assert err == (
        f"error: {tmp_path / 'config.json'}: unsupported architectures ['BertModel']; "
        "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM\n"
    )


def test_bad_settings_are_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUSSTOP_MODEL_MAX_MODEL_LEN", "-5")
    assert main(["--prompt", "hi"]) == 2
    _, err = capsys.readouterr()
    assert (
        err == "error: invalid model settings: BUSSTOP_MODEL_MAX_MODEL_LEN: Value error, must be >= 0 "
        "(0 = the model's context length)\n"
    )
