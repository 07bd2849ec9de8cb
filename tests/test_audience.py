"""Audience filters (whitelisted operators) and the streamed, de-duplicated union of audiences."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from trackly_exec.campaigns.audience import (
    FilterError,
    UnionCounts,
    audience_query,
    compile_filter,
    count_query,
    union,
)
from trackly_exec.store import constants as c
from trackly_exec.store.client import Store


def test_compile_operators() -> None:
    """Every whitelisted operator compiles to its MongoDB form; shorthand equality and $-prefixes work."""
    q = compile_filter(
        {
            "and": [
                {"attributes.tier": {"eq": "gold"}},
                {"or": [{"first_name": {"exists": True}}, {"attributes.age": {"gte": 21, "lt": 65}}]},
            ],
            "blocked": False,
        }
    )
    assert q == {
        "$and": [
            {
                "$and": [
                    {"attributes.tier": {"$eq": "gold"}},
                    {"$or": [{"first_name": {"$exists": True}}, {"attributes.age": {"$gte": 21, "$lt": 65}}]},
                ]
            },
            {"blocked": {"$eq": False}},
        ]
    }
    assert compile_filter({"attributes.city": {"$in": ["Paris", "Lyon"], "nin": ["X"]}}) == {
        "attributes.city": {"$in": ["Paris", "Lyon"], "$nin": ["X"]}
    }
    assert compile_filter(None) == {} and compile_filter({}) == {}
    assert compile_filter({"id": {"gt": 5}}) == {"_id": {"$gt": 5}}
    d = compile_filter({"created_at": {"gte": "2026-01-01T00:00:00Z"}})["created_at"]["$gte"]
    assert d.year == 2026 and d.tzinfo is not None


@pytest.mark.parametrize(
    ("flt", "path", "words"),
    [
        ({"phone": {"regex": ".*"}}, "filter.phone.regex", "not allowed"),
        ({"$where": "1"}, "filter.$where", "unknown field"),
        ({"attributes.x": {"eq": {"$gt": ""}}}, "filter.attributes.x.eq", "expected a string"),
        ({"or": []}, "filter.or", "non-empty list"),
        ({"and": [{"first_name": {"in": "abc"}}]}, "filter.and[0].first_name.in", "takes a list"),
        ({"secret_field": 1}, "filter.secret_field", "unknown field"),
        ({"attributes.a.b": 1}, "filter.attributes.a.b", "unknown field"),
        ({"blocked": {"exists": "yes"}}, "filter.blocked.exists", "true or false"),
        ({"eq": 5}, "filter.eq", "needs a field"),
        ({"first_name": {}}, "filter.first_name", "empty condition"),
        ([1], "filter", "expected an object"),
        # a value of another kind than its field's matched nobody in silence
        ({"created_at": {"$gt": "notadate"}}, "filter.created_at.$gt", "expected a date"),
        ({"last_sent_at": {"lt": 5}}, "filter.last_sent_at.lt", "expected a date"),
        ({"last_sent_at": {"gt": "9999-12-31T23:59:59-23:59"}}, "filter.last_sent_at.gt", "date out of range"),
        ({"updated_at": "0001-01-01T00:00:00+14:00"}, "filter.updated_at", "date out of range"),
        ({"subscribed": {"$gt": "x"}}, "filter.subscribed.$gt", "true or false"),
        ({"blocked": 1}, "filter.blocked", "true or false"),
        ({"phone": {"$in": [1, 2]}}, "filter.phone.$in[0]", "expected a string"),
        ({"id": {"gt": "5"}}, "filter.id.gt", "expected an integer"),
    ],
)
def test_rejects_outside_whitelist(flt: Any, path: str, words: str) -> None:
    """Anything outside the whitelist is refused with the path of the problem and a clear reason."""
    with pytest.raises(FilterError) as e:
        compile_filter(flt)
    assert e.value.path == path and words in str(e.value)


async def _seed(store: Store, n: int, list_id: int = 1) -> None:
    docs = [
        {
            "_id": i,
            "sending_list_id": list_id,
            "phone": f"+1555000{i:04d}",
            "first_name": f"c{i}",
            "attributes": {"age": i % 50, "tier": "gold" if i % 3 == 0 else "silver"},
            "subscribed": True,
            "blocked": False,
            "in_workflow": False,
        }
        for i in range(1, n + 1)
    ]
    await store[c.CONTACTS].insert_many(docs)


async def test_filters_run_on_the_store(store: Store) -> None:
    """Compiled filters select the expected contacts on the real store, scoped to the list."""
    await _seed(store, 60)
    await store[c.CONTACTS].insert_one(
        {"_id": 999, "sending_list_id": 2, "phone": "+15550009999", "attributes": {"tier": "gold", "age": 1}}
    )
    cases = [
        ({"attributes.tier": "gold"}, {i for i in range(1, 61) if i % 3 == 0}),
        ({"attributes.age": {"gte": 10, "lt": 12}}, {i for i in range(1, 61) if 10 <= i % 50 < 12}),
        ({"or": [{"id": {"in": [1, 2]}}, {"first_name": {"eq": "c60"}}]}, {1, 2, 60}),
        ({"attributes.tier": {"ne": "gold"}, "id": {"lte": 5}}, {1, 2, 4, 5}),
        ({"attributes.tier": {"nin": ["gold", "silver"]}}, set()),
        ({"last_name": {"exists": False}, "id": {"lt": 3}}, {1, 2}),
    ]
    for flt, expected in cases:
        counts = UnionCounts()
        got = [d["_id"] async for batch in union(store.db, 1, [{"_id": 1, "filter": flt}], 7, counts) for d in batch]
        assert set(got) == expected, flt
        assert got == sorted(got)


async def test_not_null_means_set(store: Store) -> None:
    """``ne: null`` and ``nin: [null]`` select the contacts whose field is set, as on MongoDB (the embedded store
    also matched contacts without the field): with ``eq: null`` they split the list in two."""
    await store[c.CONTACTS].insert_many(
        [
            {"_id": 1, "sending_list_id": 1, "phone": "+15550000001", "attributes": {"tier": "gold"}},
            {"_id": 2, "sending_list_id": 1, "phone": "+15550000002", "attributes": {"tier": None}},
            {"_id": 3, "sending_list_id": 1, "phone": "+15550000003", "attributes": {}},
            {"_id": 4, "sending_list_id": 1, "phone": "+15550000004"},
            {"_id": 5, "sending_list_id": 1, "phone": "+15550000005", "attributes": {"tier": "silver"}},
        ]
    )

    async def ids(flt: Any) -> set[int]:
        batches = union(store.db, 1, [{"_id": 1, "filter": flt}], 7, UnionCounts())
        return {d["_id"] async for batch in batches for d in batch}

    assert await ids({"attributes.tier": {"ne": None}}) == {1, 5}
    assert await ids({"attributes.tier": {"nin": [None, "silver"]}}) == {1}
    assert await ids({"attributes.tier": {"eq": None}}) == {2, 3, 4}
    assert await ids({"attributes.tier": {"ne": "gold"}}) == {2, 3, 4, 5}
    assert compile_filter({"attributes.tier": {"ne": None}}) == {"attributes.tier": {"$ne": None, "$exists": True}}


async def test_true_and_one_are_apart(store: Store) -> None:
    """An attribute ``eq: true`` selects the contacts whose value is true, not 1, and ``eq: 1`` the number 1, not
    true (as JSON and MongoDB keep them apart; the embedded store compared them equal)."""
    await store[c.CONTACTS].insert_many(
        [
            {"_id": 1, "sending_list_id": 1, "phone": "+15550000001", "attributes": {"n": 1}},
            {"_id": 2, "sending_list_id": 1, "phone": "+15550000002", "attributes": {"n": True}},
            {"_id": 3, "sending_list_id": 1, "phone": "+15550000003", "attributes": {"n": 0}},
            {"_id": 4, "sending_list_id": 1, "phone": "+15550000004", "attributes": {"n": False}},
            {"_id": 5, "sending_list_id": 1, "phone": "+15550000005", "attributes": {"n": 1.0}},
        ]
    )

    async def ids(flt: Any) -> set[int]:
        batches = union(store.db, 1, [{"_id": 1, "filter": flt}], 7, UnionCounts())
        return {d["_id"] async for batch in batches for d in batch}

    assert await ids({"attributes.n": {"eq": True}}) == {2}
    assert await ids({"attributes.n": True}) == {2}
    assert await ids({"attributes.n": {"eq": 1}}) == {1, 5}
    assert await ids({"attributes.n": {"eq": False}}) == {4}
    assert await ids({"attributes.n": {"eq": 0}}) == {3}


async def test_union_dedupes_and_counts(store: Store) -> None:
    """The union of overlapping audiences yields each contact once in id order, with the product document's arithmetic."""
    await _seed(store, 1000)
    a = {"_id": 10, "filter": {"id": {"lte": 600}}}  # 600
    b = {"_id": 11, "filter": {"id": {"gt": 500}}}  # 500, overlap 100 with a
    e = {"_id": 12, "contact_ids": [5, 3, 3, 700, 2000]}  # 3 (2000 is not on the list)
    counts = UnionCounts()
    seen: list[int] = []
    async for batch in union(store.db, 1, [a, b, e], 64, counts):
        assert len(batch) <= 64
        seen += [d["_id"] for d in batch]
    assert seen == list(range(1, 1001))
    assert counts.per_audience == {"10": 600, "11": 500, "12": 3}
    assert counts.audience_total == 1103 and counts.unique == 1000 and counts.overlap == 103


