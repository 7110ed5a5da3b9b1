"""The chat page's files: served from a fixed list, with a policy that keeps scripts to this origin."""

from __future__ import annotations

import httpx
import pytest


async def test_page_and_assets_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for ref in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert ref in page.text
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
    assert (await client.get("/static/app.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/static/style.css")).headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("path", ["/static/index.html", "/static/nope.js", "/static/..%2Fapi%2Fdeps.py"])
async def test_nothing_outside_the_list_is_served(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404
