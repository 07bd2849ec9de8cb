"""SMS length and segment count: GSM-7 (3GPP TS 23.038, with its extension table) or UCS-2.

* GSM-7: a single message holds 160 septets; a concatenated one 153 per part. Extension-table characters
  (``^ { } \\ [ ~ ] | €`` and form feed) take 2 septets (ESC + code) and an ESC pair is never split across
  parts: when it does not fit, it moves to the next part.
* UCS-2: any character outside the GSM-7 tables turns the whole message into UCS-2, counted in UTF-16 code
  units: 70 for a single message, 67 per part. Characters outside the Basic Multilingual Plane (emoji) take
  2 units (a surrogate pair) and a pair is never split across parts.

``length`` is in the encoding's unit (septets for GSM-7, UTF-16 code units for UCS-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC = frozenset(
    "\n\r !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    "\xa1\xa3\xa4\xa5\xa7\xbf\xc4\xc5\xc6\xc9\xd1\xd6\xd8\xdc\xdf\xe0\xe4\xe5\xe6\xc7\xe8\xe9\xec\xf1\xf2\xf6\xf8\xf9\xfc"
    "\u0393\u0394\u0398\u039b\u039e\u03a0\u03a3\u03a6\u03a8\u03a9"
)
GSM7_EXTENSION = frozenset("\x0c[\\]^{|}~\u20ac")
_GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True, slots=True)
class Measure:
    """What is stored on a message: ``length`` (in the encoding's unit), ``segments`` and ``encoding``."""

    length: int
    segments: int
    encoding: Encoding


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM-7 basic or extension table."""
    return _GSM7_ALL.issuperset(text)


def _pack(widths: list[int], part: int) -> int:
    """Parts needed when units of the given widths are packed in order, none split across parts."""
    parts, used = 1, 0
    for w in widths:
        if used + w > part:
            parts += 1
            used = w
        else:
            used += w
    return parts


def measure(text: str) -> Measure:
    """Length, segment count and encoding of ``text`` as it will be sent."""
    if not text:
        return Measure(0, 1, "GSM-7")
    if _GSM7_ALL.issuperset(text):
        ext = sum(1 for ch in text if ch in GSM7_EXTENSION) if not GSM7_BASIC.issuperset(text) else 0
        length = len(text) + ext
        if length <= GSM7_SINGLE:
            return Measure(length, 1, "GSM-7")
        if not ext:
            return Measure(length, -(-length // GSM7_PART), "GSM-7")
        widths = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return Measure(length, _pack(widths, GSM7_PART), "GSM-7")
    astral = sum(1 for ch in text if ord(ch) > 0xFFFF) if not text.isascii() else 0
    length = len(text) + astral
    if length <= UCS2_SINGLE:
        return Measure(length, 1, "UCS-2")
    if not astral:
        return Measure(length, -(-length // UCS2_PART), "UCS-2")
    widths = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return Measure(length, _pack(widths, UCS2_PART), "UCS-2")


def segment_count(text: str) -> int:
    """Number of SMS parts ``text`` is sent as."""
    return measure(text).segments


def split_parts(text: str) -> list[str]:
    """The parts ``text`` is sent as (one string when it fits a single message)."""
    m = measure(text)
    if m.segments == 1:
        return [text]
    part = GSM7_PART if m.encoding == "GSM-7" else UCS2_PART
    ext = GSM7_EXTENSION if m.encoding == "GSM-7" else None
    parts: list[str] = []
    start, used = 0, 0
    for i, ch in enumerate(text):
        w = (2 if ch in ext else 1) if ext is not None else (2 if ord(ch) > 0xFFFF else 1)
        if used + w > part:
            parts.append(text[start:i])
            start, used = i, 0
        used += w
    parts.append(text[start:])
    return parts
