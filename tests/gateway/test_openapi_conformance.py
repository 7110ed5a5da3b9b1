"""schemathesis against the real gateway: generated requests for every documented route.

Each answer must be documented by the OpenAPI schema (status code, content type, body schema), and
no answer may be a server error. The gateway runs under uvicorn on a real Redis, with a fake worker
serving model ``tiny``, so generation routes answer too; the examples per route are bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import checks

from busstop.redis_server import RedisServer, free_port
from gateway.main import create_app
from tests.gateway.batch_helpers import INTERNAL, write_keys_file
from tests.gateway.conftest import make_settings
from tests.gateway.fake_worker import FakeWorker

MAX_EXAMPLES = 40


class GatewayWithWorker:
    """uvicorn and a FakeWorker on one event loop, in a thread of their own (the test is synchronous)."""

    def __init__(self, redis_url: str, keys_file: Path, files_dir: Path) -> None:
        self.port = free_port()
        app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.redis_url = redis_url
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with FakeWorker(self.redis_url, model="tiny", max_model_len=512):
            await self.server.serve()

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            threading.Event().wait(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def gateway_url(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[str]:
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("schemathesis")
    monkeypatch_module.setenv("BUSSTOP_BATCH_FILES_DIR", str(tmp / "files"))
    with GatewayWithWorker(redis_server.url, write_keys_file(tmp / "keys.json"), tmp / "files") as url:
        yield url


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# The schema the app serves at /openapi.json (it needs no settings to be built).
schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture
    ],
)
def test_every_answer_is_documented_and_none_is_a_server_error(
    case: schemathesis.Case, gateway_url: str
) -> None:
    response = case.call(base_url=gateway_url, headers=INTERNAL, timeout=30)
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.allow_header_conformance,
        ],
    )
