"""GET /docs: the admin API reference rendered on the server from the OpenAPI document, with nothing external."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer

from trackly_exec.api.openapi import document
from trackly_exec.app import Trackly
from trackly_exec.operations.web import make_app


async def test_docs_page_lists_every_route_and_loads_nothing_external(trackly: Trackly) -> None:
    """Every documented operation and schema is on the page; no script, no external stylesheet, font or image."""
    async with TestClient(TestServer(make_app(trackly))) as client:
        r = await client.get("/docs")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        page = await r.text()
    doc = document()
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert f'id="{op["operationId"]}"' in page, op["operationId"]
            assert path.replace("{", "&#x7b;") in page or path in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "<script" not in page.lower()
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(https?:)?//""", page)
    assert external == [], external
    assert "Re-drive retryable dead letters" in page and "allow_duplicates" in page