async def test_union_of_a_whole_list_and_other_audiences_yields_each_contact_once(store: Store) -> None:
    """A whole-list audience (no filter) merged with others: every cursor in numeric ``_id`` order (nx-27017 orders
    a query it answers in SQL by its ``_id`` text, 1, 10, 100, 11...: the merge then yielded contacts twice)."""
    await _seed(store, 120)
    whole = {"_id": 20, "filter": None}
    gold = {"_id": 21, "filter": {"attributes.tier": "gold"}}  # 40
    picked = {"_id": 22, "contact_ids": [3, 30, 100, 7]}
    counts = UnionCounts()
    seen = [d["_id"] async for batch in union(store.db, 1, [whole, gold, picked], 16, counts) for d in batch]
    assert seen == list(range(1, 121))
    assert counts.per_audience == {"20": 120, "21": 40, "22": 4}
    assert counts.unique == 120 and counts.overlap == 44
    # alone, the whole list is read once, in whatever order the store keeps
    counts = UnionCounts()
    alone = [d["_id"] async for batch in union(store.db, 1, [whole], 16, counts) for d in batch]
    assert sorted(alone) == list(range(1, 121)) and counts.unique == 120 and counts.per_audience == {"20": 120}


def test_query_shapes() -> None:
    """Reads keep the list and the filter in a top-level ``$and`` (numeric ``_id`` order and MongoDB's matching
    on nx-27017); counts spell a short ``in``/``nin`` as an ``$or``/``$nor`` of ``$eq`` (the same documents), which
    nx-27017 counts in SQL."""
    lst = {"sending_list_id": {"$eq": 7}}
    one = {"_id": 1, "filter": {"attributes.tier": {"in": ["a", "b"]}}}
    assert audience_query(7, one) == {"$and": [lst, {"attributes.tier": {"$in": ["a", "b"]}}]}
    assert audience_query(7, {"_id": 1, "filter": None}) == {"$and": [lst]}
    assert audience_query(7, {"_id": 1, "contact_ids": [1]}) is None
    assert count_query(7, {"_id": 1, "contact_ids": [1]}) is None
    assert count_query(7, {"_id": 1, "filter": None}) == lst
    eq_a, eq_b = {"attributes.tier": {"$eq": "a"}}, {"attributes.tier": {"$eq": "b"}}
    assert count_query(7, one) == {"$and": [lst, {"$or": [eq_a, eq_b]}]}
    mixed = {"_id": 1, "filter": {"or": [{"attributes.tier": {"nin": ["a"], "ne": "b"}}, {"first_name": "x"}]}}
    assert count_query(7, mixed) == {
        "$and": [
            lst,
            {"$or": [{"$and": [{"$nor": [eq_a]}, {"attributes.tier": {"$ne": "b"}}]}, {"first_name": {"$eq": "x"}}]},
        ]
    }
    big = {"_id": 1, "filter": {"attributes.n": {"in": list(range(101))}}}  # too long to spell out: kept
    assert count_query(7, big) == audience_query(7, big)
    empty = {"_id": 1, "filter": {"attributes.n": {"in": []}}}  # ($or takes a non-empty list)
    assert count_query(7, empty) == audience_query(7, empty)


