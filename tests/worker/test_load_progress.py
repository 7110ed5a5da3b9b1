"""Loading progress: a percentage redrawn in place, then the time taken; nothing when not a terminal."""

from __future__ import annotations

import io

from worker.loader.progress import with_progress


def test_progress_counts_to_100_percent_and_says_how_long() -> None:
    out = io.StringIO()
    assert list(with_progress(range(4), 4, "loading m.gguf", out)) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "\rloading m.gguf:  25% (1/4 tensors)" in text and "100% (4/4 tensors)" in text
    assert text.rstrip().split("\r")[-1].startswith("loading m.gguf: done in ")


def test_no_terminal_no_output(capsys) -> None:  # type: ignore[no-untyped-def]
    assert list(with_progress(iter("ab"), 2, "loading")) == ["a", "b"]
    assert capsys.readouterr().err == ""
