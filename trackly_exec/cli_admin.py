"""CLI commands that talk to a running daemon's admin API over HTTP.

``trackly contacts import FILE.csv --list ID``, ``trackly campaign create|list|show|trigger|pause|resume``,
``trackly stats CAMPAIGN``. The API address defaults to the config's ``http.host``/``http.port`` (``--api``
overrides it) and the token to ``http.api_tokens[0]`` (``--token``).

A contacts CSV has a header row; its delimiter (comma, semicolon, tab or pipe) is detected from it, or given with
``--delimiter``. ``phone`` (also read from ``mobile``, ``msisdn``, ``phone_number``, ``cell``, ...), ``first_name``,
``last_name``, ``timezone``, ``subscribed``, ``blocked``, ``in_workflow`` are contact fields; every other column is
an attribute (its name made a valid attribute name; whole numbers and decimals become numbers, so filters like
``gte`` compare them as numbers; values with a leading zero stay text). Columns that cannot be used (no name, a
second column for the same field) are reported as ignored; a phone number seen earlier in the file is reported as a
duplicate and not sent again. Rows are streamed to the bulk endpoint in chunks; bad rows are reported with their
CSV line number and never stop the good ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import csvsafe
from .config import load_config
from .errors import TracklyError
from .models import PAUSE_DESCRIPTION, RESUME_DESCRIPTION
from .phones import normalize

CHUNK = 1000
#: Key of a contact dict that stands for a CSV line that could not be read (never sent to the API).
CSV_ERROR = "_csv_error"
SHOW_REJECTS = 20
_NUMBER = re.compile(r"^-?(0|[1-9]\d{0,15})(\.\d+)?$")


class CliError(TracklyError):
    """A CLI failure with a message for the user (exit status 1)."""


# --------------------------------------------------------------------------------------------- HTTP client


class ApiClient:
    """A small blocking JSON client for the admin API."""

    def __init__(self, base: str, token: str, timeout: float = 120.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}/api/v1{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise CliError(_describe(exc.code, exc.read())) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the trackly daemon at {self.base} ({reason}).\n"
                "Is it running? Start it with `trackly run -c trackly.toml` (or try `trackly demo`), "
                "or point --api at it."
            ) from None


def _describe(status: int, raw: bytes) -> str:
    try:
        err = json.loads(raw)
    except ValueError:
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    if status == 401:
        return "the daemon refused the API token (HTTP 401); pass --token or set http.api_tokens in the config"
    msg = f"HTTP {status}: {err.get('message') or err.get('error')}"
    for d in err.get("details", [])[:10]:
        msg += f"\n  {d.get('loc')}: {d.get('msg')}"
    return msg


def client_from(args: argparse.Namespace) -> ApiClient:
    api, token = args.api, args.token
    if api is None or token is None:
        settings = load_config(args.config)
        if api is None:
            host = settings.http.host if settings.http.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            api = f"http://{host}:{settings.http.port}"
        if token is None:
            if not settings.http.api_tokens:
                raise CliError("no API token: pass --token or set http.api_tokens in the config")
            token = settings.http.api_tokens[0].get_secret_value()
    return ApiClient(api, token)


# --------------------------------------------------------------------------------------------- contacts import


def _value(text: str) -> Any:
    return (float(text) if "." in text else int(text)) if _NUMBER.match(text) else text


#: Header names accepted for each contact field (compared lower-case, spaces and hyphens as underscores).
ALIASES: dict[str, tuple[str, ...]] = {
    "phone": (
        "phone",
        "mobile",
        "msisdn",
        "phone_number",
        "phonenumber",
        "cell",
        "cellphone",
        "cell_phone",
        "mobile_number",
        "mobile_phone",
        "mobilephone",
        "cell_number",
        "telephone",
        "tel",
        "number",
        "to",
        "e164",
        "phone_e164",
    ),
    "first_name": ("first_name", "firstname", "first", "given_name", "givenname", "forename"),
    "last_name": ("last_name", "lastname", "last", "surname", "family_name", "familyname"),
    "timezone": ("timezone", "time_zone", "tz"),
    "subscribed": ("subscribed",),
    "blocked": ("blocked",),
    "in_workflow": ("in_workflow",),
}
_FIELD_OF = {alias: field for field, names in ALIASES.items() for alias in names}
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t", "|": "|"}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def sniff_delimiter(first_line: str) -> str:
    """The header row's delimiter: the most frequent of comma, semicolon, tab and pipe outside quotes."""
    outside = re.sub(r'"[^"]*"', "", first_line)
    counts = {d: outside.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass
class CsvLayout:
    """How a contacts CSV's columns are read: ``columns[i]`` is ``("field", name)``, ``("attr", name)`` or None
    (ignored, with the reason in ``ignored``)."""

    delimiter: str
    columns: list[tuple[str, str] | None]
    ignored: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)


