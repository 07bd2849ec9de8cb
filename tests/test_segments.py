"""GSM-7 / UCS-2 length and segment counting (providers.md §4), checked against an independent oracle: the
``gsm0338`` codec (PyPI) for the GSM-7 tables and septet widths, UTF-16 for UCS-2 units."""

from __future__ import annotations

import random

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import pytest

from trackly_exec.store.segments import GSM7_BASIC, GSM7_EXTENSION, is_gsm7, measure, split_parts


def _septets(ch: str) -> int | None:
    """Septets of ``ch`` per the gsm0338 codec (1 basic, 2 ESC + extension), None when not GSM-7."""
    try:
        return len(ch.encode("gsm03.38"))
    except UnicodeEncodeError:
        return None


def test_tables_agree_with_gsm0338_over_u0020_u20ff() -> None:
    """For every code point U+0020-U+20FF (and LF, CR, FF): gsm0338 encodes it <=> our tables say GSM-7,
    with the same septet count (2 for the extension table)."""
    disagree = []
    for cp in [0x0A, 0x0C, 0x0D, *range(0x20, 0x2100)]:
        ch = chr(cp)
        septets = _septets(ch)
        ours = measure(ch)
        if (septets is not None) != is_gsm7(ch) or (septets is not None and septets != ours.length):
            disagree.append((f"U+{cp:04X}", ch, septets, ours))
    assert not disagree, disagree[:20]


def test_tables_are_the_whole_gsm0338_alphabet() -> None:
    """Decoding every GSM-7 code (0x00-0x7F bar ESC, and ESC + code) gives exactly our basic / extension tables."""
    basic = {bytes([b]).decode("gsm03.38") for b in range(0x80) if b != 0x1B}
    extension = set()
    for b in range(0x80):
        try:
            decoded = bytes([0x1B, b]).decode("gsm03.38")
        except UnicodeDecodeError:
            continue
        if len(decoded) == 1:
            extension.add(decoded)
    assert basic == set(GSM7_BASIC) and extension == set(GSM7_EXTENSION)


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
    """An independent, character-by-character model of the rules (widths from gsm0338 and UTF-16)."""
    septets = [_septets(ch) for ch in text]
    gsm = all(n is not None for n in septets)
    if gsm:
        widths = [n or 0 for n in septets]
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