async def test_counts_match_the_union(store: Store) -> None:
    """What the scheduler counts up front (the progress bar's ``expected``) is what the union then counts."""
    from trackly_exec.campaigns.scheduler import audience_size

    await _seed(store, 90)
    await store[c.CONTACTS].insert_many(  # another list's contacts, matching every filter below but the list
        [{"_id": 1000 + i, "sending_list_id": 2, "phone": f"+1555100{i:04d}", "attributes": {}} for i in range(5)]
    )
    cases: list[Any] = [
        None,
        {"attributes.tier": {"in": ["gold"]}},
        {"attributes.tier": "silver", "attributes.age": {"lt": 20}},
        {"or": [{"attributes.age": {"lte": 2}}, {"attributes.tier": "gold", "attributes.age": {"gte": 45}}]},
        {"and": [{"attributes.age": {"gte": 3}}, {"attributes.age": {"lt": 9}}]},
        {"first_name": {"nin": ["c1", "c2"]}, "attributes.age": {"in": [1, 2, 3], "ne": 2}},
        {"attributes.age": {"in": list(range(0, 300, 2))}},
    ]
    for flt in cases:
        aud = {"_id": 1, "sending_list_id": 1, "filter": flt, "contact_ids": None}
        counts = UnionCounts()
        async for _ in union(store.db, 1, [aud], 50, counts):
            pass
        plan = SimpleNamespace(audiences=[aud], sending_list={"_id": 1})
        assert await audience_size(store.db, plan) == counts.per_audience["1"], flt
