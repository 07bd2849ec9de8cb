"""CLI commands that talk to a running daemon's admin API over HTTP.

``trackly contacts import FILE.csv --list ID``, ``trackly campaign create|list|show|trigger|pause|resume``,
``trackly stats CAMPAIGN``. The API address defaults to the config's ``http.host``/``http.port`` (``--api``
overrides it) and the token to ``http.api_tokens[0]`` (``--token``).

A contacts CSV has a header row; ``phone, first_name, last_name, timezone, subscribed, blocked, in_workflow``
are contact fields, every other column is an attribute (whole numbers and decimals become numbers, so filters
like ``gte`` compare them as numbers; values with a leading zero stay text). Rows are streamed to the bulk
endpoint in chunks; bad rows are reported with their CSV line number and never stop the good ones.
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
from pathlib import Path
from typing import Any, TextIO

from . import csvsafe
from .config import load_config
from .errors import TracklyError
from .models import PAUSE_DESCRIPTION, RESUME_DESCRIPTION

CONTACT_COLUMNS = ("phone", "first_name", "last_name", "timezone", "subscribed", "blocked", "in_workflow")
CHUNK = 1000
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


def csv_chunks(fh: TextIO, size: int = CHUNK) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Rows of a contacts CSV as ``(line number, contact dict)``, ``size`` at a time."""
    reader = csv.DictReader(fh)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "phone" not in fields:
        raise CliError(f"the CSV needs a header row with a 'phone' column (got: {', '.join(fields) or 'nothing'})")
    reader.fieldnames = fields
    chunk: list[tuple[int, dict[str, Any]]] = []
    for row in reader:
        contact: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for key, raw in row.items():
            if key is None or raw is None:
                continue
            text = raw.strip() if isinstance(raw, str) else ""
            if not text:
                continue
            if key in CONTACT_COLUMNS:
                contact[key] = text
            else:
                attrs[key] = _value(text)
        if attrs:
            contact["attributes"] = attrs
        chunk.append((reader.line_num, contact))
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
    progress = Progress(total, sys.stderr)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for chunk in _checked(csv_chunks(fh, args.chunk), path):
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
            done += len(chunk)
            progress.update(done, f"(inserted {inserted:,}, updated {updated:,}, rejected {len(rejects):,})")
    progress.close()
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
    for name, fn, text in (("show", cmd_campaign_show, "show one campaign"),
                           ("trigger", cmd_campaign_trigger, "run a campaign now"),
                           ("pause", _status_cmd("pause"), PAUSE_DESCRIPTION),
                           ("resume", _status_cmd("resume"), RESUME_DESCRIPTION)):
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
