"""uvicorn's access log leaves out probes and scrapes, keeps API requests, and never prints a key."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.main import create_app  # installs the filter on uvicorn's access logger
from tests.gateway.conftest import API_KEY, ServerThread, make_settings


def access_record(path: str) -> logging.LogRecord:
    # uvicorn's access record: (client address, method, path, HTTP version, status)
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200), None,
    )


@pytest.mark.parametrize("path", ["/ready", "/health", "/metrics"])
def test_probe_requests_are_not_logged(path: str) -> None:
    assert not logging.getLogger("uvicorn.access").filter(access_record(path))


def test_api_requests_are_logged() -> None:
    assert logging.getLogger("uvicorn.access").filter(access_record("/v1/chat/completions"))


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/models?api_key=sk-secret", "/v1/models?api_key=***"),
        ("/v1/batches?limit=5&after=batch_1&token=sk-secret", "/v1/batches?limit=5&after=batch_1&token=***"),
        ("/v1/files?purpose=batch&sk-secret", "/v1/files?purpose=batch&sk-secret=***"),
        ("/ready?api_key=sk-secret", None),
    ],
)
def test_query_values_are_redacted_except_the_apis_own(path: str, logged: str | None) -> None:
    record = access_record(path)
    kept = logging.getLogger("uvicorn.access").filter(record)
    if logged is None:
        assert not kept
    else:
        assert kept and record.args is not None and record.args[2] == logged  # type: ignore[index]


async def test_no_key_reaches_any_log_line_whatever_route_it_came_by(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(redis_url))
    server = ServerThread(app, log_level="info")
    access = logging.getLogger("uvicorn.access")  # uvicorn's config stops it from propagating to root
    access.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            async with server, httpx.AsyncClient(base_url=server.url) as client:
                await client.get(f"/v1/models?api_key={API_KEY}")
                await client.get(f"/v1/models?key={API_KEY}&limit=3")
                await client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
                await client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}-wrong"})
                body = {"model": "x", "api_key": API_KEY, "messages": []}
                bearer = {"Authorization": f"Bearer {API_KEY}"}
                await client.post("/v1/chat/completions", json=body, headers=bearer)
    finally:
        access.removeHandler(caplog.handler)
    # The gateway's and uvicorn's lines; the test client's own (httpx) log the URLs it was given.
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("/v1/models?api_key=***" in line for line in lines)  # the access log did run
    assert not [line for line in lines if API_KEY in line]
