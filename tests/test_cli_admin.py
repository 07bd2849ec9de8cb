"""The admin CLI against a real admin API server (the blocking CLI runs in a thread beside the server)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trackly_exec.app import Trackly
from trackly_exec.cli import admin
from trackly_exec.cli import main as cli
from trackly_exec.store import constants as c
from trackly_exec.store.embedded import free_port

from .api_support import run_cli as run


async def setup_list(trackly: Trackly) -> tuple[int, int]:
    await trackly.db[c.ACCOUNTS].insert_one({"_id": 1, "name": "A", "balance": 10.0})
    await trackly.db[c.SENDING_LISTS].insert_one(
        {"_id": 1, "account_id": 1, "name": "L", "driver": "echo", "driver_settings": {}, "from_number": "+15550001111"}
    )
    return 1, 1


async def test_contacts_import_reports_rejects_by_line(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV imports in chunks; bad rows are reported with their CSV line and the good rows are stored."""
    await setup_list(trackly)
    f = tmp_path / "contacts.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["phone", "first_name", "last_name", "timezone", "subscribed", "in_workflow", "tier", "zip"])
        for i in range(2500):
            phone = "not-a-phone" if i % 500 == 7 else f"+1212{3000000 + i:07d}"
            w.writerow(
                [
                    phone,
                    f"F{i}",
                    "L",
                    "America/New_York" if i % 2 else "",
                    "yes",
                    "" if i % 3 else "true",
                    "gold" if i % 4 == 0 else "silver",
                    "01234",
                ]
            )
    rejects = tmp_path / "rejects.csv"
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1", "--rejects", str(rejects)) == 0
    out = capsys.readouterr()
    assert "inserted 2,495, updated 0, rejected 5" in out.out
    assert "line 9: invalid phone number" in out.out  # row 7 is on line 9 (header is line 1)
    assert "imported 2,500/2,500 rows (inserted 2,495, updated 0, rejected 5)" in out.err  # agrees with the summary
    lines = list(csv.reader(rejects.read_text().splitlines()))
    assert lines[0] == ["line", "phone", "reason"] and [r[0] for r in lines[1:]] == ["9", "509", "1009", "1509", "2009"]
    assert await trackly.db[c.CONTACTS].count_documents({"sending_list_id": 1}) == 2495
    doc = await trackly.db[c.CONTACTS].find_one({"phone": "+12123000003"})
    assert doc["attributes"] == {"tier": "silver", "zip": "01234"} and doc["timezone"] == "America/New_York"
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 0
    assert "inserted 0, updated 2,495, rejected 5" in capsys.readouterr().out


