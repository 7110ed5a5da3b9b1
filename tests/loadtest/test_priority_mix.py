"""The priority-mix benchmark runs end to end against the gateway (a stand-in worker behind it) and
reports the figures the goal is stated in, with the flood as requests and as a Batch API job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.auth import hash_key
from gateway.main import create_app
from loadtest.priority_mix import MixConfig, main, parse_args, run_mix
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
    config, output = parse_args(["--url", "http://x/", "--target", "vllm", "--duration", "5", "-o", "r.json"])
    assert config.url == "http://x" and config.target == "vllm" and output == Path("r.json")
    assert main(["--url", "http://x", "--target", "vllm", "--flood", "batch-api"]) == 2
