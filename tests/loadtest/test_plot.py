"""Plots and merges of result files, from runs summarized the way the benchmark does it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loadtest import plot
from loadtest.client import RequestResult
from loadtest.stats import summarize_level


def make_run(label: str, mode: str, ttft_s: float) -> dict[str, Any]:
    levels = []
    for load in (1, 4, 16):
        results = [
            RequestResult(
                ok=True, ttft_s=ttft_s * load, e2e_s=ttft_s * load + 1, itl_s=[0.1] * 9, num_output_tokens=10
            )
            for _ in range(3)
        ]
        levels.append(summarize_level(load, results, duration_s=3.0))
    return {"label": label, "mode": mode, "model": "m", "levels": levels}


def write(path: Path, *runs: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"runs": list(runs)}))
    return path


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "plot.png"
    plot.plot_runs([make_run("a", "concurrency", 0.1), make_run("b", "concurrency", 0.2)], out)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (1100, 750)


def test_cli_merges_and_relabels_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.json", make_run("smollm2", "rate", 0.1))
    b = write(tmp_path / "b.json", make_run("smollm2", "rate", 0.3))
    out, merged = tmp_path / "cmp.png", tmp_path / "cmp.json"
    assert (
        plot.main([str(a), str(b), "-o", str(out), "--labels", "busstop,vllm", "--merge", str(merged)]) == 0
    )
    runs = json.loads(merged.read_text())["runs"]
    assert [run["label"] for run in runs] == ["busstop", "vllm"]
    assert runs[1]["levels"][0]["ttft_ms"]["p50"] == 300.0
    assert plot.load_runs([merged]) == runs
    table = capsys.readouterr().out
    assert "| busstop | 16 | 3/0 |" in table
    assert "| vllm | 1 | 3/0 | 1.00 | 10.0 | 300.0 |" in table
    assert out.read_bytes().startswith(b"\x89PNG")


def test_runs_of_different_modes_are_not_drawn_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modes"):
        plot.plot_runs([make_run("a", "rate", 0.1), make_run("b", "concurrency", 0.1)], tmp_path / "x.png")


def test_cli_rejects_files_that_are_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"levels": []}))
    with pytest.raises(SystemExit):
        plot.main([str(bad), "-o", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot.relabel([make_run("a", "rate", 0.1)], ["x", "y"])
