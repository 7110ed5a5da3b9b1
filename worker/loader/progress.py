"""Loading progress on a terminal: a percentage while weights are read and converted, then the time.

Only when stderr is a terminal (``busstop up``, ``python -m worker`` by hand); logs and pipes get
nothing extra.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def with_progress(items: Iterable[T], total: int, what: str, out: TextIO | None = None) -> Iterator[T]:
    """Yield ``items``, redrawing ``what: P% (i/total)`` on ``out`` (stderr if a terminal)."""
    stream = out if out is not None else (sys.stderr if sys.stderr.isatty() else None)
    start = time.perf_counter()
    last_shown = -1
    for i, item in enumerate(items, 1):
        yield item
        percent = 100 * i // max(total, 1)
        if stream is not None and percent != last_shown:
            last_shown = percent
            stream.write(f"\r{what}: {percent:3d}% ({i}/{total} tensors)")
            stream.flush()
    if stream is not None:
        stream.write(f"\r{what}: done in {time.perf_counter() - start:.1f}s{' ' * 20}\n")
        stream.flush()
