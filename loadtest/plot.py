"""Plot benchmark runs together: latency percentiles and throughput against load.

    python -m loadtest.plot results/busstop.json results/vllm.json -o compare.png \\
        [--labels busstop,vllm] [--merge compare.json]

Every input file holds ``{"runs": [...]}`` as written by ``loadtest.bench`` (or by an earlier
``--merge``); all runs are drawn on one figure, one colour per run, p50 solid and p99 dashed. A
Markdown table of all runs is printed, ready to paste into a note.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402

Run = dict[str, Any]

_LATENCY_PANELS = (("ttft_ms", "Time to first token (ms)"), ("tpot_ms", "Time per output token (ms)"))
_THROUGHPUT_PANELS = (("output_tok_per_s", "Output tokens/s"), ("req_per_s", "Requests/s"))
_X_LABELS = {"concurrency": "Concurrent clients", "rate": "Arrival rate (req/s, Poisson)"}


def load_runs(paths: Sequence[Path]) -> list[Run]:
    runs: list[Run] = []
    for path in paths:
        data = json.loads(path.read_text())
        found = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(found, list) or not all(isinstance(r, dict) and "levels" in r for r in found):
            raise ValueError(f"{path}: not a benchmark results file (expected {{'runs': [...]}})")
        runs.extend(found)
    return runs


def relabel(runs: list[Run], labels: Sequence[str]) -> list[Run]:
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    return [{**run, "label": label} for run, label in zip(runs, labels, strict=True)]


def plot_runs(runs: Sequence[Run], path: Path, title: str | None = None) -> None:
    """Write a 2x2 PNG: TTFT and TPOT percentiles, output tokens/s and requests/s, against load."""
    if not runs:
        raise ValueError("no runs to plot")
    modes = {run["mode"] for run in runs}
    if len(modes) != 1:
        raise ValueError(f"cannot share an x axis between modes {sorted(modes)}: plot them separately")
    mode = modes.pop()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        levels = [level for level in run["levels"] if level["num_ok"] > 0]
        loads = [level["load"] for level in levels]
        for ax, (metric, _) in zip(axes[0], _LATENCY_PANELS, strict=True):
            for q, style in (("p50", "-"), ("p99", "--")):
                values = [level[metric][q] if level[metric] else float("nan") for level in levels]
                ax.plot(loads, values, style, marker="o", color=color, label=f"{run['label']} {q}")
        for ax, (metric, _) in zip(axes[1], _THROUGHPUT_PANELS, strict=True):
            ax.plot(
                loads, [level[metric] for level in levels], "-", marker="o", color=color, label=run["label"]
            )
    ticks = sorted({level["load"] for run in runs for level in run["levels"]})
    for row, panels in zip(axes, (_LATENCY_PANELS, _THROUGHPUT_PANELS), strict=True):
        for ax, (_, ylabel) in zip(row, panels, strict=True):
            ax.set_xlabel(_X_LABELS[mode])
            ax.set_ylabel(ylabel)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(title or " vs ".join(str(run["label"]) for run in runs))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(runs: Sequence[Run]) -> str:
    """One row per run and load level: the numbers a comparison note quotes."""

    def q(level: dict[str, Any], metric: str, key: str) -> str:
        return f"{level[metric][key]:.1f}" if level[metric] else "-"

    lines = [
        "| run | load | ok/err | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for level in run["levels"]:
            lines.append(
                f"| {run['label']} | {level['load']:g} | {level['num_ok']}/{level['num_errors']} "
                f"| {level['req_per_s']:.2f} | {level['output_tok_per_s']:.1f} "
                f"| {q(level, 'ttft_ms', 'p50')} | {q(level, 'ttft_ms', 'p99')} "
                f"| {q(level, 'tpot_ms', 'p50')} | {q(level, 'tpot_ms', 'p99')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="results JSON files from loadtest.bench")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG path")
    parser.add_argument("--labels", help="comma-separated labels, one per run, replacing the stored ones")
    parser.add_argument("--merge", type=Path, help="also write all runs into this one JSON file")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.inputs)
        if args.labels:
            runs = relabel(runs, args.labels.split(","))
        plot_runs(runs, args.output, args.title)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if args.merge:
        args.merge.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(markdown_table(runs))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
