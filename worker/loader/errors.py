"""The one error a model load raises: which file, and what is wrong with it."""

from __future__ import annotations

import os


class ModelLoadError(Exception):
    """A model that cannot be loaded. ``str()`` is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
