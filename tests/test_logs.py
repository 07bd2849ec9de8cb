"""The daemon's log: one format for its own events and the libraries' records, and no secret from a bad request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import structlog

from trackly_exec.logs import configure_logging

from .tracking_support import CM_TOKEN, Daemon

API_TOKEN = "test-token"  # tests/test.toml http.api_tokens


async def _raw(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the whole answer: the server closes after an error
    writer.close()
    await writer.wait_closed()
    return answer


async def test_unparsable_requests_log_one_line_without_their_bytes(daemon: Daemon) -> None:
    """A request line or header aiohttp cannot parse (a webhook path token in the URL, an API token in a header)
    is answered 400 and logged as one JSON ``http_bad_request`` line: no traceback, none of the request's bytes."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        bad_url = f"GET /webhooks/cm/status/{CM_TOKEN}?TO=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1")
        bad_header = f"GET /api/v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\x01\r\n\r\n"
        long_url = f"GET /webhooks/cm/status/{CM_TOKEN}?{'a=1&' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n"
        long_header = (
            f"GET /api/v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}{'A' * 9000}\r\n\r\n"
        )
        for request in (bad_url, bad_header.encode(), long_url.encode(), long_header.encode()):
            answer = await _raw(daemon.url, request)
            assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer
            # the answer does not quote the request either (aiohttp's own page did: the token, to whoever relays it)
            assert CM_TOKEN.encode() not in answer and API_TOKEN.encode() not in answer, answer
    finally:
        configure_logging("warning", "console", stream=sys.stderr)
    text = out.getvalue()
    assert CM_TOKEN not in text and API_TOKEN not in text and "Traceback" not in text, text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [e for e in lines if e["event"] == "http_bad_request"]
    assert len(bad) == 4 and {e["status"] for e in bad} <= {400, 431} and all(e["level"] == "warning" for e in bad), (
        lines
    )


def test_library_records_share_the_json_format() -> None:
    """A library's own record (PyMongo, asyncio) is a JSON line like the daemon's events, with its logger's name."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        logging.getLogger("pymongo.topology").warning("server %s unreachable", "db1")
    finally:
        configure_logging("warning", "console", stream=sys.stderr)
    [entry] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert entry["event"] == "server db1 unreachable" and entry["logger"] == "pymongo.topology"
    assert entry["level"] == "warning" and "timestamp" in entry


def test_json_lines_give_times_in_iso_8601() -> None:
    """A time in an event (a campaign's next_run_at) is ISO 8601 in a JSON line, not a Python repr; sets and enums
    are plain JSON too."""
    import datetime as dt

    from trackly_exec.logs import get_logger
    from trackly_exec.store.models import CampaignStatus

    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        when = dt.datetime(2026, 12, 3, 17, 30, tzinfo=dt.UTC)
        get_logger("t").info("campaign_created", next_run_at=when, day=when.date(), ids={3}, status=CampaignStatus.DONE)
    finally:
        configure_logging("warning", "console", stream=sys.stderr)
    [entry] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert entry["next_run_at"] == "2026-12-03T17:30:00+00:00" and entry["day"] == "2026-12-03"
    assert entry["ids"] == [3] and entry["status"] == "done"


def test_under_journald_each_json_line_carries_its_priority(monkeypatch: Any) -> None:
    """With JOURNAL_STREAM set (systemd's stdout/stderr to journald) a JSON line starts with its syslog priority, so
    ``journalctl -p warning`` shows errors and warnings; elsewhere the lines are plain JSON."""
    out = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    configure_logging("info", "json", stream=out)
    try:
        log = structlog.get_logger("t")
        log.error("boom")
        log.info("fine")
        logging.getLogger("pymongo.topology").warning("server unreachable")
    finally:
        monkeypatch.delenv("JOURNAL_STREAM")
        configure_logging("warning", "console", stream=sys.stderr)
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<6>", "<4>"], lines
    assert json.loads(lines[0][3:])["event"] == "boom"
