"""Phone numbers (store/phones.py): normalisation to E.164, the timezones a number may be in, masking."""

from __future__ import annotations

from trackly_exec.store import phones
from trackly_exec.store.phones import campaign_number, mask, mask_text


def test_normalize_forms() -> None:
    """National, international and 00-prefixed forms normalise to E.164; junk is None."""
    assert phones.normalize("(212) 555-0100".replace("555-0100", "736-1234")) == "+12127361234"
    assert phones.normalize("+40 721 234 567") == "+40721234567"
    assert phones.normalize("0040721234567") == "+40721234567"
    assert phones.normalize("hello") is None
    assert phones.normalize("+1555") is None
    assert phones.normalize("") is None


def test_timezones_from_number() -> None:
    """Zones come from libphonenumber; unknown numbers give Etc/Unknown."""
    assert phones.timezones_for("+40721234567") == ("Europe/Bucharest",)
    assert set(phones.timezones_for("+976136234567")) == {"Asia/Choibalsan", "Asia/Ulaanbaatar"}


def test_mask() -> None:
    assert mask("+12125554567") == "+1212•••4567"
    assert mask_text("+12125554567 sent STOP") == "+1212•••4567 sent STOP"
    assert (
        mask_text("message 0000000000000001 to 14155550123, 50 of 50")
        == "message 0000000000000001 to 1415•••0123, 50 of 50"
    )


def test_campaign_number_is_always_e164() -> None:
    """A stored phone in any spelling of a valid number is texted as its E.164 form (one handset, one to_number:
    the cooldown, the per-phone duplicate counts and STOP all key on it); an invalid one is None."""
    spellings = ("+12125550101", "+1 212 555 0101", "+1-212-555-0101", "(212) 555-0101", "212.555.0101")
    for spelling in (
        *spellings,
        "+\uff11\uff12\uff11\uff12\uff15\uff15\uff15\uff10\uff11\uff10\uff11",
    ):  # fullwidth digits
        assert campaign_number(spelling) == "+12125550101", spelling
    assert campaign_number("+15555550108") is None and campaign_number("hello") is None
