"""Composition (campaigns/compose.py): placeholders, footer, tracked links and segments on the final text, both variants
end to end (the variant choice itself: test_variants.py; link tracking: test_shortlinks.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from trackly_exec.app import Trackly
from trackly_exec.campaigns.compose import Composer, TemplateError, check_body, parse_body, render
from trackly_exec.campaigns.scheduler import trigger
from trackly_exec.campaigns.variants import split_chooser
from trackly_exec.store import constants as c
from trackly_exec.store.models import MessageShortLink, QueuedTextMessage, Variant, utcnow

from .campaign_fixtures import contact, register_echo, seed_campaign

PERSON = {
    "_id": 7,
    "first_name": "Zoë",
    "last_name": "",
    "phone": "+12122000007",
    "attributes": {"city": "Lyon", "n": 3.0, "vip": True, "empty": "  "},
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Hi {first_name}!", "Hi Zoë!"),
        ("Hi {last_name|friend}", "Hi friend"),  # empty value -> default
        ("{city} / {attributes.city} / {n} / {vip}", "Lyon / Lyon / 3 / true"),
        ("{nope|}x", "x"),  # empty default is a default
        ("{{literal}} {{ and }}", "{literal} { and }"),
        ("{ first_name | there }", "Zoë"),
        ("call {phone}", "call +12122000007"),
    ],
)
def test_placeholders(body: str, expected: str) -> None:
    """Fields, attributes, defaults and escaped braces render as documented."""
    assert render(parse_body(body), PERSON) == expected


@pytest.mark.parametrize("body", ["Hi {last_name}", "{empty}", "{missing} there", "{attributes.nope}"])
def test_missing_placeholder_skips(body: str) -> None:
    """A placeholder with no value and no default gives None (the contact is skipped), never a brace."""
    assert render(parse_body(body), PERSON) is None


@pytest.mark.parametrize("body", ["Hi {first name}", "a } b", "{", "{a{b}}", "{1abc}"])
def test_bad_templates(body: str) -> None:
    """Stray braces and malformed placeholders are template errors (reported at creative creation)."""
    with pytest.raises(TemplateError):
        parse_body(body)
    assert check_body(body)


def test_composer_footer_links_and_segments() -> None:
    """The footer goes on its own line after link replacement; segments are computed on the final text."""
    creative = {
        "_id": 3,
        "variants": [{"key": "A", "body": "Hi {first_name|there}, see https://example.com/offer", "weight": 1}],
    }
    comp = Composer(
        execution={"_id": 9},
        campaign={"_id": 2, "account_id": 1, "track_links": True},
        sending_list={"_id": 1, "from_number": "+15550001111", "opt_out_footer": "STOP to end"},
        creative=creative,
        chooser=split_chooser([Variant(**creative["variants"][0])]),
        short_base="http://127.0.0.1:8080/l",
    )
    now = utcnow()
    made = comp.compose({"_id": 5, "first_name": None}, "+12122000005", now)
    assert made is not None
    doc, links = made
    code = links[0]["_id"]
    assert doc["body"] == f"Hi there, see http://127.0.0.1:8080/l/{code}\nSTOP to end"
    assert doc["length"] == len(doc["body"]) and doc["segments"] == 1 and doc["encoding"] == "GSM-7"
    msg = QueuedTextMessage.from_doc(doc)
    assert msg.execution_id == 9 and msg.contact_id == 5 and msg.variant_key == "A" and msg.sendtime == now
    link = MessageShortLink.from_doc(links[0])
    assert link.message_id == msg.id and link.destination == "https://example.com/offer" and link.creative_id == 3
    long = comp.compose({"_id": 6, "first_name": "ж" * 80}, "+12122000006", now)
    assert long is not None and long[0]["encoding"] == "UCS-2"
    assert long[0]["length"] == 80 + 9 + 36 + 12 and long[0]["segments"] == 3  # 137 units / 67 per part


async def test_variants_and_links_end_to_end(trackly: Trackly) -> None:
    """A triggered two-variant campaign with tracked links queues both variants and one short link per message."""
    register_echo()
    await seed_campaign(
        trackly.store,
        contacts=[contact(i) for i in range(1, 401)],
        variants=[
            {"key": "A", "body": "A {first_name}: https://ex.com/a", "weight": 1},
            {"key": "B", "body": "B {first_name}: https://ex.com/b", "weight": 1},
        ],
        campaign_kw={"track_links": True},
    )
    eid = await trigger(trackly, 1)
    ex = await trackly.db[c.EXECUTIONS].find_one({"_id": eid})
    v = ex["counts"]["variants"]
    assert set(v) == {"A", "B"} and v["A"] + v["B"] == 400 and 150 < v["A"] < 250
    assert ex["counts"]["links"] == 400 == await trackly.db[c.SHORT_LINKS].count_documents({"execution_id": eid})
    doc = await trackly.db[c.QUEUED].find_one({"contact_id": 5})
    link = await trackly.db[c.SHORT_LINKS].find_one({"message_id": doc["_id"]})
    assert (
        doc["body"].endswith(f"/l/{link['_id']}")
        and link["destination"] == f"https://ex.com/{doc['variant_key'].lower()}"
    )
    assert doc["sendtime"] <= utcnow() + dt.timedelta(seconds=1)


def test_placeholders_inside_a_url_are_percent_encoded() -> None:
    """A placeholder in a word that starts with http:// or https:// (any case) is percent-encoded, so the URL stays
    one URL and is tracked whole; a placeholder elsewhere, or one standing for a whole URL, is inserted as it is."""
    body = "Hi {first_name}! https://shop.example.com/{city}/deals?who={first_name}&p={phone} HTTPS://x.io/{city} {url}"
    person = {"_id": 1, "first_name": "Mary Ann", "attributes": {"city": "New York", "url": "https://y.io/a"}}
    out = render(parse_body(body), person, "+12125550101")  # type: ignore[arg-type]
    assert out == (
        "Hi Mary Ann! https://shop.example.com/New%20York/deals?who=Mary%20Ann&p=%2B12125550101 "
        "HTTPS://x.io/New%20York https://y.io/a"
    )
    defaulted = render(parse_body("https://a.io/?n={nick|a friend}"), {"_id": 2})  # type: ignore[arg-type]
    assert defaulted == "https://a.io/?n=a%20friend"
