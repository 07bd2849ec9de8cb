"""Audience filters (whitelisted operators) and the streamed, de-duplicated union of audiences."""

from __future__ import annotations

from typing import Any

import pytest

from trackly_exec.campaigns.audience import FilterError, UnionCounts, compile_filter, union
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
