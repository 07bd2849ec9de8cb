"""Variant choice (campaigns/variants.py): the deterministic percentage split and the learned choice (Thompson
sampling on human click rates)."""

from __future__ import annotations

from collections import Counter

from trackly_exec.app import Trackly
from trackly_exec.campaigns.variants import chooser_for, split_chooser, thompson_shares, variant_stats
from trackly_exec.store import constants as c
from trackly_exec.store.models import Variant, utcnow


def test_split_is_within_one_point_over_100k() -> None:
    """The deterministic split lands within 1 point of 70/20/10 over 100k contacts and is stable per contact."""
    ch = split_chooser(
        [
            Variant(key="A", body="a", weight=70),
            Variant(key="B", body="b", weight=20),
            Variant(key="C", body="c", weight=10),
            Variant(key="Z", body="z", weight=0),
        ]
    )
    got = Counter(ch.choose(42, cid) for cid in range(100_000))
    assert abs(got["A"] / 1000 - 70) < 1 and abs(got["B"] / 1000 - 20) < 1 and abs(got["C"] / 1000 - 10) < 1
    assert got["Z"] == 0
    assert all(ch.choose(42, cid) == ch.choose(42, cid) for cid in range(100))
    assert Counter(ch.choose(43, cid) for cid in range(1000)) != Counter(ch.choose(42, cid) for cid in range(1000))


def test_thompson_prefers_the_better_variant() -> None:
    """With clear evidence the better click rate gets nearly all traffic; with equal evidence it is shared."""
    shares = thompson_shares([(1000, 100), (1000, 20)], seed=1)
    assert shares[0] > 0.99
    even = thompson_shares([(1000, 50), (1000, 50)], seed=1)
    assert 0.4 < even[0] < 0.6


async def test_learned_uses_human_clicks_after_enough_sends(trackly: Trackly) -> None:
    """Learned selection uses the split until each variant has N sends, then favours the variant with more human clicks."""
    creative = {
        "_id": 1,
        "selection": "learned",
        "variants": [{"key": "A", "body": "a", "weight": 1}, {"key": "B", "body": "b", "weight": 1}],
    }
    assert (await chooser_for(trackly.db, creative, 1, min_sends=50)).mode == "split"
    sent = [
        {"_id": f"{k}{i}", "creative_id": 1, "variant_key": k, "sending_list_id": 1, "timestamp": utcnow()}
        for k in "AB"
        for i in range(60)
    ]
    await trackly.db[c.SENT].insert_many(sent)
    # A: 30 human clicks over 10 messages... counted once per message; B: 20 distinct clicked messages.
    # Bot clicks on A do not count.
    clicks = (
        [
            {"code": f"x{i}", "message_id": f"A{i % 10}", "creative_id": 1, "variant_key": "A", "bot": False}
            for i in range(30)
        ]
        + [
            {"code": f"y{i}", "message_id": f"A{10 + i}", "creative_id": 1, "variant_key": "A", "bot": True}
            for i in range(40)
        ]
        + [
            {"code": f"z{i}", "message_id": f"B{i}", "creative_id": 1, "variant_key": "B", "bot": False}
            for i in range(20)
        ]
    )
    await trackly.db[c.CLICKS].insert_many(clicks)
    ch = await chooser_for(trackly.db, creative, 1, min_sends=50)
    assert ch.mode == "learned" and ch.keys == ("A", "B") and ch.shares[1] > 0.9


async def test_learned_stats_leave_out_test_sends_and_rejected_sends(trackly: Trackly) -> None:
    """A variant's trials are its campaign sends the provider accepted: test sends (and their clicks) and rejected
    sends count neither toward ``learned_min_sends`` nor against its click rate."""
    base = {"creative_id": 1, "sending_list_id": 1, "timestamp": utcnow()}
    sent = [{**base, "_id": f"A{i}", "variant_key": "A", "submitted": True} for i in range(10)]
    sent += [{**base, "_id": f"T{i}", "variant_key": "A", "submitted": True, "send_type": "test"} for i in range(5)]
    sent += [{**base, "_id": f"R{i}", "variant_key": "A", "submitted": False} for i in range(5)]
    await trackly.db[c.SENT].insert_many(sent)
    clicks = [
        {"code": f"c{m}", "message_id": m, "creative_id": 1, "variant_key": "A", "bot": False}
        for m in ("A0", "A1", "T0", "T1", "R0")
    ]
    await trackly.db[c.CLICKS].insert_many(clicks)
    assert await variant_stats(trackly.db, 1, ["A"]) == {"A": (10, 2)}


async def test_a_variant_switched_off_is_neither_sent_nor_waited_for(trackly: Trackly) -> None:
    """Weight 0 switches a variant off in a learned choice too: a variant switched off after it won is not sent
    (all went to it before), and one that was never on does not keep the others on the split for want of sends."""
    variants = [{"key": k, "body": k, "weight": 1} for k in "abc"]
    creative = {"_id": 1, "selection": "learned", "variants": variants}
    sent = [
        {"_id": f"{k}{i}", "creative_id": 1, "variant_key": k, "sending_list_id": 1, "timestamp": utcnow()}
        for k in "abc"
        for i in range(60)
    ]
    await trackly.db[c.SENT].insert_many(sent)
    clicks = [
        {"code": f"c{i}", "message_id": f"c{i}", "creative_id": 1, "variant_key": "c", "bot": False} for i in range(40)
    ] + [{"code": f"b{i}", "message_id": f"b{i}", "creative_id": 1, "variant_key": "b", "bot": False} for i in range(5)]
    await trackly.db[c.CLICKS].insert_many(clicks)
    on = await chooser_for(trackly.db, creative, 7, min_sends=50)
    assert on.mode == "learned" and on.shares[on.keys.index("c")] > 0.99
    variants[2]["weight"] = 0  # c switched off after it won
    off = await chooser_for(trackly.db, creative, 7, min_sends=50)
    assert off.mode == "learned" and off.keys == ("a", "b") and off.shares[1] > 0.9
    assert Counter(off.choose(7, cid) for cid in range(2000))["c"] == 0
    # a variant that was never on (no sends) does not hold the others back
    creative2 = {"_id": 2, "selection": "learned", "variants": [*variants[:2], {"key": "z", "body": "z", "weight": 0}]}
    await trackly.db[c.SENT].insert_many(
        [{**d, "_id": f"2{d['_id']}", "creative_id": 2} for d in sent if d["variant_key"] != "c"]
    )
    await trackly.db[c.CLICKS].insert_many(
        [
            {**d, "_id": f"2{i}", "message_id": f"2{d['message_id']}", "creative_id": 2}
            for i, d in enumerate(clicks)
            if d["variant_key"] == "b"
        ]
    )
    learned = await chooser_for(trackly.db, creative2, 7, min_sends=50)
    assert learned.mode == "learned" and learned.keys == ("a", "b") and learned.shares[1] > 0.9
