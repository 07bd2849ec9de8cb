"""CLI commands that talk to a running daemon's admin API over HTTP.

``trackly contacts import FILE.csv --list ID``, ``trackly campaign create|list|show|trigger|pause|resume``,
``trackly stats CAMPAIGN``. The API address defaults to the config's ``http.host``/``http.port`` (``--api``
overrides it) and the token to ``http.api_tokens[0]`` (``--token``).

A contacts CSV has a header row; its delimiter (comma, semicolon, tab or pipe) is detected from it, or given with
``--delimiter``. ``phone`` (also read from ``mobile``, ``msisdn``, ``phone_number``, ``cell``, ...), ``first_name``,
``last_name``, ``timezone``, ``subscribed``, ``blocked``, ``in_workflow``, ``last_sent_at`` (also ``last_sent``,
``last_texted_at``) are contact fields; every other column is an attribute (its name made a valid attribute name;
whole numbers and decimals become numbers, so filters like ``gte`` compare them as numbers; values with a leading
zero stay text). Columns that cannot be used (no name, a
second column for the same field) are reported as ignored; a phone number seen earlier in the file is reported as a
duplicate and not sent again. Rows are streamed to the bulk endpoint in chunks; bad rows are reported with their
CSV line number and never stop the good ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from trackly_exec.api import csvsafe
from trackly_exec.config import config_file, has_scheme, load_config, mask_url_password
from trackly_exec.errors import TracklyError
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.models import CANCEL_DESCRIPTION, PAUSE_DESCRIPTION, RESUME_DESCRIPTION
from trackly_exec.store.phones import normalize

CHUNK = 1000
#: Key of a contact dict that stands for a CSV line that could not be read (never sent to the API).
CSV_ERROR = "_csv_error"
SHOW_REJECTS = 20
_NUMBER = re.compile(r"^-?(0|[1-9]\d{0,15})(\.\d+)?$")


class CliError(TracklyError):
    """A CLI failure with a message for the user (exit status 1)."""


def writable(name: str, what: str) -> None:
    """Refuse (CliError) an output file that cannot be written, before any work: a directory, a missing directory,
    no permission. The file itself is not created."""
    target = Path(name)
    if target.is_dir():
        raise CliError(f"{what} {name} is a directory; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"{what} {name}: no such directory {parent}")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise CliError(f"{what} {name}: permission denied")


# --------------------------------------------------------------------------------------------- HTTP client


class ApiClient:
    """A small blocking JSON client for the admin API."""

    def __init__(self, base: str, token: str, timeout: float = 120.0, config: str = "trackly.toml") -> None:
        if not has_scheme(base, ("http", "https")):
            raise CliError(f"--api {mask_url_password(base)!r}: an http:// or https:// URL of the daemon")
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.config = config  # named in the hint when the daemon cannot be reached

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
                f"cannot reach the trackly daemon at {mask_url_password(self.base)} ({reason}).\n"
                f"Is it running? Start it with `trackly run -c {self.config}` (or try `trackly demo`), "
                "or point --api at it."
            ) from None


def _describe(status: int, raw: bytes) -> str:
    try:
        err = json.loads(raw)
    except ValueError:
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    if status == 401:
        return "the daemon refused the API token (HTTP 401); pass --token or set http.api_tokens in the config"
    details = err.get("details", [])
    message = err.get("message") or err.get("error")
    if details and message == "; ".join(d.get("msg") for d in details[:10]):
        if len(details) > 1:
            message = "the request was refused"
        else:  # one problem: on one line, with the field it is about (e.g. "body.schedule.cron: Bad minute ...")
            loc = str(details[0].get("loc") or "").removeprefix("body.")
            message = f"{loc}: {details[0].get('msg')}" if loc and loc != "body" else details[0].get("msg")
            details = []
    msg = f"HTTP {status}: {message}"
    for d in details[:10]:
        msg += f"\n  {d.get('loc')}: {d.get('msg')}"
    return msg


def _contacts(n: int) -> str:
    return "1 contact" if n == 1 else f"{n:,} contacts"


#: ``--api``'s help (the admin and operations commands).
API_HELP = (
    "admin API base URL (default from the config: http://<http.operator_host>:<http.operator_port> when "
    "operator_port is set, else http://<http.host>:<http.port>)"
)


def client_from(args: argparse.Namespace) -> ApiClient:
    api, token = args.api, args.token
    if api is None or token is None:
        settings = load_config(args.config)
        if api is None:
            api = settings.http.admin_url
        if token is None:
            if not settings.http.api_tokens:
                file = config_file(args.config)
                where = (
                    f"the config {file} sets no http.api_tokens"
                    if file.exists()
                    else f"no config file was read ({file} does not exist: pass -c /etc/trackly/trackly.toml or set "
                    "TRACKLY_CONFIG to the daemon's config)"
                )
                raise CliError(f"no API token: {where}; or pass --token")
            token = settings.http.api_tokens[0].get_secret_value()
    # the daemon's base URL; the README's $API (…/api/v1) is taken too, not answered with a bare 404
    api = api.rstrip("/").removesuffix("/api/v1")
    return ApiClient(api, token, config=str(config_file(args.config)))


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
    "last_sent_at": ("last_sent_at", "last_sent", "last_texted_at", "last_texted"),
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
        bad = next((i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:  # (read with surrogateescape: a byte that is not UTF-8; the other lines still count)
            yield number, None, f"not UTF-8 text (byte 0x{ord(text[bad]) - 0xDC00:02x} in column {bad + 1})"
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
) -> Iterator[list[tuple[int, JsonObject]]]:
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
    chunk: list[tuple[int, JsonObject]] = []
    for line, values, error in _csv_lines(fh, delim, first_line=2):
        if values is None:  # a malformed line (an unterminated quote): rejected by its number, the next rows read
            chunk.append((line, {CSV_ERROR: error}))
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(lay.columns) and not extra_noted and report is not None:
            report.ignored.append(f"values beyond the {len(lay.columns)} named columns (first on line {line})")
            extra_noted = True
        contact: JsonObject = {}
        attrs: JsonObject = {}
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


def _checked(chunks: Iterator[list[tuple[int, JsonObject]]], path: Path) -> Iterator[list[tuple[int, JsonObject]]]:
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
    if not path.exists():
        raise CliError(f"no such file: {path}")
    if not path.is_file():
        raise CliError(f"not a file: {path}")
    # a line that is not UTF-8 is rejected by its number (save the file as UTF-8 CSV), the others imported
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        total = max(sum(1 for _ in fh) - 1, 0)
    if args.rejects:  # before anything is imported: the list of rejected rows must have somewhere to go
        writable(args.rejects, "--rejects")
    inserted = updated = done = 0
    rejects: list[tuple[int, str, str]] = []
    duplicates: list[tuple[int, str, str]] = []
    lay = CsvLayout(",", [])
    delimiter = DELIMITERS.get(args.delimiter, args.delimiter) if args.delimiter else None
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise CliError(f"--delimiter {args.delimiter!r}: one character (',', ';', 'tab', '|')")
    progress = Progress(total, sys.stderr)
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
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
            # (a duplicate phone is skipped while the file is read: it counts as read, and as rejected, at once)
            refused = len(rejects) + len(duplicates)
            note = f"(inserted {inserted:,}, updated {updated:,}, rejected {refused:,})"
            progress.update(done + len(duplicates), note)
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


def _all(client: ApiClient, path: str) -> list[JsonObject]:
    items: list[JsonObject] = []
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
        from trackly_exec.api.models_campaigns import CampaignIn

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


def _label(name: str | None, cid: int, noun: str = "campaign") -> str:
    plain = f"{noun} {cid}"
    return plain if not name or name == plain else f"{noun} {cid} {name!r}"


def _schedule(s: JsonObject | None) -> str:
    if not s:
        return "manual"
    return f"at {s['at']}" if s.get("at") else f"cron '{s.get('cron')}' {s.get('timezone', 'UTC')}"


def _filters(args: argparse.Namespace) -> str:
    """The list filters given on the command line as a query string."""
    from urllib.parse import urlencode

    q: dict[str, str] = {}
    if getattr(args, "name", None):
        q["name"] = args.name
    if getattr(args, "status", None):
        q["status"] = args.status
    if getattr(args, "archived", False):
        q["archived"] = "true"
    return f"?{urlencode(q)}" if q else ""


def cmd_campaign_list(args: argparse.Namespace) -> int:
    rows = _all(client_from(args), f"/campaigns{_filters(args)}")
    if not rows:
        print("no campaigns")
        return 0
    width = min(max(len("name"), *(len(c["name"]) for c in rows)), 40)
    print(
        f"{'id':>5}  {'name':<{width}}  {'status':<7}  {'list':>5}  {'audiences':<12}  {'creative':>8}  "
        f"{'next run':<25}  schedule"
    )
    for c in rows:
        auds = ",".join(map(str, c["audience_ids"]))
        # a paused campaign runs nothing until resumed, and resume schedules a cron's next occurrence from then
        nxt = "- (paused)" if c["status"] == "paused" else c.get("next_run_at") or "-"
        if c.get("cancelled_at"):
            nxt = "- (cancelled)"
        print(
            f"{c['id']:>5}  {c['name'][:width]:<{width}}  {c['status']:<7}  {c['sending_list_id']:>5}  {auds:<12}  "
            f"{c['creative_id']:>8}  {nxt:<25}  {_schedule(c.get('schedule'))}"
            + (f" until {c['end_at']}" if c.get("end_at") else "")
        )
    return 0


def cmd_campaign_show(args: argparse.Namespace) -> int:
    print(json.dumps(client_from(args).call("GET", f"/campaigns/{args.id}"), indent=2))
    return 0


class Follow:
    """An execution's evaluation as a progress bar on a TTY, or a plain line per change (at most one per
    ``every`` seconds) otherwise."""

    def __init__(self, out: TextIO, every: float = 2.0) -> None:
        self.out, self.tty, self.every = out, out.isatty(), every
        self.last_line = ""
        self.last_at = 0.0

    def update(self, ex: JsonObject, *, last: bool = False) -> None:
        """Show ``ex``'s progress; ``last``: its final state, shown whatever the interval (so the last line never
        says "pending" of an execution that has been queued since)."""
        import time

        k = ex.get("counts") or {}
        done, total = int(k.get("evaluated") or 0), int(k.get("expected") or 0)
        queued = int(k.get("queued") or 0)
        status = ex.get("status", "pending")
        if self.tty:
            frac = min(done / total, 1.0) if total else 0.0
            bar = "#" * int(frac * 30)
            self.out.write(f"\r{status:<10} [{bar:<30}] {frac:4.0%} {done:,}/{total:,} contacts, queued {queued:,} ")
            self.out.flush()
            return
        line = f"{status}: {done:,}/{total:,} contacts evaluated, {queued:,} queued"
        now = time.monotonic()
        if line != self.last_line and (last or now - self.last_at >= self.every):
            print(line, file=self.out, flush=True)
            self.last_line, self.last_at = line, now

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


RUNNING = ("pending", "evaluating")


def follow_execution(
    client: ApiClient, execution_id: int, out: TextIO, poll: float = 0.5, every: float = 2.0
) -> JsonObject:
    """Poll the execution until it is evaluated (queued, completed, failed or skipped), drawing its progress."""
    import time

    follow = Follow(out, every)
    try:
        while True:
            ex = client.call("GET", f"/executions/{execution_id}")
            done = ex.get("status") not in RUNNING
            follow.update(ex, last=done)
            if done:
                return dict(ex)
            time.sleep(poll)
    finally:
        follow.close()


def cmd_campaign_trigger(args: argparse.Namespace) -> int:
    client = client_from(args)
    body = {"force": True} if getattr(args, "again", False) else None
    out = client.call("POST", f"/campaigns/{args.id}/trigger", body)
    eid = out["execution_id"]
    if args.detach:
        print(
            f"campaign {args.id}: execution {eid} started; follow it with "
            f"`trackly campaign follow {eid}` (or GET /api/v1/executions/{eid})"
        )
        return 0
    return _report(args.id, follow_execution(client, eid, sys.stderr, poll=args.poll, every=args.every))


def cmd_campaign_follow(args: argparse.Namespace) -> int:
    client = client_from(args)
    ex = follow_execution(client, args.execution, sys.stderr, poll=args.poll, every=args.every)
    return _report(ex.get("campaign_id"), ex)


def _report(campaign_id: Any, ex: JsonObject) -> int:
    counts = ex.get("counts") or {}
    what = f"campaign {campaign_id}" if campaign_id else "test send"  # a test send's execution has campaign 0
    if ex.get("status") in ("failed", "skipped"):
        raise CliError(f"{what}: execution {ex['id']} {ex['status']}: {ex.get('reason')}")
    print(
        f"{what}: execution {ex['id']} {ex.get('status', '')}; "
        f"unique {counts.get('unique', '?')}, queued {counts.get('queued', '?')}, "
        f"skipped {json.dumps({k: v for k, v in counts.get('skipped', {}).items() if v})}"
    )
    return 0


def _skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in skipped.items() if v) or "none"


def cmd_campaign_estimate(args: argparse.Namespace) -> int:
    client = client_from(args)
    e = client.call("POST", f"/campaigns/{args.id}/estimate", timeout=3600)
    if args.json:
        print(json.dumps(e, indent=2))
        return 0
    k = e["counts"]
    print(f"{_label(e.get('name'), e['campaign_id'])}: estimate (dry run, nothing queued)")
    for aid, n in k.get("per_audience", {}).items():
        aud = client.call("GET", f"/audiences/{aid}")
        print(f"  {_label(aud.get('name'), int(aid), 'audience'):<32} {n:>10,}")
    print(f"  {'overlap (in several audiences)':<32} {k.get('overlap', 0):>10,}")
    if k.get("duplicate_handsets"):
        print(f"  {'same handset, other spelling':<32} {k['duplicate_handsets']:>10,}  (texted once)")
    print(f"  {'unique contacts':<32} {k.get('unique', 0):>10,}")
    print(f"  {'skipped':<32} {sum(k.get('skipped', {}).values()):>10,}  {_skips(k.get('skipped', {}))}")
    print(f"  {'queued':<32} {e['queued']:>10,}  (held for quiet hours {k.get('held_quiet_hours', 0):,})")
    enc = ", ".join(f"{n:,} {name}" for name, n in k.get("encodings", {}).items())
    print(f"  {'segments':<32} {e['segments']:>10,}  {enc}")
    print(
        f"  {'cost':<32} {e['cost']:>10,.2f}  at {e['price_per_segment']:g} per segment "
        f"(account balance {e['balance']:,.2f})"
    )
    if e["cost"] > e["balance"]:
        print("  WARNING: the cost is above the account's balance; sending stops when the balance runs out")
    return 0


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise CliError(f"--contacts takes contact ids separated by commas (got {text!r})") from None


def print_preview(p: JsonObject) -> None:
    print(
        f"{_label(p.get('name'), p['creative_id'], 'creative')} on sending list {p['sending_list_id']} "
        f"(price {p['price_per_segment']:g} per segment); {p['scanned']:,} contacts scanned"
        + ("" if p["scan_complete"] else " (not all: raise --scan-limit)")
    )
    for v in p["variants"]:
        print(f"\nvariant {v['key']} (weight {v['weight']:g}): {v['template']!r}")
        for x in v["samples"]:
            if x.get("skipped"):  # its reason: a placeholder without a value, or one a run would skip it for
                missing = x.get("missing") or []
                why = (
                    "no value for " + ", ".join(f"{{{n}}}" for n in missing)
                    if missing
                    else str(x["skipped"]).replace("_", " ")
                )
                print(f"  contact {x['contact_id']} {x['phone']}: SKIPPED ({why})")
                for line in (x.get("body") or "").split("\n") if x.get("body") else ():
                    print(f"    | {line}")
                continue
            unit = "septets" if x["encoding"] == "GSM-7" else "UTF-16 units"  # what decides segments, not characters
            print(
                f"  contact {x['contact_id']} {x['phone']}: {x['encoding']}, {x['length']} {unit}, "
                f"{x['segments']} segment{'s' if x['segments'] != 1 else ''}, cost {x['cost']:g}"
            )
            for line in (x["body"] or "").split("\n"):
                print(f"    | {line}")
            for link in x.get("links", []):
                print(f"    link {link['short_url']} -> {link['destination']}")
        for ph in v["placeholders"]:
            notes = []
            if not ph["known"]:
                notes.append(
                    "NOT a field of the list's contacts"
                    + (f" (did you mean {{{ph['suggestion']}}}?)" if ph.get("suggestion") else "")
                )
            if ph["would_skip"]:
                notes.append(f"no default: {_contacts(ph['would_skip'])} would be skipped")
            elif ph["missing"]:
                verb = "gets" if ph["missing"] == 1 else "get"
                notes.append(f"{_contacts(ph['missing'])} {verb} the default {ph['default']!r}")
            print(f"  {{{ph['name']}}}: " + ("; ".join(notes) if notes else "ok"))
    if p["warnings"]:
        print("\nwarnings:")
        for w in p["warnings"]:
            print(f"  ! {w}")
    else:
        print("\nno warnings")


def _preview(args: argparse.Namespace, path: str, body: JsonObject) -> int:
    """POST a preview (with the audience and contacts given on the command line) and print it."""
    if args.audience:
        body["audience_id"] = args.audience
    if (ids := _ids(args.contacts)) is not None:
        body["contact_ids"] = ids
    p = client_from(args).call("POST", path, body, timeout=600)
    if args.json:
        print(json.dumps(p, indent=2, ensure_ascii=False))
    else:
        print_preview(p)
    return 0


def cmd_creative_preview(args: argparse.Namespace) -> int:
    body: JsonObject = {"sample": args.sample, "track_links": args.links, "scan_limit": args.scan_limit}
    if args.list:
        body["sending_list_id"] = args.list
    return _preview(args, f"/creatives/{args.id}/preview", body)


def cmd_campaign_preview(args: argparse.Namespace) -> int:
    body: JsonObject = {"sample": args.sample, "scan_limit": args.scan_limit}
    return _preview(args, f"/campaigns/{args.id}/preview", body)


RESOURCES = {
    "campaign": "/campaigns",
    "creative": "/creatives",
    "audience": "/audiences",
    "list": "/sending-lists",
    "account": "/accounts",
}


def _edit_cmd(noun: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        body: JsonObject = {}
        if args.json:
            try:
                body = json.loads(args.json)
            except ValueError as exc:
                raise CliError(f"--json is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise CliError("--json must be a JSON object of the fields to change")
        for key in ("name", "description"):
            if getattr(args, key, None) is not None:
                body[key] = getattr(args, key)
        if getattr(args, "end_at", None) is not None:
            body["end_at"] = None if args.end_at in ("", "none") else args.end_at
        if not body:
            raise CliError(
                "nothing to change: give --name, --description"
                + (", --end-at" if noun == "campaign" else "")
                + " or --json '{...}'"
            )
        out = client_from(args).call("PATCH", f"{RESOURCES[noun]}/{args.id}", body)
        print(json.dumps(out, indent=2, ensure_ascii=False))
        print(
            f"{_label(out.get('name'), out['id'], noun if noun != 'list' else 'sending list')} updated", file=sys.stderr
        )
        return 0

    return run


def cmd_account_show(args: argparse.Namespace) -> int:
    print(json.dumps(client_from(args).call("GET", f"/accounts/{args.id}"), indent=2, ensure_ascii=False))
    return 0


def _amount(sign: int) -> Any:
    def amount(text: str) -> float:
        value = float(text)  # a ValueError: argparse says "invalid amount value"
        if value != value or value in (float("inf"), float("-inf")) or value <= 0:
            raise ValueError(text)  # (a negative amount is refused: top-up and debit say the direction)
        return sign * value

    return amount


def cmd_account_balance(args: argparse.Namespace) -> int:
    body: JsonObject = {"amount": args.amount}
    if args.note:
        body["note"] = args.note
    out = client_from(args).call("POST", f"/accounts/{args.id}/balance", body)
    print(f"{_label(out.get('name'), out['id'], 'account')}: balance {out['balance']:,.6g} ({args.amount:+,.6g})")
    return 0


def _archive_cmd(noun: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        out = client_from(args).call("DELETE", f"{RESOURCES[noun]}/{args.id}")
        see = (
            "trackly campaign list --archived" if noun == "campaign" else f"GET /api/v1{RESOURCES[noun]}?archived=true"
        )
        print(
            f"{_label(out.get('name'), out['id'], noun if noun != 'list' else 'sending list')} archived "
            f"(hidden from lists; see them with {see})"
        )
        return 0

    return run


def cmd_contacts_erase(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CliError(
            f"erasing contact {args.id} cannot be undone: its number and personal data are redacted "
            "everywhere. Add --yes to do it."
        )
    out = client_from(args).call("POST", f"/contacts/{args.id}/erase")
    print(
        f"contact {args.id} erased: {out['queued_dead_lettered']} queued message(s) dead-lettered, "
        f"{out['sent_redacted']} sent and {out['failed_redacted']} failed record(s) redacted, "
        f"{out['inbound_redacted']} inbound, {out['outbox_redacted']} webhook and {out['events_redacted']} alert "
        f"record(s) and {out.get('links_redacted', 0)} tracked link(s) redacted"
    )
    if out["in_flight"]:
        print(f"  {out['in_flight']} message(s) were being sent: run this again in a minute to redact them too")
    return 0


def _test_send_cmd(noun: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        numbers = [x.strip() for x in args.to.split(",") if x.strip()]
        body: JsonObject = {
            "numbers": numbers,
            "default_region": args.region,
            "override_opt_out": args.override_opt_out,
            "override_quiet_hours": args.override_quiet_hours,
        }
        for key in ("variant", "contact_id"):
            if getattr(args, key, None) is not None:
                body[key] = getattr(args, key)
        if noun == "creative":
            body.update(creative_id=args.id, track_links=args.links)
            path = f"/sending-lists/{args.list}/test-send"
        else:
            path = f"/campaigns/{args.id}/test-send"
        out = client_from(args).call("POST", path, body)
        lifted = f" (overriding {', '.join(out['overrides'])}: recorded)" if out["overrides"] else ""
        print(f"test send: execution {out['execution_id']}, variant {out['variant']}{lifted}")
        for m in out["messages"]:
            if m.get("skipped"):
                print(f"  {m['to_number']}: NOT sent ({m['skipped']}; --override-opt-out to send anyway)")
            elif m.get("held_until"):
                print(
                    f"  {m['to_number']}: queued, held until {m['held_until']} (quiet hours; "
                    "--override-quiet-hours to send now)"
                )
            else:
                print(f"  {m['to_number']}: queued ({m['segments']} segment(s), {m['encoding']}): {m['body']!r}")
        if out["messages"] and all(m.get("skipped") for m in out["messages"]):
            print("nothing was sent", file=sys.stderr)
            return 1  # a script can tell it from a test send that went
        return 0

    return run


def _status_cmd(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        camp = client_from(args).call("POST", f"/campaigns/{args.id}/{action}")
        print(f"campaign {camp['id']} is {camp['status']}")
        return 0

    return run


def cmd_campaign_cancel(args: argparse.Namespace) -> int:
    out = client_from(args).call("POST", f"/campaigns/{args.id}/cancel")
    print(f"campaign {out['id']}: {out['cancelled']:,} queued message(s) dead-lettered CANCELLED; now {out['status']}")
    if out["still_claimed"] or out["evaluating"]:
        why = "still being evaluated" if out["evaluating"] else f"{out['still_claimed']:,} message(s) still claimed"
        print(f"  {why}: run `trackly campaign cancel {out['id']}` again in a moment", file=sys.stderr)
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    s = client_from(args).call("GET", f"/campaigns/{args.campaign}/stats")
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    failed = sum(s["failed"].values())
    print(f"{_label(s.get('name'), s['campaign_id'])}: {s['executions']} execution(s)")
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
    api.add_argument("--api", help=API_HELP)
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
    lst = psub.add_parser("list", help="list campaigns (active ones; --archived for retired ones)", parents=parents)
    lst.add_argument("--name", help="only campaigns whose name contains this text (any case)")
    lst.add_argument("--status", choices=("active", "paused", "done"), help="only campaigns in this state")
    lst.add_argument("--archived", action="store_true", help="list archived campaigns instead")
    lst.set_defaults(func=cmd_campaign_list)
    est = psub.add_parser(
        "estimate", help="dry run: who a run now would text, skipped by reason, segments, cost", parents=parents
    )
    est.add_argument("id", type=int, help="campaign id")
    est.add_argument("--json", action="store_true", help="print the raw JSON")
    est.set_defaults(func=cmd_campaign_estimate)
    trig = psub.add_parser(
        "trigger", help="run a campaign now and follow its evaluation with a progress bar", parents=parents
    )
    trig.add_argument("id", type=int, help="campaign id")
    trig.add_argument("--detach", action="store_true", help="print the execution id and return at once")
    trig.add_argument(
        "--again",
        action="store_true",
        help="run a one-off campaign that has already run once more (the list's cooldown still "
        "applies; an execution still evaluating or sending is never overridden)",
    )
    trig.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    trig.add_argument("--every", type=float, default=2.0, help=argparse.SUPPRESS)
    trig.set_defaults(func=cmd_campaign_trigger)
    fol = psub.add_parser("follow", help="follow an execution's evaluation until it is queued", parents=parents)
    fol.add_argument("execution", type=int, help="execution id")
    fol.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    fol.add_argument("--every", type=float, default=2.0, help=argparse.SUPPRESS)
    fol.set_defaults(func=cmd_campaign_follow)
    for name, fn, text in (
        ("show", cmd_campaign_show, "show one campaign"),
        ("pause", _status_cmd("pause"), PAUSE_DESCRIPTION),
        ("resume", _status_cmd("resume"), RESUME_DESCRIPTION),
        ("cancel", cmd_campaign_cancel, CANCEL_DESCRIPTION),
    ):
        p = psub.add_parser(name, help=text, parents=parents)
        p.add_argument("id", type=int, help="campaign id")
        p.set_defaults(func=fn)

    pv = psub.add_parser(
        "preview", help="render the campaign's message for sample contacts, with warnings", parents=parents
    )
    pv.add_argument("id", type=int, help="campaign id")
    pv.add_argument("--audience", type=int, help="one of the campaign's audiences (default: its first)")
    pv.add_argument("--contacts", help="contact ids, comma-separated, instead of a sample")
    pv.add_argument("--sample", type=int, default=3, help="how many contacts (default 3)")
    pv.add_argument("--scan-limit", type=int, default=100_000, help="contacts scanned for missing values")
    pv.add_argument("--json", action="store_true", help="print the raw JSON")
    pv.set_defaults(func=cmd_campaign_preview)

    cre = sub.add_parser("creative", help="preview, edit and archive creatives")
    rsub = cre.add_subparsers(dest="action", metavar="ACTION", required=True)
    cp = rsub.add_parser(
        "preview",
        help="render a creative for sample contacts: body, encoding, segments, cost, "
        "links, typos, skips, blocked words",
        parents=parents,
    )
    cp.add_argument("id", type=int, help="creative id")
    cp.add_argument("--audience", type=int, help="sample contacts of this audience")
    cp.add_argument("--list", type=int, help="sending list (default: the audience's or the contacts')")
    cp.add_argument("--contacts", help="contact ids, comma-separated, instead of a sample")
    cp.add_argument("--sample", type=int, default=3, help="how many contacts (default 3)")
    cp.add_argument("--links", action="store_true", help="show URLs as tracked short links")
    cp.add_argument("--scan-limit", type=int, default=100_000, help="contacts scanned for missing values")
    cp.add_argument("--json", action="store_true", help="print the raw JSON")
    cp.set_defaults(func=cmd_creative_preview)

    acc = sub.add_parser("account", help="show and edit an account, top up its balance")
    asub = acc.add_subparsers(dest="action", metavar="ACTION", required=True)
    sh = asub.add_parser("show", help="an account (its webhook secret masked)", parents=parents)
    sh.add_argument("id", type=int, help="account id")
    sh.set_defaults(func=cmd_account_show)
    ed = asub.add_parser(
        "edit",
        help='change an account: --name, or --json \'{"webhook_url": ..., "filter_bots": true}\'',
        parents=parents,
    )
    ed.add_argument("id", type=int, help="account id")
    ed.add_argument("--name")
    ed.add_argument("--json", help="the fields to change as a JSON object (see PATCH /accounts/{id} in the OpenAPI)")
    ed.set_defaults(func=_edit_cmd("account"))
    for name, sign, what in (("top-up", 1, "credit"), ("debit", -1, "debit (a correction; never below zero)")):
        tp = asub.add_parser(name, help=f"{what} an account's prepaid balance", parents=parents)
        tp.add_argument("id", type=int, help="account id")
        tp.add_argument("amount", type=_amount(sign), help="amount, in the balance's currency")
        tp.add_argument("--note", help="why (logged)")
        tp.set_defaults(func=cmd_account_balance)

    subs = {"campaign": psub, "creative": rsub}
    for noun in ("audience", "list"):
        grp = sub.add_parser(noun, help=f"edit and archive {'sending lists' if noun == 'list' else 'audiences'}")
        subs[noun] = grp.add_subparsers(dest="action", metavar="ACTION", required=True)
    for noun, group in subs.items():
        what = "sending list" if noun == "list" else noun
        article = "an" if what[0] in "aeiou" else "a"
        ed = group.add_parser("edit", help=f"change {article} {what} (PATCH: only the fields given)", parents=parents)
        ed.add_argument("id", type=int, help=f"{what} id")
        ed.add_argument("--name")
        ed.add_argument("--description")
        if noun == "campaign":
            ed.add_argument("--end-at", help="ISO 8601 end date of a recurring campaign ('none' removes it)")
        ed.add_argument("--json", help="the fields to change as a JSON object (see the PATCH route in the OpenAPI)")
        ed.set_defaults(func=_edit_cmd(noun))
        ar = group.add_parser(
            "archive", help=f"archive {article} {what} (its history stays; it cannot be used any more)", parents=parents
        )
        ar.add_argument("id", type=int, help=f"{what} id")
        ar.set_defaults(func=_archive_cmd(noun))
    for noun, group in (("campaign", psub), ("creative", rsub)):
        ts = group.add_parser(
            "test-send", help=f"text the {noun}'s message to a few numbers now (sendType test)", parents=parents
        )
        ts.add_argument("id", type=int, help=f"{noun} id")
        if noun == "creative":
            ts.add_argument("--list", type=int, required=True, help="sending list to send through")
            ts.add_argument("--links", action="store_true", help="track links")
        ts.add_argument("--to", required=True, help="phone numbers, comma-separated (at most 10)")
        ts.add_argument("--variant", help="variant key (default: the first)")
        ts.add_argument(
            "--contact",
            dest="contact_id",
            type=int,
            help="fill placeholders from this contact for numbers that are not contacts of the list",
        )
        ts.add_argument("--region", default="US", help="region of numbers without a country code (default US)")
        ts.add_argument(
            "--override-opt-out",
            action="store_true",
            help="send even to a number that unsubscribed (recorded on the message)",
        )
        ts.add_argument(
            "--override-quiet-hours",
            action="store_true",
            help="send now even outside the quiet-hours window (recorded on the message)",
        )
        ts.set_defaults(func=_test_send_cmd(noun))
    er = csub.add_parser(
        "erase", help="erase a contact (privacy request): redact its number everywhere", parents=parents
    )
    er.add_argument("id", type=int, help="contact id")
    er.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    er.set_defaults(func=cmd_contacts_erase)

    st = sub.add_parser("stats", help="a campaign's numbers: queued, sent, delivered, failed, clicks", parents=parents)
    st.add_argument("campaign", type=int, help="campaign id")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.set_defaults(func=cmd_stats)
