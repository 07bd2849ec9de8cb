"""The driver contract suite: run it against your own driver and its fake.

A plugin author subclasses :class:`DriverContractSuite` in a test module (pytest + pytest-asyncio)::

    from trackly_exec.testing import DriverContractSuite
    from my_plugin import MyDriver          # MyDriver.fake = "my_plugin.fake:MyFake"

    class TestMyDriver(DriverContractSuite):
        driver_class = MyDriver

The fake must be a :class:`trackly_exec.testing.fakes.base.FakeProvider` subclass (it knows the driver settings that
talk to it: ``driver_settings()`` / ``wrong_credentials()``); ``examples/trackly-driver-acme`` is a worked plugin with
its fake. Every check is also a plain coroutine taking a :class:`DriverHarness` (``CHECKS``), for use outside pytest
classes.

What the contract asks of a driver: one result per message with our id; accepted messages are in the
provider's ledger exactly once; a refused request is a rejection; 429 is transient with its Retry-After;
a 5xx (500, 502, 503, 504) is an unknown outcome, never transient: the provider may have accepted the message
before failing (``5xx_after`` shows the fake recorded it), and the client cannot tell it from ``5xx_before``; so is
every broken answer after the request was written (no answer, a reset connection, a 2xx that cannot be read);
a refused connection (nothing written) is transient; the fake's own delivery reports and inbound messages parse,
with our id; webhooks authenticate, and a wrong path token (or a tampered signed request) is refused. A driver
that implements :meth:`~trackly_exec.drivers.contract.Driver.lookup` answers it from the fake's message log: a sent
message is found (with its provider id), an unknown one is not found, and a look-up the provider fails to
answer is unknown (``check_lookup``; skipped for drivers without look-ups).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from aiohttp import web

from trackly_exec.drivers.contract import (
    Accepted,
    DeliveryReport,
    Driver,
    DriverContext,
    Found,
    LookupQuery,
    OutboundMessage,
    Rejected,
    SendResult,
    TransientFailure,
    UnknownOutcome,
    WebhookRequest,
)
from trackly_exec.errors import WebhookAuthError
from trackly_exec.store.documents import ConfigTable
from trackly_exec.testing.fakes.control import Behaviour

WEBHOOK_TOKEN = "contract-token-0123456789"


class WebhookSink:
    """A loopback HTTP server that records the webhook requests a fake posts (as :class:`WebhookRequest`)."""

    def __init__(self, response: Callable[[str], web.Response] | None = None) -> None:
        self.status: list[WebhookRequest] = []
        self.inbound: list[WebhookRequest] = []
        self._response = response
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> WebhookSink:
        app = web.Application()
        app.router.add_post("/webhooks/{instance}/{kind}", self._handle)
        app.router.add_post("/webhooks/{instance}/{kind}/{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = getattr(site, "_server", None)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        req = WebhookRequest(
            url=self.url + request.raw_path,
            headers=dict(request.headers),
            body=await request.read(),
            content_type=request.headers.get("Content-Type", ""),
            path_token=request.match_info.get("token"),
        )
        kind = request.match_info["kind"]
        (self.status if kind == "status" else self.inbound).append(req)
        return self._response(kind) if self._response else web.Response(status=200)


def free_port() -> int:
    """A loopback port nobody listens on (for connection-refused checks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DriverHarness:
    """A driver wired to its fake and to a webhook sink; ``async with DriverHarness(MyDriver) as h``."""

    def __init__(
        self,
        driver_class: type[Driver[Any]],
        fake_class: type[Any] | None = None,
        *,
        name: str = "contract",
        fake_kwargs: ConfigTable | None = None,
        settings: ConfigTable | None = None,
    ) -> None:
        self.driver_class = driver_class
        if fake_class is None:
            if not driver_class.fake:
                raise ValueError(f"{driver_class.__name__} has no fake: pass fake_class")
            module, _, attr = driver_class.fake.partition(":")
            fake_class = getattr(importlib.import_module(module), attr)
        self.fake_class = fake_class
        self.name = name
        self.fake_kwargs = fake_kwargs or {}
        self.extra_settings = settings or {}
        self.sink = WebhookSink()
        self.fake: Any = None
        self.driver: Driver[Any] = None  # type: ignore[assignment]
        self._drivers: list[Driver[Any]] = []
        self._counter = 0

    @property
    def status_url(self) -> str:
        return f"{self.sink.url}/webhooks/{self.name}/status/{WEBHOOK_TOKEN}"

    @property
    def inbound_url(self) -> str:
        return f"{self.sink.url}/webhooks/{self.name}/inbound/{WEBHOOK_TOKEN}"

    async def __aenter__(self) -> DriverHarness:
        await self.sink.start()
        assert self.fake_class is not None
        self.fake = self.fake_class(**self.fake_kwargs)
        self.fake.report_url = self.status_url
        self.fake.inbound_url = self.inbound_url
        await self.fake.start()
        self.driver = await self.new_driver()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for driver in self._drivers:
            await driver.shutdown()
        await self.fake.stop()
        await self.sink.stop()

    async def new_driver(self, **overrides: Any) -> Driver[Any]:
        """A started driver talking to the fake (``overrides`` laid over its settings)."""
        values = {**self.fake.driver_settings(), "webhook_token": WEBHOOK_TOKEN, **self.extra_settings, **overrides}
        settings = self.driver_class.settings_model.model_validate(values)
        driver = self.driver_class(settings, DriverContext(self.status_url, self.inbound_url), name=self.name)
        await driver.startup()
        self._drivers.append(driver)
        return driver

    def messages(self, n: int, body: str = "Hello from the contract suite") -> list[OutboundMessage]:
        out = []
        for _ in range(n):
            self._counter += 1
            out.append(
                OutboundMessage(
                    id=secrets.token_hex(8),
                    to=f"+1415555{self._counter % 10000:04d}",
                    sender="+14155550100",
                    body=f"{body} #{self._counter}",
                )
            )
        return out

    async def submit(self, messages: Sequence[OutboundMessage], driver: Driver[Any] | None = None) -> list[SendResult]:
        """Submit in requests of the driver's batch size (concurrently), results in message order."""
        driver = driver or self.driver
        size = driver.max_batch_size
        parts = await asyncio.gather(*(driver.submit(messages[i : i + size]) for i in range(0, len(messages), size)))
        return [r for part in parts for r in part]

    async def reports(self) -> list[DeliveryReport]:
        """Authenticate and parse every status webhook the fake posted so far."""
        out: list[DeliveryReport] = []
        for req in self.sink.status:
            self.driver.authenticate(req)
            out.extend(self.driver.parse_status(req))
        return out


# --------------------------------------------------------------------------------------------- the checks


def _kinds(results: Sequence[SendResult]) -> list[str]:
    return [r.kind for r in results]


async def check_batch_submit(h: DriverHarness) -> None:
    """A batch is accepted with one result per message, in order, each in the ledger exactly once."""
    msgs = h.messages(min(5, max(2, h.driver.max_batch_size)) if h.driver.max_batch_size > 1 else 3)
    results = await h.submit(msgs)
    assert [r.message_id for r in results] == [m.id for m in msgs]
    assert all(isinstance(r, Accepted) for r in results), results
    assert all(r.provider_message_id and r.segments >= 1 for r in results if isinstance(r, Accepted))
    counts = h.fake.accepted_counts()
    assert all(counts[m.id] == 1 for m in msgs), counts
    by_id = {e.message_id: e for e in h.fake.ledger}
    for m in msgs:
        assert by_id[m.id].to == m.to and by_id[m.id].body == m.body


async def check_validity_period(h: DriverHarness) -> None:
    """Each message's ``valid_for`` reaches the provider as its validity period (read back by the fake as
    ``Submitted.valid_for``, within a few seconds of it: a provider may take an absolute time), and a message
    without one carries none. A driver whose provider has no such field sets ``validity_period = False``."""
    if not getattr(h.driver, "validity_period", True):
        pytest.skip(f"{type(h.driver).__name__}.validity_period is False: its provider takes no validity period")
    msgs = [m.model_copy(update={"valid_for": 600 + 60 * i}) for i, m in enumerate(h.messages(2))]
    plain = h.messages(1)
    results = await h.submit([*msgs, *plain])
    assert all(isinstance(r, Accepted) for r in results), results
    by_id = {e.message_id: e for e in h.fake.ledger}
    for m in msgs:
        got = by_id[m.id].valid_for
        assert got is not None and abs(got - (m.valid_for or 0)) <= 5, (
            f"message {m.id}: valid_for {m.valid_for} s reached the provider as {got!r}: send it as your provider's "
            "validity period (and record it in your fake's parse_submission as Submitted.valid_for)"
        )
    assert by_id[plain[0].id].valid_for is None


async def check_per_recipient_rejection(h: DriverHarness) -> None:
    """A recipient the provider refuses is rejected on its own; the rest are accepted."""
    msgs = h.messages(3)
    h.fake.reject_numbers[msgs[1].to] = h.fake.default_reject_code
    results = await h.submit(msgs)
    assert _kinds(results) == ["accepted", "rejected", "accepted"], results
    assert isinstance(results[1], Rejected) and results[1].code
    assert msgs[1].id not in h.fake.accepted_counts()


async def check_rejected_request(h: DriverHarness) -> None:
    """A request the provider refuses makes every message rejected, and nothing is recorded."""
    msgs = h.messages(2)
    requests = -(-len(msgs) // h.driver.max_batch_size)
    h.fake.script(*[Behaviour("reject") for _ in range(requests)])
    results = await h.submit(msgs)
    assert all(isinstance(r, Rejected) and r.code for r in results), results
    assert not h.fake.ledger


async def check_transient_429(h: DriverHarness) -> None:
    """HTTP 429 is a transient failure carrying the Retry-After delay, and nothing is recorded."""
    msg = h.messages(1)
    h.fake.script(Behaviour("429", retry_after=3))
    [result] = await h.submit(msg)
    assert isinstance(result, TransientFailure) and result.retry_after == 3.0, result
    assert not h.fake.ledger


SERVER_ERRORS = ("500", "502", "503", "504")


async def check_5xx_is_unknown(h: DriverHarness) -> None:
    """A 5xx is an unknown outcome, never transient: after ``5xx_after`` the provider has the message (recorded
    once), and ``5xx_before`` looks the same from the client's side."""
    for status in SERVER_ERRORS:
        msg = h.messages(1)
        h.fake.script(Behaviour("5xx_after", code=status))
        [result] = await h.submit(msg)
        assert isinstance(result, UnknownOutcome), (status, result)
        assert h.fake.accepted_counts()[msg[0].id] == 1
    before = h.messages(1)
    h.fake.script(Behaviour("5xx_before", code="503"))
    [result] = await h.submit(before)
    assert isinstance(result, UnknownOutcome), result
    assert before[0].id not in h.fake.accepted_counts()


async def check_broken_answer_is_unknown(h: DriverHarness) -> None:
    """A reset connection or an unreadable 2xx after the request was written is an unknown outcome."""
    for mode in ("accept_then_reset", "accept_then_garbage", "reset_before"):
        msg = h.messages(1)
        h.fake.script(Behaviour(mode))
        [result] = await h.submit(msg)
        assert isinstance(result, UnknownOutcome), (mode, result)
        assert h.fake.accepted_counts()[msg[0].id] == (0 if mode == "reset_before" else 1), mode


async def check_unknown_on_hang(h: DriverHarness) -> None:
    """No answer after the request was written is an unknown outcome (and the fake did record it)."""
    driver = await h.new_driver(timeout_seconds=0.5)
    msg = h.messages(1)
    h.fake.script(Behaviour("accept_then_hang"))
    [result] = await h.submit(msg, driver)
    assert isinstance(result, UnknownOutcome), result
    assert h.fake.accepted_counts()[msg[0].id] == 1


async def check_connection_refused(h: DriverHarness) -> None:
    """A refused connection (nothing was written) is a transient failure."""
    driver = await h.new_driver(base_url=f"http://127.0.0.1:{free_port()}")
    [result] = await h.submit(h.messages(1), driver)
    assert isinstance(result, TransientFailure), result


async def check_wrong_credentials(h: DriverHarness) -> None:
    """Wrong credentials send nothing and leave no unknown outcome: every message is held for later (a transient
    failure: the built-in drivers, so that fixing the key sends them) or rejected, and nothing is recorded."""
    driver = await h.new_driver(**h.fake.wrong_credentials())
    results = await h.submit(h.messages(2), driver)
    assert all(isinstance(r, TransientFailure | Rejected) for r in results), results
    assert not h.fake.ledger


async def check_slow_answer(h: DriverHarness) -> None:
    """A slow answer within the timeout is accepted."""
    h.fake.script(Behaviour("slow", delay=0.3))
    [result] = await h.submit(h.messages(1))
    assert isinstance(result, Accepted), result


async def check_delivery_reports(h: DriverHarness) -> None:
    """The fake's real delivery reports parse to our ids: delivered, failed, intermediate (None)."""
    msgs = h.messages(4)
    await h.submit(msgs)
    outcome = {msgs[0].id: "delivered", msgs[1].id: "undelivered", msgs[2].id: "sent", msgs[3].id: None}
    h.fake.dlr_outcome = lambda entry: outcome[entry.message_id]
    posted = await h.fake.flush_reports()
    assert posted == 3, (posted, h.fake.report_failures)
    reports = {r.message_id: r for r in await h.reports()}
    assert set(reports) == {msgs[0].id, msgs[1].id, msgs[2].id}, reports
    assert reports[msgs[0].id].delivered is True
    assert reports[msgs[1].id].delivered is False
    assert reports[msgs[2].id].delivered is None
    assert all(r.status for r in reports.values())


async def check_spam_report(h: DriverHarness) -> None:
    """A carrier spam-filtering report is a failed delivery flagged as spam."""
    [msg] = h.messages(1)
    await h.submit([msg])
    h.fake.dlr_outcome = lambda entry: "spam"
    assert await h.fake.flush_reports() == 1, h.fake.report_failures
    [report] = await h.reports()
    assert report.message_id == msg.id and report.delivered is False and report.spam, report


async def check_webhook_auth_rejected(h: DriverHarness) -> None:
    """A genuine report authenticates; a wrong path token (or a tampered signed request) is refused."""
    await h.submit(h.messages(1))
    assert await h.fake.flush_reports() == 1
    [genuine] = h.sink.status
    h.driver.authenticate(genuine)
    wrong_token = dataclasses.replace(genuine, path_token="wrong-token", form={})
    with pytest.raises(WebhookAuthError):
        h.driver.authenticate(wrong_token)
    no_token = dataclasses.replace(genuine, path_token=None, form={})
    with pytest.raises(WebhookAuthError):
        h.driver.authenticate(no_token)
    if h.driver.signed_webhooks:
        tampered = dataclasses.replace(genuine, body=genuine.body + b"&Injected=1", form={})
        with pytest.raises(WebhookAuthError):
            h.driver.authenticate(tampered)
        unsigned = dataclasses.replace(
            genuine, headers={k: v for k, v in genuine.headers.items() if "signature" not in k}, form={}
        )
        with pytest.raises(WebhookAuthError):
            h.driver.authenticate(unsigned)


async def check_inbound(h: DriverHarness) -> None:
    """An inbound message posted by the fake authenticates and parses (numbers in E.164)."""
    status = await h.fake.send_inbound("+14155559999", "+14155550100", "STOP")
    assert 200 <= status < 300
    [req] = h.sink.inbound
    h.driver.authenticate(req)
    [msg] = h.driver.parse_inbound(req)
    assert (msg.from_number, msg.to_number, msg.text) == ("+14155559999", "+14155550100", "STOP")
    h.driver.inbound_response(None)


async def check_lookup(h: DriverHarness) -> None:
    """Look-ups (when the driver has them) answer from the provider's records: a message the provider took is
    found with its provider id (and delivery state), even when its send answer was lost; one it never took is not
    found, but only once ``lookup_settle_seconds`` have passed; a provider that fails the look-up leaves it unknown."""
    if not h.driver.supports_lookup:
        return
    driver = await h.new_driver(lookup_settle_seconds=0)
    taken, lost, never = h.messages(3)
    await h.submit([taken])
    h.fake.script(Behaviour("accept_then_reset"))
    await h.submit([lost])
    attempted = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    queries = [
        LookupQuery(id=m.id, to=m.to, sender=m.sender, body=m.body, attempted_at=attempted)
        for m in (taken, lost, never)
    ]
    results = await driver.resolve(queries)
    assert [r.kind for r in results] == ["found", "found", "not_found"], results
    pids = {e.message_id: e.provider_message_id for e in h.fake.ledger}
    assert [r.provider_message_id for r in results[:2] if isinstance(r, Found)] == [pids[taken.id], pids[lost.id]]
    h.fake.dlr_outcome = lambda entry: "delivered"
    await h.fake.flush_reports()
    [again] = await driver.resolve(queries[:1])
    assert isinstance(again, Found) and again.report is not None and again.report.delivered is True, again
    [early] = await h.driver.resolve(queries[2:])  # default settle time: too soon to call it not sent
    assert isinstance(early, UnknownOutcome), early
    h.fake.script_lookups(Behaviour("5xx_before"))
    [failed] = await driver.resolve(queries[:1])
    assert isinstance(failed, UnknownOutcome), failed


Check = Callable[[DriverHarness], Awaitable[None]]

#: Every check of the contract, by name.
CHECKS: dict[str, Check] = {
    "batch_submit": check_batch_submit,
    "per_recipient_rejection": check_per_recipient_rejection,
    "rejected_request": check_rejected_request,
    "transient_429": check_transient_429,
    "5xx_is_unknown": check_5xx_is_unknown,
    "broken_answer_is_unknown": check_broken_answer_is_unknown,
    "unknown_on_hang": check_unknown_on_hang,
    "connection_refused": check_connection_refused,
    "wrong_credentials": check_wrong_credentials,
    "slow_answer": check_slow_answer,
    "delivery_reports": check_delivery_reports,
    "spam_report": check_spam_report,
    "webhook_auth_rejected": check_webhook_auth_rejected,
    "inbound": check_inbound,
    "lookup": check_lookup,
}


class DriverContractSuite:
    """Subclass with ``driver_class = MyDriver`` (and ``fake_class`` when ``MyDriver.fake`` is unset)."""

    pytestmark: ClassVar[list[Any]] = [pytest.mark.asyncio]
    driver_class: ClassVar[type[Driver[Any]]]
    fake_class: ClassVar[type[Any] | None] = None
    fake_kwargs: ClassVar[ConfigTable] = {}
    #: Driver settings laid over the fake's (e.g. ``{"send_client": "keepalive"}``).
    driver_settings: ClassVar[ConfigTable] = {}

    @pytest_asyncio.fixture
    async def harness(self) -> AsyncIterator[DriverHarness]:
        async with DriverHarness(
            self.driver_class,
            self.fake_class,
            name=self.driver_class.__name__.lower(),
            fake_kwargs=dict(self.fake_kwargs),
            settings=dict(self.driver_settings),
        ) as h:
            yield h

    async def test_batch_submit(self, harness: DriverHarness) -> None:
        """A batch is accepted with one result per message, each in the ledger exactly once."""
        await check_batch_submit(harness)

    async def test_validity_period(self, harness: DriverHarness) -> None:
        """Each message's ``valid_for`` reaches the provider as its validity period."""
        await check_validity_period(harness)

    async def test_per_recipient_rejection(self, harness: DriverHarness) -> None:
        """A recipient the provider refuses is rejected on its own; the rest are accepted."""
        await check_per_recipient_rejection(harness)

    async def test_rejected_request(self, harness: DriverHarness) -> None:
        """A refused request rejects every message and records nothing."""
        await check_rejected_request(harness)

    async def test_transient_429(self, harness: DriverHarness) -> None:
        """HTTP 429 is transient with the Retry-After delay."""
        await check_transient_429(harness)

    async def test_5xx_is_unknown(self, harness: DriverHarness) -> None:
        """A 5xx (500, 502, 503, 504) is an unknown outcome, never transient."""
        await check_5xx_is_unknown(harness)

    async def test_broken_answer_is_unknown(self, harness: DriverHarness) -> None:
        """A reset connection or an unreadable 2xx after the request was written is an unknown outcome."""
        await check_broken_answer_is_unknown(harness)

    async def test_unknown_on_hang(self, harness: DriverHarness) -> None:
        """No answer after the request was written is an unknown outcome."""
        await check_unknown_on_hang(harness)

    async def test_connection_refused(self, harness: DriverHarness) -> None:
        """A refused connection is transient."""
        await check_connection_refused(harness)

    async def test_wrong_credentials(self, harness: DriverHarness) -> None:
        """Wrong credentials send nothing: every message held (transient) or rejected, none unknown."""
        await check_wrong_credentials(harness)

    async def test_slow_answer(self, harness: DriverHarness) -> None:
        """A slow answer within the timeout is accepted."""
        await check_slow_answer(harness)

    async def test_delivery_reports(self, harness: DriverHarness) -> None:
        """The fake's delivery reports parse to our ids with the right tristate."""
        await check_delivery_reports(harness)

    async def test_spam_report(self, harness: DriverHarness) -> None:
        """A spam-filtering report is a failed delivery flagged as spam."""
        await check_spam_report(harness)

    async def test_webhook_auth_rejected(self, harness: DriverHarness) -> None:
        """Genuine webhooks authenticate; a wrong token or a tampered signed request is refused."""
        await check_webhook_auth_rejected(harness)

    async def test_inbound(self, harness: DriverHarness) -> None:
        """The fake's inbound messages authenticate and parse."""
        await check_inbound(harness)

    async def test_lookup(self, harness: DriverHarness) -> None:
        """Look-ups (if the driver has them) find sent messages and not unsent ones, safely."""
        await check_lookup(harness)
