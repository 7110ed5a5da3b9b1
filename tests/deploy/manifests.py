"""Render the kustomize overlays and walk the rendered objects (helpers for the deploy tests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu-dev", "gpu")

Obj = dict[str, Any]


def kubectl() -> str | None:
    """kubectl from PATH, else the one `make system-deps` puts next to the virtualenv's python."""
    return shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))


def render(overlay: str) -> list[Obj]:
    """``kubectl kustomize k8s/overlays/<overlay>``, parsed."""
    exe = kubectl()
    assert exe is not None
    out = subprocess.run(
        [exe, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"expected one {kind} named {name}*, found {len(matches)}"
    return matches[0]


def pod_spec(obj: Obj) -> Obj | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: Obj) -> Iterator[Obj]:
    spec = pod_spec(obj)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def settings(objs: list[Obj]) -> dict[str, str]:
    """The settings ConfigMap's data: the environment every busstop container gets."""
    return find(objs, "ConfigMap", "busstop-settings")["data"]


def known_env_names() -> set[str]:
    """Every environment variable busstop's code reads: each setting (prefix + field, or an alias),
    and the tensor-parallel size the node launcher hands to each worker."""
    from pydantic import AliasChoices

    from gateway.batch.config import BatchSettings
    from gateway.core.config import GatewaySettings
    from shared.telemetry.settings import LogSettings
    from worker.loader.settings import ModelSettings
    from worker.parallel.node import TP_ENV
    from worker.parallel.settings import ParallelSettings
    from worker.service.settings import WorkerSettings

    names = {TP_ENV}
    for cls in (GatewaySettings, BatchSettings, WorkerSettings, ParallelSettings, ModelSettings, LogSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            names.add(f"{prefix}{field_name}".upper())
            if isinstance(field.validation_alias, AliasChoices):
                names.update(str(c).upper() for c in field.validation_alias.choices)
    return names
