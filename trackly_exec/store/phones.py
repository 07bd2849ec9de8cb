"""Phone numbers: normalisation to E.164, validity and the timezones a number may be in (phonenumbers)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

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


def campaign_number(phone: str) -> str | None:
    """A contact's stored ``phone`` as the evaluation texts it: itself when it is a valid number written in E.164
    (``+`` and digits only), else its E.164 normalisation (``+1 212 555 0101``, national forms read as US numbers),
    else None (``invalid_phone``). So one handset is always one ``to_number``, whatever the spelling stored."""
    return phone if phone[1:].isascii() and phone[1:].isdigit() and is_valid(phone) else normalize(phone)


#: The phonenumbers release (metadata) a stored :func:`phone_check` was made with: any other release re-validates.
METADATA_VERSION: str = phonenumbers.__version__


def phone_check(phone: str) -> str:
    """The ``phone_check`` to store with a contact whose ``phone`` is ``phone``: the parse the evaluation needs,
    done once when our code writes the contact.

    One string, ``"<release>|<valid 1/0>|<E.164>|<zones, comma-separated>|<phone>"``: the phonenumbers release
    (:data:`METADATA_VERSION`), whether :func:`campaign_number` finds a valid number, that number (empty when
    invalid), the zones :func:`timezones_for` gives for it (empty when invalid), and the ``phone`` it was made
    for (a later write of ``phone`` by anything else voids it). One string rather than a subdocument: the
    embedded store decodes every field of every contact an evaluation reads, and a subdocument of five fields
    cost it about as much CPU as the parse saved.
    """
    e164 = campaign_number(phone)
    if e164 is None:
        return f"{METADATA_VERSION}|0|||{phone}"
    return f"{METADATA_VERSION}|1|{e164}|{','.join(timezones_for(e164))}|{phone}"


_CHECK_PREFIX = METADATA_VERSION + "|"


def contact_number(contact: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
    """The contact's number in E.164 (None: not a valid number) and its zones when they were stored with it.

    From the contact's ``phone_check`` when it is for the current ``phone`` and phonenumbers release (no parse);
    otherwise (documents written by other tools, older documents, another release) ``phone`` is parsed as
    always, and the zones are None (:func:`timezones_for` gives them, from the same parse). Either way the
    answer is the same.
    """
    phone = contact.get("phone") or ""
    if not isinstance(phone, str):  # another tool's document: a number stored as one is read as its digits
        if not isinstance(phone, int) or isinstance(phone, bool):
            return None, None
        phone = str(phone)
    chk = contact.get("phone_check")
    if type(chk) is str and chk.startswith(_CHECK_PREFIX):
        parts = chk[len(_CHECK_PREFIX) :].split("|", 3)
        if len(parts) == 4 and parts[3] == phone:
            valid, e164, zones, _ = parts
            if valid == "0" and not e164 and not zones:
                return None, None
            if valid == "1" and e164.startswith("+") and zones:
                return e164, tuple(zones.split(","))
    return campaign_number(phone), None


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


def opt_out_key(sending_list_id: int, phone: str) -> str:
    """The ``opt_outs`` id of a number (E.164) that sent STOP on a sending list: the list and a hash of the number,
    so the collection keeps no phone number (an erasure has nothing to find there, and the STOP still holds)."""
    return f"{sending_list_id}:{hashlib.sha256(phone.encode()).hexdigest()[:32]}"
