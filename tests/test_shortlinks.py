"""Tracked links (campaigns/shortlinks.py): every http(s) URL of a body becomes ``{short_base}/{code}``."""

from __future__ import annotations

from trackly_exec.campaigns.shortlinks import find_urls, track


def test_links_are_tracked_with_random_codes() -> None:
    """Each URL becomes short_base/code with a fresh 12-char code; trailing punctuation stays outside."""
    body = "Sale! https://shop.example/x?a=1&b=2. And http://e.org/p) and https://t.example/l/keep"
    out, links = track(body, "https://t.example/l")
    assert [d for _, d in links] == ["https://shop.example/x?a=1&b=2", "http://e.org/p"]
    codes = [code for code, _ in links]
    assert all(len(code) == 12 for code in codes) and len(set(codes)) == 2
    assert (
        out == f"Sale! https://t.example/l/{codes[0]}. And https://t.example/l/{codes[1]}) and https://t.example/l/keep"
    )
    assert find_urls(out)[0] == f"https://t.example/l/{codes[0]}"
    assert len({track(body, "https://t.example/l")[1][0][0] for _ in range(200)}) == 200


def test_a_capitalised_url_alone_is_tracked() -> None:
    """``Https://`` (a phone capitalises the start of a sentence) is a URL like any other, alone in a body too."""
    body, links = track("Visit Https://Example.com/a today", "https://t.example/l")
    assert [dest for _, dest in links] == ["Https://Example.com/a"] and "Example.com" not in body
