"""API keys: the keys file, constant-time lookup, the key maker, and 401s from the real app."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gateway.core.auth import KeyClass, KeyEntry, KeyStore, Limits, build_key_store, hash_key, load_keys_file
from gateway.keygen import main as keys_main
from gateway.main import create_app
from tests.gateway.conftest import make_settings, running


def test_a_key_maps_to_its_tenant_class_and_limits() -> None:
    store = KeyStore(
        [
            KeyEntry(sha256=hash_key("k-public"), tenant="web"),
            KeyEntry(
                sha256=hash_key("k-internal"),
                tenant="evals",
                traffic_class=KeyClass.INTERNAL,
                limits=Limits(rpm=5),
            ),
        ]
    )
    web, evals = store.authenticate("k-public"), store.authenticate("k-internal")
    assert web is not None and (web.tenant, web.key_class) == ("web", KeyClass.PUBLIC)
    assert evals is not None and (evals.tenant, evals.key_class, evals.limits.rpm) == (
        "evals",
        KeyClass.INTERNAL,
        5,
    )
    assert evals.key_id == hash_key("k-internal")[:8]
    assert store.authenticate("k-publi") is None and store.authenticate("") is None


def test_keys_files_in_yaml_and_json(tmp_path: Path) -> None:
    digest = hash_key("secret")
    yaml_file = tmp_path / "keys.yaml"
    yaml_file.write_text(
        f"keys:\n  - sha256: {digest}\n    tenant: a\n    traffic_class: internal\n    limits: {{tpm: 100}}\n"
    )
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps({"keys": [{"sha256": digest.upper(), "tenant": "b"}]}))
    from_yaml = KeyStore(load_keys_file(yaml_file).keys).authenticate("secret")
    from_json = KeyStore(load_keys_file(json_file).keys).authenticate("secret")
    assert from_yaml is not None and (from_yaml.tenant, from_yaml.limits.tpm) == ("a", 100)
    assert from_json is not None and from_json.key_class is KeyClass.PUBLIC


@pytest.mark.parametrize(
    "text",
    [
        "keys: [{sha256: not-a-hash, tenant: a}]",  # a key where its hash belongs
        "keys: [{sha256: " + "a" * 64 + ", tenant: a, traffic_class: vip}]",
        "keys: [{sha256: " + "a" * 64 + ", tenant: a, limits: {rpm: 0}}]",
        "keys: [{sha256: " + "a" * 64 + "}]",
        "keys: [",
    ],
)
def test_a_bad_keys_file_is_a_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="invalid keys file"):
        load_keys_file(path)


def test_without_keys_the_gateway_refuses_to_start(redis_url: str) -> None:
    with pytest.raises(ValueError, match="BUSSTOP_KEYS_FILE"):
        build_key_store(make_settings(redis_url, dev_api_key=None))


def test_the_key_maker_prints_a_key_and_its_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_main(["new", "--tenant", "team a", "--class", "internal", "--rpm", "60"]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[0].removeprefix("key: ")
    path = tmp_path / "keys.yaml"
    path.write_text(out.split("\n", 1)[1])
    assert key not in path.read_text()  # the file holds only the hash
    principal = KeyStore(load_keys_file(path).keys).authenticate(key)
    assert principal is not None
    assert (principal.tenant, principal.key_class, principal.limits.rpm) == ("team a", KeyClass.INTERNAL, 60)


async def test_missing_or_wrong_keys_are_401(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"sha256": hash_key("good"), "tenant": "t"}]}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=path))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        running(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as http,
    ):
        for headers in (
            {},
            {"Authorization": "Bearer bad"},
            {"Authorization": "good"},
            {"Authorization": "Basic good"},
        ):
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 401, headers
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert (await http.get("/v1/models")).status_code == 401
        ok = await http.get("/v1/models", headers={"Authorization": "Bearer good"})
        assert ok.status_code == 200 and ok.json() == {"object": "list", "data": []}
