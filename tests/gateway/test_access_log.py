"""uvicorn's access log leaves out probes and scrapes, and keeps API requests."""

from __future__ import annotations

import logging

import pytest

import gateway.main  # noqa: F401 - installs the filter on uvicorn's access logger


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
