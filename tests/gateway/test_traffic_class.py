"""Which request stream a request lands on: public keys interactive, internal keys batch or priority."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gateway.admission import TRAFFIC_CLASS_HEADER, traffic_class
from gateway.core.auth import KeyClass, Limits, Principal, hash_key
from gateway.core.errors import OpenAIError
from gateway.main import create_app
from shared.messages import TrafficClass
from tests.gateway.conftest import make_settings, running
from tests.gateway.fake_worker import FakeWorker

PUBLIC = Principal("web", KeyClass.PUBLIC, Limits(), "0")
INTERNAL = Principal("evals", KeyClass.INTERNAL, Limits(), "1")


@pytest.mark.parametrize(
    ("principal", "header", "priority", "expected"),
    [
        (PUBLIC, None, 0, TrafficClass.INTERACTIVE),
        (PUBLIC, "batch", -5, TrafficClass.INTERACTIVE),  # public traffic cannot be moved
        (INTERNAL, None, 0, TrafficClass.BATCH),
        (INTERNAL, None, 3, TrafficClass.BATCH),
        (INTERNAL, None, -1, TrafficClass.PRIORITY),
        (INTERNAL, "priority", 0, TrafficClass.PRIORITY),
        (INTERNAL, " Priority ", 0, TrafficClass.PRIORITY),
        (INTERNAL, "interactive", 0, TrafficClass.PRIORITY),  # internal work is never interactive
        (INTERNAL, "batch", -1, TrafficClass.BATCH),  # the header wins
    ],
)
def test_traffic_class(
    principal: Principal, header: str | None, priority: int, expected: TrafficClass
) -> None:
    assert traffic_class(principal, header, priority) is expected


def test_an_unknown_class_header_is_a_400() -> None:
    with pytest.raises(OpenAIError) as error:
        traffic_class(INTERNAL, "urgent", 0)
    assert error.value.status == 400 and error.value.param == TRAFFIC_CLASS_HEADER


async def test_requests_land_on_their_class_stream(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entries = [
        {"sha256": hash_key("pub"), "tenant": "web", "traffic_class": "public"},
        {"sha256": hash_key("int"), "tenant": "evals", "traffic_class": "internal"},
    ]
    path.write_text(json.dumps({"keys": entries}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=path))
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    sent = [
        ("pub", {}, chat),
        ("int", {}, chat),
        ("int", {TRAFFIC_CLASS_HEADER: "priority"}, chat),
        ("int", {}, {**chat, "priority": -1}),
    ]
    async with (
        running(app),
        FakeWorker(redis_url) as worker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as http,
    ):
        for key, headers, body in sent:
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
            )
            assert response.status_code == 200, response.text
    assert [worker.streams[r.req_id] for r in worker.requests] == [
        TrafficClass.INTERACTIVE,
        TrafficClass.BATCH,
        TrafficClass.PRIORITY,
        TrafficClass.PRIORITY,
    ]
    assert [r.tenant for r in worker.requests] == ["web", "evals", "evals", "evals"]
    assert all(r.traffic_class is worker.streams[r.req_id] for r in worker.requests)
