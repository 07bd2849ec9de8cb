"""GSM-7 / UCS-2 length and segment counting (providers.md §4)."""

from __future__ import annotations

import random

import pytest

from trackly_exec.segments import GSM7_BASIC, GSM7_EXTENSION, measure, split_parts

# Hand-computed cases: (text, length, segments, encoding)
CASES = [
    ("", 0, 1, "GSM-7"),
    ("Hello", 5, 1, "GSM-7"),
    ("a" * 160, 160, 1, "GSM-7"),
    ("a" * 161, 161, 2, "GSM-7"),
    ("a" * 306, 306, 2, "GSM-7"),  # 2 x 153
    ("a" * 307, 307, 3, "GSM-7"),
    ("€" * 80, 160, 1, "GSM-7"),  # extension chars count 2 septets
    ("€" * 81, 162, 2, "GSM-7"),
    ("a" * 152 + "€" + "a" * 10, 164, 2, "GSM-7"),  # 152 + ESC pair would be 154 > 153: the pair moves on
    ("a" * 151 + "€" + "a" * 10, 163, 2, "GSM-7"),  # 151 + 2 = 153 fits exactly
    ("a" * 152 + "€" * 77, 306, 3, "GSM-7"),  # total 306 = 2 x 153 but the split pushes a 3rd part
    ("Grüße", 5, 1, "GSM-7"),  # ü and ß are in the basic table
    ("café ç", 6, 1, "UCS-2"),  # ç is not GSM-7 (Ç is)
    ("ж" * 70, 70, 1, "UCS-2"),
    ("ж" * 71, 71, 2, "UCS-2"),
    ("ж" * 134, 134, 2, "UCS-2"),
    ("ж" * 135, 135, 3, "UCS-2"),
    ("😀" * 35, 70, 1, "UCS-2"),  # astral: surrogate pair, 2 units
    ("😀" * 36, 72, 2, "UCS-2"),
    ("ж" * 66 + "😀" + "ж" * 10, 78, 2, "UCS-2"),  # 66 + 2 > 67: the pair moves to part 2
    ("ж" * 66 + "😀" * 34, 134, 3, "UCS-2"),  # 134 = 2 x 67 units but the pair cannot split
    ("`", 1, 1, "UCS-2"),  # backtick is ASCII but not GSM-7
]


@pytest.mark.parametrize(("text", "length", "segments", "encoding"), CASES)
def test_hand_computed(text: str, length: int, segments: int, encoding: str) -> None:
    """Each hand-computed case gets its length, segment count and encoding."""
    m = measure(text)
    assert (m.length, m.segments, m.encoding) == (length, segments, encoding)


def _reference(text: str) -> tuple[int, int, str]:
    """An independent, character-by-character model of the rules."""
    gsm = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)
    if gsm:
        widths = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        single, part = 160, 153
    else:
        widths = [len(ch.encode("utf-16-le")) // 2 for ch in text]
        single, part = 70, 67
    total = sum(widths)
    if total <= single:
        return total, 1, "GSM-7" if gsm else "UCS-2"
    parts, used = [[]], 0
    for w in widths:
        if used + w > part:
            parts.append([])
            used = 0
        parts[-1].append(w)
        used += w
    return total, len(parts), "GSM-7" if gsm else "UCS-2"


def test_property_random_texts() -> None:
    """On 3,000 random texts the counts match an independent model and the parts re-join to the text."""
    rng = random.Random(42)
    alphabet = list("abcXYZ 0123.,!") + list("€[]{}^~|\\") + ["é", "ж", "😀", "中", "\n"]
    for _ in range(3000):
        n = rng.randint(0, 400)
        pool = alphabet if rng.random() < 0.5 else alphabet[:23]  # half of them stay GSM-7
        text = "".join(rng.choice(pool) for _ in range(n))
        m = measure(text)
        assert (m.length, m.segments, m.encoding) == _reference(text), text
        parts = split_parts(text)
        assert "".join(parts) == text and len(parts) == m.segments
        if m.segments > 1:
            limit = 153 if m.encoding == "GSM-7" else 67
            for p in parts:
                units = sum(
                    (2 if ch in GSM7_EXTENSION else 1) if m.encoding == "GSM-7" else len(ch.encode("utf-16-le")) // 2
                    for ch in p
                )
                assert units <= limit
