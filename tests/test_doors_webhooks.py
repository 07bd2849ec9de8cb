"""Provider webhooks fail closed: no credential configured means a generated token, never an open door."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from trackly_drivers.infobip import InfobipDriver
from trackly_drivers.twilio import TwilioDriver

from trackly_exec.cli import main as cli
from trackly_exec.config import Settings
from trackly_exec.drivers.contract import WebhookRequest
from trackly_exec.drivers.pool import DriverPool
from trackly_exec.errors import WebhookAuthError
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store

from .doors_support import mo
from .tracking_support import (
    Daemon,
    infobip_body,
    infobip_report,
    seed_account,
    seed_contact,
    seed_list,
    seed_sent,
    snapshot,
    start_daemon,
    tri,
)

TOKENS_FILE = "webhook_tokens.json"
PHONE = "+14155550123"
NO_TOKEN = {"infobip": {"webhook_token": None}, "cm": {"webhook_token": None}}


@pytest.fixture
async def open_daemon(settings: Settings, store: Store) -> AsyncIterator[Daemon]:
    """The daemon with no webhook_token configured for infobip and cm (as in the shipped trackly.toml)."""
    async for d in start_daemon(settings, store, drivers=NO_TOKEN):
        yield d


async def _seed(store: Store) -> None:
    await seed_account(store)
    await seed_list(store)
    await seed_contact(store, contact_id=1, phone=PHONE)
    await seed_contact(store, contact_id=2, phone="+14155550124")
    await seed_sent(store, 1, to_number=PHONE, contact_id=1)


async def test_forged_reports_without_configured_token_change_nothing(open_daemon: Daemon) -> None:
    """No webhook_token in the config: a forged REJECTED_DND report and forged STOPs are refused (403)."""
    d = open_daemon
    await _seed(d.store)
    before = await snapshot(d.store)
    dnd = infobip_body(infobip_report(f"{0:016x}", "REJECTED_DND", "REJECTED", error="EC_DND"))
    for path in ("/webhooks/infobip/status", "/webhooks/infobip/status/x", "/webhooks/infobip/status/None"):
        assert (await d.post(path, dnd))[0] == 403
    for path in ("/webhooks/infobip/inbound", "/webhooks/infobip/inbound/"):
        assert (await d.post(path, mo("STOP", sender="+14155550124")))[0] in (403, 404)
    cm_stop = json.dumps({"reference": "r1", "from": "0014155550124", "to": "0014155550100", "body": "STOP"})
    assert (await d.post("/webhooks/cm/inbound", cm_stop))[0] == 403
    assert await snapshot(d.store) == before


async def test_generated_token_is_persisted_and_works(open_daemon: Daemon, settings: Settings) -> None:
    d = open_daemon
    await _seed(d.store)
    path = Path(settings.daemon.data_dir) / TOKENS_FILE
    tokens = json.loads(path.read_text())
    assert set(tokens) == {"infobip", "cm"} and all(len(t) >= 32 for t in tokens.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    driver = await d.trackly.drivers.get("infobip")
    assert driver.context.status_url.endswith(f"/webhooks/infobip/status/{tokens['infobip']}")
    status, _ = await d.post(f"/webhooks/infobip/inbound/{tokens['infobip']}", mo("STOP"))
    assert status == 200
    assert tri((await d.store[c.CONTACTS].find_one({"_id": 1}))["subscribed"]) is False
    # the same token on the next start (providers keep the URL they were given)
    again = DriverPool(settings.model_copy(update={"drivers": {**settings.drivers}}), generate_tokens=True)
    assert again.build("infobip").context.status_url == driver.context.status_url


async def test_explicit_opt_in_accepts_unauthenticated(settings: Settings, store: Store) -> None:
    async for d in start_daemon(
        settings, store, drivers={"infobip": {"webhook_token": None, "allow_unauthenticated_webhooks": True}}
    ):
        await _seed(d.store)
        assert (await d.post("/webhooks/infobip/inbound", mo("STOP")))[0] == 200
        assert tri((await d.store[c.CONTACTS].find_one({"_id": 1}))["subscribed"]) is False
        assert not (Path(settings.daemon.data_dir) / TOKENS_FILE).exists()


def _hook(url: str = "http://127.0.0.1:8080/webhooks/x/status", token: str | None = None) -> WebhookRequest:
    return WebhookRequest(url=url, headers={}, body=b"{}", content_type="application/json", path_token=token)


def test_driver_without_credential_refuses_every_webhook() -> None:
    """The base class fails closed when nothing authenticates the webhook (a pool that generated no token)."""
    ib = InfobipDriver(InfobipDriver.settings_model.model_validate({"api_key": "k"}))
    with pytest.raises(WebhookAuthError):
        ib.authenticate(_hook())
    with pytest.raises(WebhookAuthError):
        ib.authenticate(_hook(token="anything"))
    tw = TwilioDriver(TwilioDriver.settings_model.model_validate({"account_sid": "AC" + "0" * 32}))
    from trackly_drivers.twilio import compute_signature

    url = "http://127.0.0.1:8080/webhooks/twilio/inbound"
    forged = WebhookRequest(
        url=url,
        headers={"X-Twilio-Signature": compute_signature("", url, {"Body": ["STOP"]})},
        body=b"Body=STOP",
        content_type="application/x-www-form-urlencoded",
    )
    with pytest.raises(WebhookAuthError):
        tw.authenticate(forged)


def test_check_config_names_missing_webhook_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.toml"
    f.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n[drivers.infobip]\napi_key = "k"\n'
        f'[drivers.twilio]\naccount_sid = "AC1"\n[drivers.cm]\nwebhook_token = "t0123456789"\n'
    )
    assert cli.main(["-c", str(f), "check-config"]) == 0
    err = capsys.readouterr().err
    assert (
        "drivers.infobip.webhook_token" in err
        and "drivers.twilio.auth_token" in err
        and "drivers.cm.webhook_token" not in err
    )
    assert not (tmp_path / "data").exists()  # check-config writes nothing


def test_webhook_urls_command_prints_the_generated_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.toml"
    f.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n[http]\npublic_url = "https://sms.acmeshoes.io"\n'
        f'[drivers.infobip]\napi_key = "k"\n'
    )
    assert cli.main(["-c", str(f), "webhook-urls"]) == 0
    out = capsys.readouterr().out
    token = json.loads((tmp_path / "data" / TOKENS_FILE).read_text())["infobip"]
    assert f"https://sms.acmeshoes.io/webhooks/infobip/status/{token}" in out
    assert f"https://sms.acmeshoes.io/webhooks/infobip/inbound/{token}" in out
    assert cli.main(["-c", str(f), "check-config"]) == 0
    assert "webhook_token" not in capsys.readouterr().err
    # a config without a driver instance: said so, not a silent empty answer
    f.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n')
    assert cli.main(["-c", str(f), "webhook-urls"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "configures no driver instance" in out.err, out


def test_processes_starting_together_share_one_generated_token(tmp_path: Path) -> None:
    """A daemon, ``trackly fake-provider`` and ``trackly webhook-urls`` starting at once on a fresh data_dir: every
    one takes the one token the file keeps (each generated its own before, and the daemon refused the fake's STOPs
    with 403 until restarted)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from trackly_exec.config import load_config\n"
        "from trackly_exec.drivers.pool import DriverPool\n"
        f"s = load_config(None, daemon={{'data_dir': {str(tmp_path)!r}}}, drivers={{'infobip': {{'api_key': 'k'}}, "
        "'cm': {'product_token': '00000000-0000-0000-0000-000000000001'}})\n"
        "pool = DriverPool(s, generate_tokens=True)\n"
        "print(pool.build('infobip').context.status_url, pool.build('cm').context.status_url)\n"
    )
    for _ in range(3):
        for f in tmp_path.iterdir():
            f.unlink()
        procs = [
            subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
            for _ in range(6)
        ]
        urls = {p.communicate(timeout=60)[0].strip().splitlines()[-1] for p in procs}
        assert all(p.returncode == 0 for p in procs)
        tokens = json.loads((tmp_path / TOKENS_FILE).read_text())
        assert urls == {
            f"http://127.0.0.1:8080/webhooks/infobip/status/{tokens['infobip']} "
            f"http://127.0.0.1:8080/webhooks/cm/status/{tokens['cm']}"
        }, urls
