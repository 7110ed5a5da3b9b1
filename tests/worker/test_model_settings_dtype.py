"""``dtype: auto``: bfloat16 where the CPU computes in it natively (read from its cpuinfo flags), float32
elsewhere; an explicit dtype is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.loader import settings as model_settings
from worker.loader.settings import ModelSettings, has_native_bf16

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(SAPPHIRE_RAPIDS, True), (EPYC_ZEN4, True), (SKYLAKE, False), (GRAVITON3, True)]
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert has_native_bf16(path) is native


def test_without_cpuinfo_there_is_no_native_bf16(tmp_path: Path) -> None:
    assert has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(model_settings, "has_native_bf16", lambda: native)
    assert ModelSettings(device="cpu", dtype="auto").torch_dtype() == dtype
    assert ModelSettings(device="cpu", dtype="float32").torch_dtype() == torch.float32
