"""Display names of campaigns, sending lists, audiences and creatives.

Every one of them carries a ``name`` (and an optional ``description``); records made before campaigns had
names show as ``"campaign 7"``. :func:`label` is what the CLI, stats, the dashboard and alerts print:
``Spring sale (campaign 7)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trackly_exec.store import constants as c

NOUNS = {c.CAMPAIGNS: "campaign", c.SENDING_LISTS: "sending list", c.AUDIENCES: "audience", c.CREATIVES: "creative"}


def default_name(noun: str, doc_id: Any) -> str:
    return f"{noun} {doc_id}"


def name_of(doc: Mapping[str, Any] | None, noun: str, doc_id: Any = None) -> str:
    """The record's name, or ``"<noun> <id>"`` when it has none."""
    if doc is None:
        return default_name(noun, doc_id)
    name = str(doc.get("name") or "").strip()
    return name or default_name(noun, doc.get("_id", doc_id))


def label(doc: Mapping[str, Any] | None, noun: str, doc_id: Any = None) -> str:
    """``'Spring sale' (campaign 7)``, or ``campaign 7`` for a record without a name."""
    did = doc.get("_id", doc_id) if doc is not None else doc_id
    name = name_of(doc, noun, did)
    plain = default_name(noun, did)
    return plain if name == plain else f"{name!r} ({plain})"


async def names(db: Any, coll: str, ids: Iterable[int]) -> dict[int, str]:
    """``{id: name}`` for the given ids of one collection (one query)."""
    wanted = sorted({int(i) for i in ids if i is not None})
    if not wanted:
        return {}
    noun = NOUNS.get(coll, coll)
    found = {int(d["_id"]): name_of(d, noun) async for d in db[coll].find({"_id": {"$in": wanted}}, {"name": 1})}
    return {i: found.get(i, default_name(noun, i)) for i in wanted}