def layout(header: list[str], delimiter: str) -> CsvLayout:
    out = CsvLayout(delimiter, [])
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(header):
        name = raw.strip()
        key = _norm(name)
        target: tuple[str, str] | None
        if not name:
            out.ignored.append(f"column {i + 1} (no name)")
            target = None
        elif key in _FIELD_OF:
            target = ("field", _FIELD_OF[key])
            if target[1] != name:
                out.renamed.append(f"{name!r} -> {target[1]}")
        else:
            attr = key if _ATTR.match(key) else re.sub(r"[^A-Za-z0-9_\-]", "_", key).strip("_")
            if attr and not attr[0].isalpha() and attr[0] != "_":
                attr = "_" + attr
            target = ("attr", attr) if attr and _ATTR.match(attr) else None
            if target is None:
                out.ignored.append(f"{name!r} (not a usable attribute name)")
            elif attr != name:
                out.renamed.append(f"{name!r} -> attribute {attr}")
        if target is not None and target in seen:
            out.ignored.append(f"{name!r} (a second column for {target[1]})")
            target = None
        if target is not None:
            seen.add(target)
        out.columns.append(target)
    if ("field", "phone") not in seen:
        raise CliError(
            "the CSV needs a 'phone' column (or mobile, msisdn, phone_number, cell, ...); got: "
            + (", ".join(h.strip() for h in header) or "nothing")
        )
    return out


