"""Phone numbers: normalisation to E.164, validity and the timezones a number may be in (phonenumbers)."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import timezone as pn_timezone

UNKNOWN_ZONE = "Etc/Unknown"


@lru_cache(maxsize=65536)
def _parse(raw: str, default_region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None


def normalize(raw: str | int | None, default_region: str | None = "US") -> str | None:
    """``raw`` as E.164 (``+15551234567``), or None when it cannot be parsed or is not a valid number.

    International forms (``+44...``, ``0044...``) work whatever the region; national forms use ``default_region``.
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if not text or len(text) > 32:
        return None
    if text.startswith("00") and text[2:3].isdigit():
        text = "+" + text[2:]
    num = _parse(text, default_region)
    if num is None or not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def is_valid(e164: str | None) -> bool:
    """True for a valid number in E.164 form."""
    if not e164 or not e164.startswith("+"):
        return False
    num = _parse(e164, None)
    return num is not None and phonenumbers.is_valid_number(num)


@lru_cache(maxsize=65536)
def timezones_for(e164: str) -> tuple[str, ...]:
    """IANA zones the number may be in (``("Etc/Unknown",)`` when unknown), from libphonenumber's metadata."""
    num = _parse(e164, None)
    if num is None:
        return (UNKNOWN_ZONE,)
    zones = tuple(pn_timezone.time_zones_for_number(num))
    return zones or (UNKNOWN_ZONE,)


_NUMBER_IN_TEXT = re.compile(r"(?<![0-9A-Za-z+])(\+[0-9]{7,15}|[0-9]{10,15})(?![0-9A-Za-z])")


def mask(number: str | None) -> str:
    """A phone number for display: the country/area prefix and the last 4 digits (``+1212•••4567``)."""
    if not number:
        return ""
    text = str(number)
    plus = "+" if text.startswith("+") else ""
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) <= 6:
        return plus + "•" * len(digits)
    return f"{plus}{digits[:4]}•••{digits[-4:]}" if len(digits) >= 10 else f"{plus}{digits[:2]}•••{digits[-2:]}"


def mask_text(text: str | None) -> str:
    """``text`` with every phone-number-looking run (``+`` and 7-15 digits, or 10-15 bare digits) masked."""
    if not text:
        return text or ""
    return _NUMBER_IN_TEXT.sub(lambda m: mask(m.group(0)), text)
