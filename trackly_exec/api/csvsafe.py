"""CSV cells that a spreadsheet cannot run as formulas (CSV / formula injection, OWASP).

Every CSV the product writes goes through :func:`cell` (or :func:`row` / :func:`writer`): a text cell that
begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with a single quote ``'``.
Spreadsheets show such a cell as the text after the quote, so a phone number ``+15551234567`` reads
``'+15551234567`` in the file and ``+15551234567`` on screen (and it no longer loses its ``+`` or turns into
``1.56E+10``); a tool reading the file back strips the quote with :func:`uncell`. Numbers, booleans and dates
are written as they are (they cannot be formulas); ``None`` is an empty cell.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def cell(value: Any) -> Any:
    """``value`` made safe for a CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if text.startswith(FORMULA_START):
        return QUOTE + text
    return text


def uncell(text: str) -> str:
    """The original text of a cell written by :func:`cell` (the neutralising quote removed)."""
    if text.startswith(QUOTE) and text[1:].startswith(FORMULA_START):
        return text[1:]
    return text


def row(values: Iterable[Any]) -> list[Any]:
    return [cell(v) for v in values]


class SafeWriter:
    """``csv.writer`` whose every cell goes through :func:`cell`."""

    def __init__(self, fh: TextIO) -> None:
        self._w = csv.writer(fh)

    def writerow(self, values: Iterable[Any]) -> Any:
        return self._w.writerow(row(values))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for r in rows:
            self.writerow(r)


def writer(fh: TextIO) -> SafeWriter:
    return SafeWriter(fh)
