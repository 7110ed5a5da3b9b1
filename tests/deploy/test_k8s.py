"""The Kubernetes manifests: both overlays render, validate offline, and agree with the code.

kubectl is required (the CI image installs it; see the README's Deploy section); only when it is
truly absent are these tests skipped. Built-in kinds are validated by kubernetes-validate against the
Kubernetes 1.30 OpenAPI schemas in strict mode (unknown fields fail); KEDA's kinds, which it does not
know, against the schemas in ``keda_schema.py``.
"""

from __future__ import annotations

import functools

import jsonschema
import kubernetes_validate
import pytest

from gateway.core.config import GatewaySettings
from shared.keys import WORKER_GROUP, request_stream
from shared.messages import TrafficClass
from tests.deploy.keda_schema import SCHEMAS
from tests.deploy.manifests import (
    OVERLAYS,
    Obj,
    containers,
    find,
    known_env_names,
    kubectl,
    pod_spec,
    render,
    settings,
)

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed")
K8S_VERSION = "1.30"


@functools.cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(render(overlay))


@pytest.fixture(params=OVERLAYS, ids=[f"{o}-overlay" for o in OVERLAYS])
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return list(rendered(request.param))


def test_every_object_validates_offline(objs: list[Obj]) -> None:
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {str(e).splitlines()[0]}")


def test_every_container_has_requests_and_limits(objs: list[Obj]) -> None:
    for obj in objs:
        for c in containers(obj):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), (
                    f"{obj['metadata']['name']}/{c['name']} {kind}"
                )
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def test_settings_are_real_settings_and_ports_match_the_code(objs: list[Obj]) -> None:
    env = settings(objs)
    unknown = {k for k in env if k.startswith("BUSSTOP_")} - known_env_names() - {"BUSSTOP_REDIS_ADDRESS"}
    assert not unknown, f"settings no busstop code reads: {sorted(unknown)}"

    gateway_port = int(env.get("BUSSTOP_PORT", GatewaySettings.model_fields["port"].default))
    (gw,) = containers(find(objs, "Deployment", "busstop-gateway"))
    assert [p["containerPort"] for p in gw["ports"]] == [gateway_port]
    assert env["BUSSTOP_HOST"] == "0.0.0.0"  # the code's default, 127.0.0.1, is unreachable in a pod

    metrics_port = int(env["BUSSTOP_WORKER_METRICS_PORT"])
    worker = find(objs, "Deployment", "busstop-worker")
    (wk,) = containers(worker)
    assert [p["containerPort"] for p in wk["ports"]] == [metrics_port]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)


def test_worker_drains_gracefully_and_is_probed(objs: list[Obj]) -> None:
    env = settings(objs)
    worker = find(objs, "Deployment", "busstop-worker")
    spec = pod_spec(worker)
    assert spec is not None
    (wk,) = containers(worker)
    assert wk["readinessProbe"] and wk["startupProbe"]
    assert "kill -TERM 1" in " ".join(wk["lifecycle"]["preStop"]["exec"]["command"])
    # The drain must end before Kubernetes' SIGKILL.
    assert float(env["BUSSTOP_WORKER_GRACE_PERIOD_S"]) + 5 <= spec["terminationGracePeriodSeconds"]
    assert find(objs, "PodDisruptionBudget", "busstop-worker")["spec"]["maxUnavailable"] == 1


def test_gateway_scales_and_keeps_serving(objs: list[Obj]) -> None:
    hpa = find(objs, "HorizontalPodAutoscaler", "busstop-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "busstop-gateway",
    }
    assert find(objs, "PodDisruptionBudget", "busstop-gateway")["spec"]["minAvailable"] == 1
    (gw,) = containers(find(objs, "Deployment", "busstop-gateway"))
    assert gw["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/health"
    # Every replica sees the same Files API directory: a shared claim mounted where the setting points.
    files_dir = settings(objs)["BUSSTOP_FILES_DIR"]
    (mount,) = [m for m in gw["volumeMounts"] if m["mountPath"] == files_dir]
    spec = pod_spec(find(objs, "Deployment", "busstop-gateway"))
    assert spec is not None
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    find(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_keda_scales_workers_on_every_class_stream(objs: list[Obj]) -> None:
    env = settings(objs)
    scaled = find(objs, "ScaledObject", "busstop-worker")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == find(objs, "Deployment", "busstop-worker")["metadata"]["name"]
    )
    namespace = scaled["metadata"]["namespace"]
    redis_service = find(objs, "Service", "busstop-redis")
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["stream"] for t in triggers} == {
        request_stream(env["BUSSTOP_MODEL_NAME"], c) for c in TrafficClass
    }
    for t in triggers:
        assert t["type"] == "redis-streams"
        assert t["metadata"]["consumerGroup"] == WORKER_GROUP
        assert int(t["metadata"]["lagCount"]) >= 1
        assert (
            t["metadata"]["address"]
            == f"{redis_service['metadata']['name']}.{namespace}.svc.cluster.local:6379"
        )
        auth = find(objs, "TriggerAuthentication", t["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        find(objs, "Secret", ref["name"])  # the Secret it names exists under that exact name
    assert env["BUSSTOP_MODELS"] == env["BUSSTOP_MODEL_NAME"]


def test_redis_is_persistent_and_appendonly(objs: list[Obj]) -> None:
    redis = find(objs, "StatefulSet", "busstop-redis")
    (c,) = containers(redis)
    assert "--appendonly yes" in " ".join(c["args"]) and "noeviction" in " ".join(c["args"])
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"mountPath": "/data", "name": "data"} in c["volumeMounts"]


def test_only_the_gateway_is_reachable_from_outside(objs: list[Obj]) -> None:
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    open_to_all = [p for p in policies for rule in p["spec"].get("ingress", []) if "from" not in rule]
    assert [p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in open_to_all] == [
        "gateway"
    ]
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]


def test_gpu_workers_request_one_gpu_per_tensor_parallel_rank() -> None:
    objs = list(rendered("gpu"))
    env = settings(objs)
    tp_size = int(env["BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE"])
    (wk,) = containers(find(objs, "Deployment", "busstop-worker"))
    assert wk["resources"]["requests"]["nvidia.com/gpu"] == tp_size
    assert wk["resources"]["limits"]["nvidia.com/gpu"] == tp_size
    assert wk["image"].startswith("busstop-worker-cuda:")
    assert env["BUSSTOP_MODEL_DEVICE"] == "cuda"
    mounts = {m["mountPath"] for m in wk["volumeMounts"]}
    assert {"/models", "/dev/shm"} <= mounts and env["BUSSTOP_MODEL_PATH"].startswith("/models/")


def test_cpu_dev_workers_need_no_gpu() -> None:
    objs = list(rendered("cpu-dev"))
    for obj in objs:
        for c in containers(obj):
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert settings(objs)["BUSSTOP_MODEL_PATH"] == "default"
