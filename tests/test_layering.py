"""The package map holds: the wire contract (shared/) imports nothing else of busstop; the gateway and
the worker import the contract and never each other; only the command line (busstop/) may import
both. And no source file grows past MAX_LINES."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "gateway", "worker", "busstop", "loadtest")
MAX_LINES = 400

# package -> the busstop packages it must never import
FORBIDDEN = {
    "shared": {"gateway", "worker", "busstop", "loadtest"},
    "gateway": {"worker", "busstop", "loadtest"},
    "worker": {"gateway", "busstop", "loadtest"},
    "loadtest": {"shared", "gateway", "worker", "busstop"},  # an HTTP client, like any user
    "busstop": set(),
}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def parse(path: Path) -> ast.Module:
    """``ast.parse`` with the garbage collector held off: on CPython 3.11 a finalizer that runs inside
    it (an asyncio task of an earlier test logging its exception: traceback formatting parses source
    too) breaks the parser's recursion count ("AST constructor recursion depth mismatch")."""
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()


def imported_packages(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_what_it_must_not(package: str) -> None:
    assert sources(package), f"{package}/ has no sources"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sources(package)
    }
    assert {p: bad for p, bad in offenders.items() if bad} == {}


def test_no_source_file_passes_the_line_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in sources(package)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checker_sees_nested_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    from worker.engine import engine\n    import gateway.main\n"
    )
    assert imported_packages(module) == {"os", "worker", "gateway"}
