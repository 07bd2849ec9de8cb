"""The demo's contacts: two overlapping audiences with every kind of contact the evaluation skips.

Audience A is the first 60% of the contacts, audience B the last 50% (10% in both). Each contact falls, by
chance, into at most one skip group (:data:`MIX`, in the evaluation's order): unsubscribed, invalid phone
(a 555 number, which phonenumbers does not accept), in a workflow, messaged recently (the caller sets
``last_sent_at``) or living in a time zone where it is night now (quiet hours). The rest live where it is day.
"""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

from trackly_exec.store.documents import JsonObject

AREAS = ("212", "312", "415", "617", "713", "305", "206", "404", "303", "602")
NAMES = ("Ava", "Liam", "Noah", "Emma", "Mia", "Lucas", "Zoe", "Ethan", "Ivy", "Owen", "Nora", "Leo")
ZONES = (
    "Pacific/Kiritimati",
    "Pacific/Auckland",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Dubai",
    "Europe/Berlin",
    "Europe/London",
    "Atlantic/Azores",
    "America/Sao_Paulo",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Pacific/Pago_Pago",
)
#: Share of contacts in each skip group (the rest are sendable), checked in the evaluation's order.
MIX = (
    ("unsubscribed", 0.02),
    ("invalid_phone", 0.01),
    ("in_workflow", 0.03),
    ("frequency_cap", 0.02),
    ("quiet_hours", 0.05),
)


def _zones_now(now: dt.datetime) -> tuple[list[str], list[str]]:
    """Zones where it is comfortably day (10:00-19:59) and night (00:00-05:59) right now."""
    day = [z for z in ZONES if 10 <= now.astimezone(ZoneInfo(z)).hour < 20]
    night = [z for z in ZONES if now.astimezone(ZoneInfo(z)).hour < 6]
    return day or ["UTC"], night or ["Pacific/Kiritimati"]


def make_contacts(n: int, rng: random.Random, now: dt.datetime) -> tuple[list[JsonObject], dict[str, list[str]]]:
    """``n`` contacts (A = first 60%, B = last 50%, 10% in both) and the phones of each skip group."""
    day, night = _zones_now(now)
    a_end, b_start = int(n * 0.6), int(n * 0.5)
    groups: dict[str, list[str]] = {name: [] for name, _ in MIX}
    rows: list[JsonObject] = []
    for i in range(n):
        j = i // len(AREAS)
        phone = f"+1{AREAS[i % len(AREAS)]}{200 + j // 10000:03d}{j % 10000:04d}"
        row: JsonObject = {
            "phone": phone,
            "timezone": rng.choice(day),
            "attributes": {"in_a": i < a_end, "in_b": i >= b_start, "tier": rng.choice("ABC")},
        }
        if rng.random() < 0.9:
            row["first_name"] = rng.choice(NAMES)
        roll, acc = rng.random(), 0.0
        for name, share in MIX:
            acc += share
            if roll < acc:
                groups[name].append(phone)
                if name == "unsubscribed":
                    row["subscribed"] = False
                elif name == "invalid_phone":
                    row["phone"] = phone = f"+1555{i:07d}"[:12]  # 555 numbers are not valid numbers
                    groups[name][-1] = phone
                elif name == "in_workflow":
                    row["in_workflow"] = True
                elif name == "quiet_hours":
                    row["timezone"] = rng.choice(night)
                break
        rows.append(row)
    return rows, groups