async def test_the_shipped_sample_contacts_import(
    admin_url: str, trackly: Trackly, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/contacts.csv, the README's first-campaign sample: seven contacts (a national number among them), one
    unsubscribed, one in a workflow, and one number that is none (rejected, with its line)."""
    await setup_list(trackly)
    sample = Path(__file__).resolve().parent.parent / "examples" / "contacts.csv"
    assert await run(admin_url, "contacts", "import", str(sample), "--list", "1") == 0
    out = capsys.readouterr().out
    assert "inserted 7, updated 0, rejected 1" in out and "line 9: invalid phone number" in out
    assert await trackly.db[c.CONTACTS].count_documents({"sending_list_id": 1, "subscribed": False}) == 1
    assert await trackly.db[c.CONTACTS].find_one({"phone": "+16465550105"}) is not None


async def test_import_progress_agrees_with_its_summary(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A phone repeated in another spelling is skipped as a duplicate: the last progress line counts it as read
    and rejected, as the summary does (it said 2/3 rows, rejected 1, above a summary of rejected 2)."""
    await setup_list(trackly)
    f = tmp_path / "d.csv"
    f.write_text("phone\n+12125550101\n(212) 555-0101\nnot a phone\n")
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 0
    out = capsys.readouterr()
    assert "inserted 1, updated 0, rejected 2" in out.out
    assert "imported 3/3 rows (inserted 1, updated 0, rejected 2)" in out.err


async def test_import_reads_last_sent_at_as_a_field(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``Last Sent`` column is the contact's ``last_sent_at`` (the frequency cap reads it), not a text attribute;
    an empty cell leaves it unset."""
    import datetime as dt

    await setup_list(trackly)
    f = tmp_path / "contacts.csv"
    f.write_text("phone;Last Sent;tier\n+12125550101;2026-11-30 10:00;gold\n+12125550102;;silver\n")
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 0
    assert "inserted 2, updated 0, rejected 0" in capsys.readouterr().out
    a = await trackly.db[c.CONTACTS].find_one({"phone": "+12125550101"})
    b = await trackly.db[c.CONTACTS].find_one({"phone": "+12125550102"})
    assert a["last_sent_at"] == dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC) and a["attributes"] == {"tier": "gold"}
    assert b["last_sent_at"] is None and b["attributes"] == {"tier": "silver"}


async def test_import_errors_are_clear(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown list, a missing phone column and a wrong token exit non-zero with a clear message."""
    f = tmp_path / "c.csv"
    f.write_text("phone\n+12125550100\n")
    assert await run(admin_url, "contacts", "import", str(f), "--list", "42") == 1
    assert "sending list 42 not found" in capsys.readouterr().err
    await setup_list(trackly)
    f.write_text("name\nbob\n")
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 1
    assert "'phone' column" in capsys.readouterr().err
    # a line that is not UTF-8 is rejected by its number; the lines around it are imported
    f.write_bytes("phone,first_name\n+12125550100,Ann\n+12125550101,Jos\xe9\n+12125550102,Cy\n".encode("latin-1"))
    assert await run(admin_url, "contacts", "import", str(f), "--list", "1") == 0
    out = capsys.readouterr()
    assert "inserted 2, updated 0, rejected 1" in out.out and "line 3" in out.out + out.err, out
    assert "not UTF-8" in out.out + out.err
    assert await trackly.db[c.CONTACTS].count_documents({"phone": {"$in": ["+12125550100", "+12125550102"]}}) == 2
    for bad in ("xx", '"'):
        assert await run(admin_url, "contacts", "import", str(f), "--list", "1", "--delimiter", bad) == 1
        assert "--delimiter" in capsys.readouterr().err
    assert await run("notaurl", "contacts", "import", str(f), "--list", "1") == 1
    assert "--api 'notaurl'" in capsys.readouterr().err
    code = await asyncio.to_thread(cli.main, ["campaign", "list", "--api", admin_url, "--token", "wrong"])
    assert code == 1 and "refused the API token" in capsys.readouterr().err


async def test_unwritable_output_files_are_refused_before_any_work(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--rejects`` and ``export -o`` naming a missing directory or a directory: a one-line error before anything is
    imported or downloaded (no rejected-rows list lost after an import), never a traceback."""
    await setup_list(trackly)
    f = tmp_path / "c.csv"
    f.write_text("phone\n+12125550100\nnot-a-phone\n")
    for target, why in ((tmp_path / "no" / "r.csv", "no such directory"), (tmp_path, "is a directory")):
        assert await run(admin_url, "contacts", "import", str(f), "--list", "1", "--rejects", str(target)) == 1
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err
        code = await asyncio.to_thread(
            cli.main, ["export", "--campaign", "1", "-o", str(target), "--api", admin_url, "--token", "test-token"]
        )
        err = capsys.readouterr().err
        assert code == 1 and why in err and "Traceback" not in err, err
    assert await trackly.db[c.CONTACTS].count_documents({}) == 0  # nothing was imported
    assert not list(tmp_path.glob("*.part"))


async def test_account_commands(admin_url: str, trackly: Trackly, capsys: pytest.CaptureFixture[str]) -> None:
    """trackly account show / edit / top-up / debit go through the API; a debit past zero and a bad amount are
    clear errors."""
    await setup_list(trackly)
    assert await run(admin_url, "account", "top-up", "1", "2.5", "--note", "invoice 7") == 0
    assert "balance 12.5 (+2.5)" in capsys.readouterr().out
    assert await run(admin_url, "account", "debit", "1", "20") == 1
    assert "cannot be debited" in capsys.readouterr().err
    assert await run(admin_url, "account", "edit", "1", "--json", '{"filter_bots": true}', "--name", "B") == 0
    capsys.readouterr()
    assert await run(admin_url, "account", "show", "1") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["filter_bots"], shown["balance"]) == ("B", True, 12.5)
    for command, bad in (("top-up", "lots"), ("top-up", "-5"), ("debit", "-5"), ("debit", "0")):
        with pytest.raises(SystemExit):  # a negative amount is refused, not turned around
            await run(admin_url, "account", command, "1", bad)
        assert "invalid amount value" in capsys.readouterr().err
    assert (await trackly.db[c.ACCOUNTS].find_one({"_id": 1}))["balance"] == 12.5


async def test_campaign_commands_and_stats(
    admin_url: str, trackly: Trackly, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """campaign create/list/pause/resume and stats work through the API."""
    await setup_list(trackly)
    await trackly.db[c.AUDIENCES].insert_one({"_id": 1, "sending_list_id": 1, "name": "a", "filter": {}})
    await trackly.db[c.CREATIVES].insert_one(
        {
            "_id": 1,
            "account_id": 1,
            "name": "c",
            "selection": "split",
            "variants": [{"key": "a", "body": "hi", "weight": 1}],
        }
    )
    spec = {"account_id": 1, "sending_list_id": 1, "audience_ids": [1], "creative_id": 1, "track_links": True}
    f = tmp_path / "camp.json"
    f.write_text(json.dumps(spec))
    assert await run(admin_url, "campaign", "create", "--file", str(f)) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["status"] == "active" and created["track_links"] is True
    assert await run(admin_url, "campaign", "create", "--json", json.dumps({**spec, "creative_id": 9})) == 1
    assert "HTTP 422: creative_id: creative 9 does not exist" in capsys.readouterr().err
    assert await run(admin_url, "campaign", "pause", str(created["id"])) == 0
    assert "is paused" in capsys.readouterr().out
    assert await run(admin_url, "campaign", "list") == 0
    assert "paused" in capsys.readouterr().out
    assert await run(admin_url, "campaign", "resume", str(created["id"])) == 0
    await trackly.db[c.SENDING_LISTS].update_one({"_id": 1}, {"$set": {"active": False}})
    assert await run(admin_url, "campaign", "trigger", str(created["id"])) == 1
    assert "failed:" in capsys.readouterr().err
    await trackly.db[c.SENT].insert_many(
        [{"_id": f"m{i}", "campaign_id": created["id"], "variant_key": "a", "delivered": i < 3} for i in range(4)]
    )
    await trackly.db[c.FAILED].insert_one(
        {"_id": "f1", "campaign_id": created["id"], "variant_key": "a", "reason": "PROVIDER_ERROR"}
    )
    capsys.readouterr()
    assert await run(admin_url, "stats", str(created["id"])) == 0
    out = capsys.readouterr().out
    assert "sent (accepted)           4" in out and "delivered                 3" in out and "PROVIDER_ERROR 1" in out


def test_daemon_not_running_message(tmp_path: Path) -> None:
    """With no daemon listening, the CLI says so (at the configured address) and how to start it, and exits 1."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[http]\nport = {free_port()}\napi_tokens = ["t"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "campaign", "list", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "cannot reach the trackly daemon" in r.stderr and "trackly run" in r.stderr
    port = cfg.read_text().split("port = ")[1].split()[0]
    r = subprocess.run(
        [sys.executable, "-m", "trackly_exec.cli", "-c", str(cfg), "stats", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr  # -c before the command is honoured too


def test_campaign_example_is_a_valid_body(capsys: pytest.CaptureFixture[str]) -> None:
    """`trackly campaign create --example` prints a campaign body the API accepts."""
    from trackly_exec.api.models_campaigns import CampaignIn

    assert cli.main(["campaign", "create", "--example"]) == 0
    CampaignIn.model_validate(json.loads(capsys.readouterr().out))


def test_the_cli_reaches_the_operator_listener_and_names_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``http.operator_port`` set the admin API is only on the operator listener: the CLI goes there by default
    (it used to call host:port and got a 404); a daemon it cannot reach is named with the config actually used."""
    port = free_port()
    conf = tmp_path / "ops.toml"
    conf.write_text(f'[http]\nport = 9\noperator_port = {port}\napi_tokens = ["t"]\n')
    for key in [k for k in os.environ if k.startswith("TRACKLY_")]:
        monkeypatch.delenv(key)
    client = admin.client_from(argparse.Namespace(api=None, token=None, config=str(conf)))
    assert client.base == f"http://127.0.0.1:{port}" and client.token == "t"
    with pytest.raises(admin.CliError, match=rf"cannot reach the trackly daemon at http://127.0.0.1:{port}") as e:
        client.call("GET", "/campaigns")
    assert f"trackly run -c {conf}" in str(e.value)


def test_a_single_problem_names_its_field() -> None:
    """The admin API's 422 with one problem is one line naming the field (a bad cron used to print only "Bad minute
    ..."); several problems are listed each with its field."""
    one = {
        "error": "validation",
        "message": "Bad minute",
        "details": [{"loc": "body.schedule.cron", "msg": "Bad minute"}],
    }
    assert admin._describe(422, json.dumps(one).encode()) == "HTTP 422: schedule.cron: Bad minute"
    two = {
        "message": "a; b",
        "details": [{"loc": "body.name", "msg": "a"}, {"loc": "body.sending_list_id", "msg": "b"}],
    }
    assert admin._describe(422, json.dumps(two).encode()) == (
        "HTTP 422: the request was refused\n  body.name: a\n  body.sending_list_id: b"
    )


def test_without_a_config_the_cli_says_none_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin command run where there is no trackly.toml (an operator's shell after the systemd install) says that
    no config file was read and how to name the daemon's, not only that a token is missing."""
    from trackly_exec.cli import main as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKLY_CONFIG", raising=False)
    assert cli.main(["stats", "1"]) == 1
    err = capsys.readouterr().err
    assert "no config file was read" in err and "TRACKLY_CONFIG" in err and "-c" in err, err
    (tmp_path / "trackly.toml").write_text("[http]\nport = 8080\n")
    assert cli.main(["stats", "1"]) == 1
    err = capsys.readouterr().err
    assert "sets no http.api_tokens" in err and "trackly.toml" in err, err


def test_run_without_a_config_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trackly run` in a directory without trackly.toml (a wrong directory, a typo'd TRACKLY_CONFIG) says so and exits
    2, as the other commands do; it started a daemon on every default (no driver, no token) and said nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKLY_CONFIG", raising=False)
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "no config file to run with" in err and "-c" in err
    assert not (tmp_path / ".trackly").exists()  # nothing started
