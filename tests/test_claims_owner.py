"""One writer of a queued message's transitions: only the claims module writes ``claimed_by``, ``claimed_at``,
``sending_at``, ``not_before`` and ``due_ms`` (claim, hold, release, intent, finish, all fenced on the claim
token); a new message takes its initial values (and its ``slot``) from ``models.entering_queue``. An AST check keeps it so."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "trackly_exec"
FIELDS = {"claimed_by", "claimed_at", "sending_at", "not_before", "due_ms", "slot"}
UPDATE_OPERATORS = {"$set", "$unset", "$setOnInsert", "$inc", "$min", "$max", "$rename", "$currentDate"}
NEW_DOCUMENT_KEYS = {"sendtime", "created_at"}
#: the owners: the claims module, and the initial state of a message entering the queue
OWNERS = {"claims.py", "models.py"}
#: the outbox has a lease of its own on another collection, under the same field name
OUTBOX = {"customer_webhook.py", "ops.py"}
#: answers that show a message (never written to the store)
VIEWS = {"messagelog.py"}


def _keys(node: ast.Dict) -> set[str]:
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def writes(source: str) -> Iterator[tuple[int, str]]:
    """``(line, field)`` of every write of a claim field the source spells out."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value in UPDATE_OPERATORS and isinstance(v, ast.Dict):
                    yield from ((v.lineno, f) for f in sorted(_keys(v) & FIELDS))
            keys = _keys(node)
            if keys & NEW_DOCUMENT_KEYS:  # a new queue document spelled out field by field
                yield from ((node.lineno, f) for f in sorted(keys & FIELDS))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            yield from ((node.lineno, kw.arg) for kw in node.keywords if kw.arg in FIELDS)
            for arg in node.args:
                if isinstance(arg, ast.Dict):
                    yield from ((arg.lineno, f) for f in sorted(_keys(arg) & FIELDS))
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value in FIELDS:
                    yield t.lineno, str(t.slice.value)


def test_only_the_claims_module_writes_the_claim_fields_of_a_queued_message() -> None:
    found = []
    for f in sorted(PKG.rglob("*.py")):
        if f.name in OWNERS | VIEWS:
            continue
        for line, field in writes(f.read_text()):
            if field == "claimed_by" and f.name in OUTBOX:
                continue
            found.append(f"{f.relative_to(PKG)}:{line} writes {field}")
    assert not found, "write these through trackly_exec.executor.claims:\n" + "\n".join(found)


def test_the_check_sees_each_way_of_writing() -> None:
    samples = {
        'q.update_many({"claimed_by": t}, {"$set": {"claimed_by": None, "claimed_at": None}})': {
            "claimed_by",
            "claimed_at",
        },
        'UpdateMany(q, {"$set": {"not_before": nb, "paused": True}})': {"not_before"},
        'doc = {"_id": i, "sendtime": now, "not_before": None, "sending_at": None}': {"not_before", "sending_at"},
        'doc.update({"not_before": x})': {"not_before"},
        "doc.update(sending_at=now)": {"sending_at"},
        'doc["claimed_by"] = token': {"claimed_by"},
    }
    for source, expected in samples.items():
        assert {f for _, f in writes(source)} == expected, source
    reads = 'await q.find({"claimed_by": token, "sending_at": None}).to_list(None); x = d.get("not_before")'
    assert not list(writes(reads))