def _csv_lines(fh: TextIO, delimiter: str, first_line: int = 1) -> Iterator[tuple[int, list[str] | None, str]]:
    """``(line number, fields, "")`` per line, or ``(line number, None, why)`` for a malformed one.

    Each line is one record: a quote left open does not swallow the rows after it (as a plain csv reader would,
    silently, up to the next quote); that line is rejected and the next one read as usual."""
    for number, text in enumerate(fh, first_line):
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            rows = list(csv.reader([text], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            yield number, None, f"malformed CSV line: {exc} (an unterminated quote?)"
            continue
        yield number, (rows[0] if rows else []), ""


def csv_chunks(
    fh: TextIO,
    size: int = CHUNK,
    *,
    delimiter: str | None = None,
    region: str = "US",
    report: CsvLayout | None = None,
    duplicates: list[tuple[int, str, str]] | None = None,
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Rows of a contacts CSV as ``(line number, contact dict)``, ``size`` at a time. The delimiter is detected
    from the header (comma, semicolon, tab, pipe) unless given. A phone already seen earlier in the file (after
    normalisation) is not sent again: it is appended to ``duplicates`` as ``(line, phone, reason)``. A malformed line
    comes as ``(line number, {CSV_ERROR: why})``: rejected by number, the rows after it still read."""
    first = fh.readline()
    delim = delimiter or sniff_delimiter(first)
    header = next(csv.reader([first], delimiter=delim), [])
    lay = layout(header, delim)
    if report is not None:
        report.delimiter, report.columns, report.ignored, report.renamed = delim, lay.columns, lay.ignored, lay.renamed
    seen: dict[int | str, int] = {}
    extra_noted = False
    chunk: list[tuple[int, dict[str, Any]]] = []
    for line, values, error in _csv_lines(fh, delim, first_line=2):
        if values is None:  # a malformed line (an unterminated quote): rejected by its number, the next rows read
            chunk.append((line, {CSV_ERROR: error}))
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(lay.columns) and not extra_noted and report is not None:
            report.ignored.append(f"values beyond the {len(lay.columns)} named columns (first on line {line})")
            extra_noted = True
        contact: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for target, raw in zip(lay.columns, values, strict=False):
            text = raw.strip()
            if target is None or not text:
                continue
            kind, name = target
            if kind == "field":
                contact[name] = text
            else:
                attrs[name] = _value(text)
        if attrs:
            contact["attributes"] = attrs
        phone = contact.get("phone")
        if phone and duplicates is not None:
            norm = normalize(phone, region)
            key: int | str = int(norm[1:]) if norm else phone
            if key in seen:
                duplicates.append((line, phone, f"duplicate phone in the file (first on line {seen[key]})"))
                continue
            seen[key] = line
        chunk.append((line, contact))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _checked(
    chunks: Iterator[list[tuple[int, dict[str, Any]]]], path: Path
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """``chunks``, with a malformed CSV turned into a clear error."""
    try:
        yield from chunks
    except csv.Error as exc:
        raise CliError(f"{path}: not a readable CSV: {exc}") from None


class Progress:
    """A progress bar on a TTY, plain lines otherwise."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out, self.tty = max(total, 1), out, out.isatty()

    def update(self, done: int, note: str = "") -> None:
        if self.tty:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.out.write(f"\rimporting [{bar:<30}] {frac:4.0%} {done:,}/{self.total:,} rows {note}")
            self.out.flush()
        else:
            print(f"imported {done:,}/{self.total:,} rows {note}", file=self.out, flush=True)

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def cmd_contacts_import(args: argparse.Namespace) -> int:
    client = client_from(args)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            total = max(sum(1 for _ in fh) - 1, 0)
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV") from None
    inserted = updated = done = 0
    rejects: list[tuple[int, str, str]] = []
    duplicates: list[tuple[int, str, str]] = []
    lay = CsvLayout(",", [])
    delimiter = DELIMITERS.get(args.delimiter, args.delimiter) if args.delimiter else None
    progress = Progress(total, sys.stderr)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        chunks = csv_chunks(fh, args.chunk, delimiter=delimiter, region=args.region, report=lay, duplicates=duplicates)
        for rows in _checked(chunks, path):
            rejects.extend((line, "", row[CSV_ERROR]) for line, row in rows if CSV_ERROR in row)
            chunk = [(line, row) for line, row in rows if CSV_ERROR not in row]
            if chunk:
                res = client.call(
                    "POST",
                    f"/sending-lists/{args.list}/contacts",
                    {"contacts": [c for _, c in chunk], "default_region": args.region},
                )
                inserted += res["inserted"]
                updated += res["updated"]
                for r in res["rejected"]:
                    line, row = chunk[r["index"]]
                    rejects.append((line, str(row.get("phone", "")), r["reason"]))
            done += len(rows)
            progress.update(done, f"(inserted {inserted:,}, updated {updated:,}, rejected {len(rejects):,})")
    progress.close()
    names = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
    print(
        f"read as {names.get(lay.delimiter, repr(lay.delimiter))}-separated"
        + (f"; columns read as: {', '.join(lay.renamed)}" if lay.renamed else "")
    )
    if lay.ignored:
        print(f"ignored columns: {'; '.join(lay.ignored)}")
    if duplicates:
        print(f"duplicate phones in the file: {len(duplicates):,} rows skipped (the first row of each number is kept)")
        rejects = sorted(rejects + duplicates)
    print(f"sending list {args.list}: inserted {inserted:,}, updated {updated:,}, rejected {len(rejects):,}")
    for line, phone, reason in rejects[:SHOW_REJECTS]:
        print(f"  line {line}: {reason} (phone: {phone!r})")
    if len(rejects) > SHOW_REJECTS:
        more = "" if args.rejects else "; write them all with --rejects FILE.csv"
        print(f"  ... and {len(rejects) - SHOW_REJECTS:,} more{more}")
    if args.rejects:
        with open(args.rejects, "w", newline="", encoding="utf-8") as out:
            w = csvsafe.writer(out)  # the phone column is user input: no cell may start a formula
            w.writerow(["line", "phone", "reason"])
            w.writerows(rejects)
        print(f"every rejected row: {args.rejects}")
    return 0


# --------------------------------------------------------------------------------------------- campaigns


def _all(client: ApiClient, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        sep = "&" if "?" in path else "?"
        page = client.call("GET", f"{path}{sep}limit=1000&after={after}")
        items += page["items"]
        if page["next_after"] is None:
            return items
        after = page["next_after"]


def cmd_campaign_create(args: argparse.Namespace) -> int:
    if args.example:
        from .apimodels import CampaignIn

        print(json.dumps(CampaignIn.model_json_schema()["examples"][0], indent=2))
        return 0
    client = client_from(args)
    try:
        raw = Path(args.file).read_text(encoding="utf-8") if args.file else args.json
        body = json.loads(raw)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc}") from None
    except ValueError as exc:
        raise CliError(f"the campaign is not valid JSON: {exc}") from None
    camp = client.call("POST", "/campaigns", body)
    print(json.dumps(camp, indent=2))
    print(
        f"created campaign {camp['id']}"
        + (
            f", next run {camp['next_run_at']}"
            if camp.get("next_run_at")
            else f" (runs when triggered: trackly campaign trigger {camp['id']})"
        ),
        file=sys.stderr,
    )
    return 0


def _schedule(s: dict[str, Any] | None) -> str:
    if not s:
        return "manual"
    return f"at {s['at']}" if s.get("at") else f"cron '{s.get('cron')}' {s.get('timezone', 'UTC')}"


def cmd_campaign_list(args: argparse.Namespace) -> int:
    rows = _all(client_from(args), "/campaigns")
    if not rows:
        print("no campaigns")
        return 0
    print(f"{'id':>5}  {'status':<7}  {'list':>5}  {'audiences':<12}  {'creative':>8}  {'next run':<25}  schedule")
    for c in rows:
        auds = ",".join(map(str, c["audience_ids"]))
        print(
            f"{c['id']:>5}  {c['status']:<7}  {c['sending_list_id']:>5}  {auds:<12}  {c['creative_id']:>8}  "
            f"{c.get('next_run_at') or '-':<25}  {_schedule(c.get('schedule'))}"
        )
    return 0


def cmd_campaign_show(args: argparse.Namespace) -> int:
    print(json.dumps(client_from(args).call("GET", f"/campaigns/{args.id}"), indent=2))
    return 0


def cmd_campaign_trigger(args: argparse.Namespace) -> int:
    # The answer comes once every message is queued: minutes for millions of contacts.
    body = {"force": True} if getattr(args, "again", False) else None
    out = client_from(args).call("POST", f"/campaigns/{args.id}/trigger", body, timeout=3600)
    ex = out.get("execution") or {}
    counts = ex.get("counts") or {}
    if ex.get("status") == "failed":
        raise CliError(f"campaign {args.id}: execution {out['execution_id']} failed: {ex.get('reason')}")
    print(
        f"campaign {args.id}: execution {out['execution_id']} {ex.get('status', '')}; "
        f"unique {counts.get('unique', '?')}, queued {counts.get('queued', '?')}, "
        f"skipped {json.dumps({k: v for k, v in counts.get('skipped', {}).items() if v})}"
    )
    return 0


def _status_cmd(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        camp = client_from(args).call("POST", f"/campaigns/{args.id}/{action}")
        print(f"campaign {camp['id']} is {camp['status']}")
        return 0

    return run


def cmd_stats(args: argparse.Namespace) -> int:
    s = client_from(args).call("GET", f"/campaigns/{args.campaign}/stats")
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    failed = sum(s["failed"].values())
    print(f"campaign {s['campaign_id']}: {s['executions']} execution(s)")
    print(f"  queued now        {s['queued']:>9,}")
    print(f"  sent (accepted)   {s['sent']:>9,}")
    print(f"  delivered         {s['delivered']:>9,}")
    print(f"  undelivered       {s['undelivered']:>9,}")
    print(f"  awaiting report   {s['delivery_pending']:>9,}")
    print(f"  failed            {failed:>9,}  " + ", ".join(f"{k} {v:,}" for k, v in s["failed"].items()))
    print(f"  clicks            {s['clicks']['all']:>9,}  (human {s['clicks']['human']:,})")
    if s["per_variant"]:
        print(f"  {'variant':<10} {'sent':>8} {'delivered':>10} {'failed':>8} {'clicks':>8} {'human':>8}")
        for key, v in s["per_variant"].items():
            print(
                f"  {key:<10} {v['sent']:>8,} {v['delivered']:>10,} {v['failed']:>8,} "
                f"{v['clicks']['all']:>8,} {v['clicks']['human']:>8,}"
            )
    return 0


# --------------------------------------------------------------------------------------------- registration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``contacts``, ``campaign`` and ``stats`` to the ``trackly`` command."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api", help="admin API base URL (default: http://<http.host>:<http.port> from the config)")
    api.add_argument("--token", help="API token (default: http.api_tokens[0] from the config)")
    parents = [common, api]

    contacts = sub.add_parser("contacts", help="manage contacts through the daemon's admin API")
    csub = contacts.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = csub.add_parser(
        "import", help="import a CSV (phone,first_name,last_name,timezone,subscribed,in_workflow,...)", parents=parents
    )
    imp.add_argument("file", help="CSV file with a header row")
    imp.add_argument("--list", required=True, type=int, help="sending list id")
    imp.add_argument("--rejects", help="write every rejected row (line, phone, reason) to this CSV")
    imp.add_argument("--region", default="US", help="region of numbers without a country code (default US)")
    imp.add_argument("--delimiter", help="column separator: ',', ';', 'tab' or '|' (default: detected from the header)")
    imp.add_argument("--chunk", type=int, default=CHUNK, help=argparse.SUPPRESS)
    imp.set_defaults(func=cmd_contacts_import)

    camp = sub.add_parser("campaign", help="create, list, trigger, pause and resume campaigns")
    psub = camp.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = psub.add_parser("create", help="create a campaign from JSON", parents=parents)
    src = create.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSON file with the campaign (see /api/v1/openapi.json: CampaignIn)")
    src.add_argument("--json", help="the campaign as a JSON string")
    src.add_argument("--example", action="store_true", help="print an example campaign JSON and exit")
    create.set_defaults(func=cmd_campaign_create)
    psub.add_parser("list", help="list campaigns", parents=parents).set_defaults(func=cmd_campaign_list)
    for name, fn, text in (
        ("show", cmd_campaign_show, "show one campaign"),
        ("trigger", cmd_campaign_trigger, "run a campaign now"),
        ("pause", _status_cmd("pause"), PAUSE_DESCRIPTION),
        ("resume", _status_cmd("resume"), RESUME_DESCRIPTION),
    ):
        p = psub.add_parser(name, help=text, parents=parents)
        p.add_argument("id", type=int, help="campaign id")
        if name == "trigger":
            p.add_argument(
                "--again",
                action="store_true",
                help="run a one-off campaign that has already run once more (the list's cooldown still "
                "applies; an execution still evaluating or sending is never overridden)",
            )
        p.set_defaults(func=fn)

    st = sub.add_parser("stats", help="a campaign's numbers: queued, sent, delivered, failed, clicks", parents=parents)
    st.add_argument("campaign", type=int, help="campaign id")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.set_defaults(func=cmd_stats)
