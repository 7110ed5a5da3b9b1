"""The GPUs the planner knows, with the memory the driver reports for each.

Memory is the total `nvidia-smi` shows (MiB), which is a little below the marketing figure: an
"80 GB" H100 SXM reports 81559 MiB, an L4 23034 MiB. The planner takes a fraction of this
(gpu memory utilization) and subtracts a runtime reserve, both stated in its output.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int  # total device memory as the driver reports it
    description: str


def _gpu(name: str, memory_mib: int, description: str) -> GpuSpec:
    return GpuSpec(name=name, memory_bytes=memory_mib * MIB, description=description)


GPUS: dict[str, GpuSpec] = {
    gpu.name.lower(): gpu
    for gpu in (
        _gpu("T4", 15360, "NVIDIA T4 16 GB"),
        _gpu("L4", 23034, "NVIDIA L4 24 GB"),
        _gpu("A10", 23028, "NVIDIA A10 / A10G 24 GB"),
        _gpu("RTX4090", 24564, "NVIDIA GeForce RTX 4090 24 GB"),
        _gpu("L40S", 46068, "NVIDIA L40S 48 GB"),
        _gpu("A100-40GB", 40960, "NVIDIA A100 40 GB"),
        _gpu("A100-80GB", 81920, "NVIDIA A100 80 GB"),
        _gpu("H100", 81559, "NVIDIA H100 80 GB (SXM or PCIe)"),
        _gpu("H200", 143771, "NVIDIA H200 141 GB"),
        _gpu("B200", 183359, "NVIDIA B200 192 GB"),
    )
}

# Other spellings users type.
_ALIASES = {
    "a10g": "a10",
    "4090": "rtx4090",
    "a100": "a100-80gb",
    "a100-40": "a100-40gb",
    "a100-80": "a100-80gb",
    "h100-80gb": "h100",
    "h200-141gb": "h200",
    "b200-192gb": "b200",
}


def get_gpu(name: str) -> GpuSpec:
    """The GPU called ``name`` (case-insensitive); ValueError listing the known ones otherwise."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        known = ", ".join(gpu.name for gpu in GPUS.values())
        raise ValueError(f"unknown GPU {name!r}; known GPUs: {known}")
    return GPUS[key]
