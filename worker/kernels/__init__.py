"""The fused CPU kernels of ``cpu_ops.cpp``, built on first use, and the switch that turns them off.

The build runs once per source, torch version and CPU (its flags are in the cache key, because
``-march=native`` code may not run on another CPU) and takes about 15 s; later processes load the
cached library. Without a C++ compiler, or with ``BUSSTOP_CPU_KERNELS=false``, ``cpu_ops()`` is
None and every caller takes its plain PyTorch path, which computes the same thing.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.engine.cpu_cores import cpu_flags

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_ops.cpp")
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]


class KernelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_", extra="ignore")

    cpu_kernels: bool = True
    kernel_cache_dir: Path = Path.home() / ".cache" / "busstop" / "kernels"


def _build_dir(cache_dir: Path) -> Path:
    cpu = " ".join(sorted(cpu_flags())) or platform.processor()
    parts = [_SOURCE.read_text(), torch.__version__, " ".join(_CFLAGS), cpu]
    return cache_dir / hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def cpu_ops() -> Any | None:
    """``torch.ops.busstop_cpu`` once built and loaded; None when switched off or it cannot build."""
    settings = KernelSettings()
    if not settings.cpu_kernels:
        return None
    from torch.utils import cpp_extension

    build_dir = _build_dir(settings.kernel_cache_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(name="busstop_cpu_ops", sources=[str(_SOURCE)], extra_cflags=_CFLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no headers: the PyTorch path still serves
        log.warning("fused CPU kernels unavailable, using plain PyTorch ops: %s", exc)
        return None
    return torch.ops.busstop_cpu


def cpu_ops_for(x: torch.Tensor) -> Any | None:
    """The kernels when ``x`` lives on the CPU, else None."""
    return cpu_ops() if x.device.type == "cpu" else None
