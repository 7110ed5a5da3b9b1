"""The priority-mix benchmark runs end to end against the gateway (a stand-in worker behind it) and
reports the figures the goal is stated in, with the flood as requests and as a Batch API job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.auth import hash_key
from gateway.main import create_app
from loadtest.priority_mix import MixConfig, main, parse_args, run_mix
from loadtest.repeat import worst
from loadtest.tenant_shares import TenantConfig, run_tenants
from loadtest.workload import LengthDist
from tests.gateway.batch_helpers import batch_env
from tests.gateway.conftest import ServerThread, make_settings
from tests.gateway.fake_worker import FakeWorker


@pytest.mark.parametrize("flood", ["requests", "batch-api"])
async def test_priority_mix_reports_ttft_and_batch_throughput(
    flood: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_env(monkeypatch, tmp_path / "files", batch_window=8)
    entries = [
        {"sha256": hash_key("pub"), "tenant": "web", "traffic_class": "public"},
        {"sha256": hash_key("int"), "tenant": "research", "traffic_class": "internal"},
    ]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": entries}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
    async with ServerThread(app) as server, FakeWorker(redis_url, model="tiny", delay_s=0.01) as worker:
        config = MixConfig(
            url=server.url,
            model="tiny",
            target="busstop",
            flood=flood,
            rate=10.0,
            duration_s=1.0,
            batch_concurrency=4,
            interactive_prompt_len=LengthDist("fixed", 8),
            interactive_output_len=LengthDist("fixed", 4),
            batch_prompt_len=LengthDist("fixed", 16),
            batch_output_len=4,
            interactive_key="pub",
            batch_key="int",
        )
        result = await run_mix(config, log=False)
    for phase in ("interactive_alone", "mixed"):
        assert result["phases"][phase]["interactive"]["num_errors"] == 0
    assert result["interactive_ttft_p99_ms"]["alone"] > 0 and result["interactive_ttft_p99_ms"]["mixed"] > 0
    assert (
        result["batch_output_tokens_per_s"]["alone"] > 0 and result["batch_output_tokens_per_s"]["mixed"] > 0
    )
    assert result["ttft_p99_ratio"] is not None and result["batch_throughput_ratio"] is not None
    classes = {str(c) for c in worker.streams.values()}
    assert classes == {"interactive", "batch"}  # each load went in its own class


def test_arguments() -> None:
    args = ["--url", "http://x/", "--target", "vllm", "--duration", "5", "-o", "r.json"]
    config, options = parse_args(args)
    assert config.url == "http://x" and config.target == "vllm" and options.output == Path("r.json")
    assert main(["--url", "http://x", "--target", "vllm", "--flood", "batch-api"]) == 2


def test_repeated_runs_are_judged_by_each_figure_at_its_worst() -> None:
    runs = [
        {"ttft_p99_ratio": 1.2, "tpot_p50_ratio": 1.6, "batch_throughput_ratio": 0.7},
        {"ttft_p99_ratio": 1.4, "tpot_p50_ratio": 1.1, "batch_throughput_ratio": 0.65, "share_error": -0.08},
        {"ttft_p99_ratio": None, "share_error": 0.05},
    ]
    assert worst(runs) == {
        "ttft_p99_ratio": 1.4, "tpot_p50_ratio": 1.6, "batch_throughput_ratio": 0.65, "share_error": -0.08
    }


def test_the_tenants_scenario_needs_its_keys() -> None:
    assert main(["--url", "http://x", "--scenario", "tenants", "--tenant-keys", "a"]) == 2
    _, options = parse_args(["--url", "http://x", "--scenario", "tenants", "--tenant-keys", "a,b",
                             "--sparse-key", "c", "--repeat", "3"])
    assert options.tenant_keys == ("a", "b") and options.tenant_weights == (2.0, 1.0) and options.repeat == 3


async def test_the_tenants_scenario_reports_shares_and_the_sparse_tenants_ttft(
    redis_url: str, tmp_path: Path
) -> None:
    entries = [
        {"sha256": hash_key(k), "tenant": t, "traffic_class": "internal", "weight": w}
        for k, t, w in (("ka", "distill", 2), ("kb", "curation", 1), ("kc", "evals", 1))
    ]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": entries}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
    async with ServerThread(app) as server, FakeWorker(redis_url, model="tiny", delay_s=0.01) as worker:
        mix = MixConfig(
            url=server.url, model="tiny", target="busstop", flood="requests", rate=1.0, duration_s=1.0,
            batch_concurrency=2, interactive_prompt_len=LengthDist("fixed", 8),
            interactive_output_len=LengthDist("fixed", 4), batch_prompt_len=LengthDist("fixed", 8),
            batch_output_len=4, interactive_key=None, batch_key=None,
        )  # fmt: skip
        tenants = TenantConfig(mix, ("ka", "kb"), (2, 1), "kc", 0.2, idle_requests=2)
        result = await run_tenants(tenants, log=False)
    assert all(n > 0 for n in result["flood_output_tokens"]) and result["share_ratio"] is not None
    assert result["expected_ratio"] == 2.0 and result["sparse_errors"] == []
    assert result["sparse_ttft_p50_ms"]["idle"] > 0 and result["sparse_ttft_p50_ms"]["flooded"] > 0
    tenants = {r.tenant for r in worker.requests}
    assert tenants == {"distill", "curation", "evals"}
    assert {str(worker.streams[r.req_id]) for r in worker.requests} == {"batch"}
