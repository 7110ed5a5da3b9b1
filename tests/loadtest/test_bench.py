"""The benchmark CLI against the running stack: a few seconds of load, valid JSON and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from busstop.stack import LocalStack
from tests.stack import MODEL

REPO = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env_args = ["--api-key", api_key] if api_key else []
    return subprocess.run(
        [sys.executable, "-m", module, *args, *env_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_closed_and_open_loop_runs_write_json_and_a_plot(stack: LocalStack, tmp_path: Path) -> None:
    common = [
        "--url",
        stack.url,
        "--model",
        MODEL,
        "--prompt-len",
        "uniform:8:32",
        "--output-len",
        "fixed:12",
    ]
    closed = tmp_path / "closed.json"
    done = run_module(
        "loadtest.bench",
        *common,
        "--concurrency",
        "1,4",
        "--duration",
        "3",
        "--label",
        "busstop",
        "-o",
        str(closed),
        api_key=stack.api_key,
    )
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(closed.read_text())["runs"]
    assert run["label"] == "busstop"
    assert run["mode"] == "concurrency"
    assert [level["load"] for level in run["levels"]] == [1, 4]
    for level in run["levels"]:
        assert level["num_errors"] == 0, level["errors"]
        assert level["num_ok"] >= 1
        assert level["mean_output_tokens"] == 12  # ignore_eos: exactly max_tokens
        assert level["output_tok_per_s"] > 0
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p99"]
        assert level["tpot_ms"]["p50"] > 0
    assert_png(closed.with_suffix(".png"))

    poisson = tmp_path / "poisson.json"
    done = run_module(
        "loadtest.bench",
        *common,
        "--rate",
        "2",
        "--duration",
        "2",
        "-o",
        str(poisson),
        "--no-plot",
        api_key=stack.api_key,
    )
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(poisson.read_text())["runs"]
    assert run["mode"] == "rate"
    assert run["levels"][0]["num_errors"] == 0
    assert not poisson.with_suffix(".png").exists()

    compare = tmp_path / "compare.png"
    merged = tmp_path / "merged.json"
    done = run_module(
        "loadtest.plot",
        str(closed),
        str(closed),
        "-o",
        str(compare),
        "--labels",
        "a,b",
        "--merge",
        str(merged),
    )
    assert done.returncode == 0, done.stderr
    assert [r["label"] for r in json.loads(merged.read_text())["runs"]] == ["a", "b"]
    assert "| a | 4 |" in done.stdout
    assert_png(compare)


def test_a_wrong_key_is_reported_not_hidden(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "bad.json"
    done = run_module(
        "loadtest.bench",
        "--url",
        stack.url,
        "--model",
        MODEL,
        "--concurrency",
        "1",
        "--num-requests",
        "1",
        "--warmup",
        "0",
        "-o",
        str(out),
        "--no-plot",
        api_key="not-a-key",
    )
    assert done.returncode == 1
    (level,) = json.loads(out.read_text())["runs"][0]["levels"]
    assert level["num_errors"] == 1
    assert level["errors"][0].startswith("HTTP 401")
