"""Which class stream a request lands in: public keys stay interactive whatever they ask for; internal
keys are batch unless they ask for priority (header or a negative ``priority``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.core.auth import KeyClass, Limits, Principal, hash_key
from gateway.core.errors import OpenAIError
from gateway.main import create_app
from gateway.traffic import TRAFFIC_CLASS_HEADER, traffic_class
from shared.messages import TrafficClass
from tests.gateway.conftest import make_settings
from tests.gateway.fake_worker import FakeWorker

PUBLIC = Principal("web", KeyClass.PUBLIC, Limits(), "aaaaaaaa")
INTERNAL = Principal("research", KeyClass.INTERNAL, Limits(), "bbbbbbbb")


@pytest.mark.parametrize("header", [None, "priority", "batch", "interactive", "PRIORITY"])
@pytest.mark.parametrize("priority", [-10, 0, 5])
def test_a_public_key_is_always_interactive(header: str | None, priority: int) -> None:
    assert traffic_class(PUBLIC, header, priority) is TrafficClass.INTERACTIVE


@pytest.mark.parametrize(
    ("header", "priority", "expected"),
    [
        (None, 0, TrafficClass.BATCH),
        (None, 3, TrafficClass.BATCH),
        (None, -1, TrafficClass.PRIORITY),
        ("priority", 0, TrafficClass.PRIORITY),
        (" Priority ", 0, TrafficClass.PRIORITY),
        ("batch", -1, TrafficClass.BATCH),  # the header wins over the field
        (
            "interactive",
            0,
            TrafficClass.PRIORITY,
        ),  # interactive is the public class; internal tops out at priority
    ],
)
def test_an_internal_key_picks_priority_or_batch(
    header: str | None, priority: int, expected: TrafficClass
) -> None:
    assert traffic_class(INTERNAL, header, priority) is expected


def test_an_unknown_class_header_is_400() -> None:
    with pytest.raises(OpenAIError) as info:
        traffic_class(INTERNAL, "urgent", 0)
    assert info.value.status == 400 and info.value.param == TRAFFIC_CLASS_HEADER


@pytest.fixture
async def client(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    entries = [
        {"sha256": hash_key("pub"), "tenant": "web", "traffic_class": "public"},
        {"sha256": hash_key("int"), "tenant": "research", "traffic_class": "internal"},
    ]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": entries}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
    ):
        yield client


async def test_requests_land_in_their_class_stream(client: httpx.AsyncClient, redis_url: str) -> None:
    cases = [
        ("pub", {TRAFFIC_CLASS_HEADER: "priority"}, -5, TrafficClass.INTERACTIVE),
        ("pub", {}, 0, TrafficClass.INTERACTIVE),
        ("int", {TRAFFIC_CLASS_HEADER: "priority"}, 0, TrafficClass.PRIORITY),
        ("int", {}, -1, TrafficClass.PRIORITY),
        ("int", {}, 0, TrafficClass.BATCH),
    ]
    async with FakeWorker(redis_url, model="tiny") as worker:
        for key, headers, priority, _ in cases:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "priority": priority}
            response = await client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
            )
            assert response.status_code == 200, response.text
    assert [worker.streams[r.req_id] for r in worker.requests] == [expected for *_, expected in cases]
    assert [r.traffic_class for r in worker.requests] == [expected for *_, expected in cases]
