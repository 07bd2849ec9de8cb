"""CLI commands of issue 11's "Before sending": names and filters in lists, estimate, preview, test send,
edit/archive, and following a trigger."""

from __future__ import annotations

import json
import re

import pytest

from trackly_exec.app import Trackly
from trackly_exec.store import constants as c

from .api_support import cli_create_campaign
from .api_support import run_cli as run
from .api_support import seed_direct as seed
from .campaign_fixtures import phone_for


async def test_campaign_list_names_and_filters(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`campaign list` shows names and filters by --name and --status (a paused campaign without a next run);
    stats print the name."""
    spec = await seed(trackly)
    await cli_create_campaign(admin_url, spec, name="Spring sale")
    await cli_create_campaign(admin_url, spec, name="Winter promo")
    assert await run(admin_url, "campaign", "pause", "2") == 0
    capsys.readouterr()
    assert await run(admin_url, "campaign", "list") == 0
    out = capsys.readouterr().out
    assert "Spring sale" in out and "Winter promo" in out
    assert await run(admin_url, "campaign", "list", "--name", "SPRING") == 0
    out = capsys.readouterr().out
    assert "Spring sale" in out and "Winter promo" not in out
    assert await run(admin_url, "campaign", "list", "--status", "paused") == 0
    out = capsys.readouterr().out
    assert "Spring sale" not in out and "Winter promo" in out
    assert "- (paused)" in out  # not a next run that will not happen while it is paused
    assert await run(admin_url, "stats", "1") == 0
    assert capsys.readouterr().out.startswith("campaign 1 'Spring sale': 0 execution(s)")


async def test_campaign_estimate_command(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`campaign estimate` prints who would be texted, skipped by reason, segments and cost; nothing is queued."""
    spec = await seed(trackly)
    await cli_create_campaign(admin_url, spec, name="Spring sale")
    capsys.readouterr()
    assert await run(admin_url, "campaign", "estimate", "1") == 0
    out = capsys.readouterr().out
    assert "campaign 1 'Spring sale': estimate (dry run, nothing queued)" in out
    assert "audience 1 'everyone'" in out and "unsubscribed 1" in out
    assert re.search(r"queued +19 ", out) and re.search(r"cost +0.19 ", out)
    assert await trackly.db[c.QUEUED].count_documents({}) == 0
    assert await run(admin_url, "campaign", "estimate", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 19
    await trackly.db[c.CREATIVES].update_one({"_id": 1}, {"$set": {"archived": True}})
    assert await run(admin_url, "campaign", "estimate", "1") == 1
    assert "cannot run: creative 1 is archived" in capsys.readouterr().err


async def test_preview_commands(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`creative preview` and `campaign preview` print each variant's body, encoding, segments and cost, and warn
    about placeholder typos and skips."""
    spec = await seed(trackly, body="Hi {first_name|there} from {citty}: https://x.example/a")
    await trackly.db[c.CONTACTS].update_one({"_id": 2}, {"$set": {"first_name": "Zoë"}})
    assert await run(admin_url, "creative", "preview", "1", "--audience", "1", "--contacts", "2,3", "--links") == 0
    out = capsys.readouterr().out
    assert "creative 1 'hello' on sending list 1 (price 0.01 per segment); 20 contacts scanned" in out
    assert "contact 2 +12122000002: SKIPPED (no value for {citty})" in out
    assert "{citty}: NOT a field of the list's contacts (did you mean {city}?); no default: 20 contacts" in out
    assert "! variant 'a': 20 of 20 contacts have no value" in out
    await trackly.db[c.CREATIVES].update_one(
        {"_id": 1}, {"$set": {"variants": [{"key": "a", "body": "Hi {first_name|there} from {city}", "weight": 1}]}}
    )
    await cli_create_campaign(admin_url, spec)
    capsys.readouterr()
    assert await run(admin_url, "campaign", "preview", "1", "--contacts", "2") == 0
    out = capsys.readouterr().out
    assert "contact 2 +12122000002: UCS-2, 16 UTF-16 units, 1 segment, cost 0.01" in out and "| Hi Zoë from Oslo" in out
    assert "no warnings" in out
    # a contact the run would skip says why (it read "no value for " with nothing after it), with its body
    await trackly.db[c.CONTACTS].update_one({"_id": 2}, {"$set": {"subscribed": False}})
    assert await run(admin_url, "campaign", "preview", "1", "--contacts", "2") == 0
    out = capsys.readouterr().out
    assert "contact 2 +12122000002: SKIPPED (unsubscribed)" in out and "| Hi Zoë from Oslo" in out, out
    assert await run(admin_url, "creative", "preview", "1", "--contacts", "x") == 1
    assert "--contacts takes contact ids" in capsys.readouterr().err


async def test_edit_archive_erase_commands(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`campaign edit`, `creative edit --json`, `campaign archive`, `list archive` and `contacts erase --yes`."""
    spec = await seed(trackly)
    await cli_create_campaign(admin_url, spec, name="Spring")
    capsys.readouterr()
    assert await run(admin_url, "campaign", "edit", "1", "--name", "Spring sale", "--description", "20% off") == 0
    assert json.loads(capsys.readouterr().out)["name"] == "Spring sale"
    assert (
        await run(
            admin_url,
            "creative",
            "edit",
            "1",
            "--json",
            json.dumps({"variants": [{"key": "a", "body": "New {first_name|you}"}]}),
        )
        == 0
    )
    assert (await trackly.db[c.CREATIVES].find_one({"_id": 1}))["variants"][0]["body"] == "New {first_name|you}"
    assert await run(admin_url, "campaign", "edit", "1") == 1
    assert "nothing to change" in capsys.readouterr().err
    assert await run(admin_url, "list", "archive", "1") == 1
    assert "is used by 'Spring sale' (campaign 1)" in capsys.readouterr().err
    assert await run(admin_url, "campaign", "archive", "1") == 0
    assert "campaign 1 'Spring sale' archived" in capsys.readouterr().out
    assert await run(admin_url, "list", "archive", "1") == 0
    assert await run(admin_url, "audience", "archive", "1") == 0
    capsys.readouterr()
    assert await run(admin_url, "campaign", "list") == 0
    assert "no campaigns" in capsys.readouterr().out
    assert await run(admin_url, "campaign", "list", "--archived") == 0
    assert "Spring sale" in capsys.readouterr().out
    assert await run(admin_url, "contacts", "erase", "3") == 1
    assert "--yes" in capsys.readouterr().err
    assert await run(admin_url, "contacts", "erase", "3", "--yes") == 0
    assert "contact 3 erased" in capsys.readouterr().out
    assert (await trackly.db[c.CONTACTS].find_one({"_id": 3}))["phone"] == "erased:3"


async def test_test_send_commands(
    admin_url: str,
    trackly: Trackly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`campaign test-send` and `creative test-send` queue test messages and say what was skipped and why."""
    spec = await seed(trackly)
    await cli_create_campaign(admin_url, spec)
    capsys.readouterr()
    assert await run(admin_url, "campaign", "test-send", "1", "--to", f"{phone_for(1)},{phone_for(2)}") == 0
    out = capsys.readouterr().out
    assert (
        f"{phone_for(1)}: NOT sent (unsubscribed" in out
        and f"{phone_for(2)}: queued (1 segment(s), GSM-7): 'Hi Ann2!'" in out
    )
    assert (
        await run(admin_url, "creative", "test-send", "1", "--list", "1", "--to", phone_for(1), "--override-opt-out")
        == 0
    )
    out = capsys.readouterr().out
    assert "overriding opt_out: recorded" in out and f"{phone_for(1)}: queued" in out
    # a test send that sent nothing exits 1 (a script tells it from one that went); the README's $API is taken too
    assert await run(admin_url + "/api/v1", "campaign", "test-send", "1", "--to", phone_for(1)) == 1
    assert "nothing was sent" in capsys.readouterr().err
    docs = await trackly.db[c.QUEUED].find({}).to_list(None)
    assert sorted(d["to_number"] for d in docs) == [phone_for(1), phone_for(2)]
    assert all(d["send_type"] == "test" for d in docs)
