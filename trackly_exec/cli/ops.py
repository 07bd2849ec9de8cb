"""CLI commands for after the send, through the daemon's admin API:

``trackly messages PHONE`` (or ``--contact/--campaign/--execution``), ``trackly export --campaign ID -o FILE.csv``,
``trackly dead-letters list|summary|redrive``, ``trackly outbox summary|list|redrive``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from trackly_exec.cli.admin import API_HELP, ApiClient, CliError, _describe, client_from, writable
from trackly_exec.store.documents import JsonObject
from trackly_exec.store.models import FailureReason


def _q(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "", False)}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _printed_whole(args: argparse.Namespace, page: Any, none: str) -> bool:
    """Print a listed ``page`` as JSON with ``--json``, or ``none`` when it has no items: True if that was all."""
    if args.json:
        _print_json(page)
        return True
    if not page["items"]:
        print(none)
        return True
    return False


# --------------------------------------------------------------------------------------------- message log


def _tri(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def cmd_messages(args: argparse.Namespace) -> int:
    args.phone = " ".join(args.phone) if args.phone else None  # `trackly messages +1 555 123 4567` unquoted
    if not (args.phone or args.contact or args.campaign or args.execution):
        raise CliError("give a phone number, or --contact, --campaign or --execution")
    client = client_from(args)
    path = "/messages" + _q(
        phone=args.phone,
        region=args.region,
        contact_id=args.contact,
        campaign_id=args.campaign,
        execution_id=args.execution,
        state=args.state,
        limit=args.limit,
        after=args.after,
    )
    page = client.call("GET", path)
    if args.json:
        _print_json(page)
        return 0
    items = page["items"]
    if page.get("phone"):
        print(f"messages to {page['phone']}:")
    if not items:
        print("no messages")
        return 0
    print(
        f"{'message':<17} {'state':<7} {'campaign':>8} {'exec':>5} {'to':<16} {'when (UTC)':<20} "
        f"{'submitted':<9} {'delivered':<9} {'clicks':>6}  detail"
    )
    for m in items:
        when = (m.get("failed_at") or m.get("sent_at") or m.get("sendtime") or "")[:19]
        if m["state"] == "sent":
            detail = f"{m.get('provider')} {m.get('provider_message_id')}" + (
                f" {m['delivery_status']}" if m.get("delivery_status") else ""
            )
        elif m["state"] == "failed":
            detail = f"{m.get('reason')}: {m.get('detail') or ''}"
        else:
            held = m.get("held")
            if held == "paused":
                detail = "paused: sent once its campaign is resumed"
            elif m.get("not_before"):
                detail = f"held until {m['not_before'][:19]}" + (f" ({held})" if held and held != "hold" else "")
            else:
                detail = "being re-driven" if held == "redrive" else "waiting"
        print(
            f"{m['message_id']:<17} {m['state']:<7} "
            f"{m.get('campaign_id') or ('test' if m.get('send_type') == 'test' else '-'):>8} "
            f"{m.get('execution_id') or '-':>5} "
            f"{m.get('to_number') or '':<16} {when:<20} {_tri(m.get('submitted')):<9} {_tri(m.get('delivered')):<9} "
            f"{m.get('clicks', 0):>6}  {detail}"
        )
    if page.get("next_after"):
        print(f"... more: next page with --after {page['next_after']}", file=sys.stderr)
    return 0


def download(client: ApiClient, path: str, out: Any) -> int:
    """Stream ``GET path`` into ``out`` (binary); returns the bytes written."""
    req = urllib.request.Request(f"{client.base}/api/v1{path}", method="GET")
    req.add_header("Authorization", f"Bearer {client.token}")
    try:
        with urllib.request.urlopen(req, timeout=client.timeout) as resp:
            n = 0
            while chunk := resp.read(65536):
                out.write(chunk)
                n += len(chunk)
            return n
    except urllib.error.HTTPError as exc:
        raise CliError(_describe(exc.code, exc.read())) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise CliError(f"cannot reach the trackly daemon at {client.base} ({getattr(exc, 'reason', exc)})") from None


def cmd_export(args: argparse.Namespace) -> int:
    if bool(args.campaign) == bool(args.execution):
        raise CliError("give exactly one of --campaign or --execution")
    client = client_from(args)
    path = f"/campaigns/{args.campaign}/messages.csv" if args.campaign else f"/executions/{args.execution}/messages.csv"
    if args.output in (None, "-"):
        download(client, path, sys.stdout.buffer)
        sys.stdout.flush()
        return 0
    writable(args.output, "--output")
    tmp = f"{args.output}.part"
    with open(tmp, "wb") as fh:
        n = download(client, path, fh)
    shutil.move(tmp, args.output)
    print(
        f"wrote {args.output} ({n:,} bytes); cells starting with = + - @ are prefixed with ' "
        "(spreadsheets show the text as is)",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------------------------- dead letters


def cmd_dl_list(args: argparse.Namespace) -> int:
    client = client_from(args)
    page = client.call(
        "GET",
        "/dead-letters"
        + _q(
            reason=args.reason,
            campaign_id=args.campaign,
            execution_id=args.execution,
            since=args.since,
            until=args.until,
            limit=args.limit,
            after=args.after,
        ),
    )
    if _printed_whole(args, page, "no dead letters"):
        return 0
    print(f"{'message':<17} {'reason':<18} {'campaign':>8} {'to':<16} {'failed at (UTC)':<20} {'re-drive':<16}  detail")
    for d in page["items"]:
        print(
            f"{d['message_id']:<17} {d['reason']:<18} {d.get('campaign_id') or '-':>8} {d.get('to_number') or '':<16} "
            f"{(d.get('failed_at') or '')[:19]:<20} {d.get('redrive') or '-':<16}  {d.get('detail') or ''}"
        )
    print(
        "re-drive: default = a plain redrive takes it; by_reason = with --reason; allow_duplicates = NO_RESPONSE, "
        "with --allow-duplicates; opted_out / contact_blocked / spam / no = not re-driven",
        file=sys.stderr,
    )
    if page.get("next_after"):
        print(f"... more: next page with --after {page['next_after']}", file=sys.stderr)
    return 0


def cmd_dl_summary(args: argparse.Namespace) -> int:
    s = client_from(args).call(
        "GET",
        "/dead-letters/summary"
        + _q(campaign_id=args.campaign, execution_id=args.execution, since=args.since, until=args.until),
    )
    if args.json:
        _print_json(s)
        return 0
    print(f"dead letters: {s['total']:,} messages ({s['retryable']:,} retryable by default)")
    for reason, n in s["by_reason"].items():
        print(f"  {reason:<20} {n:>9,} messages")
    if s["by_campaign"]:
        print("  by campaign: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(s["by_campaign"].items())))
    return 0


def cmd_dl_redrive(args: argparse.Namespace) -> int:
    reasons = [r.strip().upper() for r in args.reason.split(",")] if args.reason else None
    if reasons and "NO_RESPONSE" in reasons and not args.allow_duplicates:
        raise CliError(
            "NO_RESPONSE messages may already have been delivered by the provider: re-driving them can "
            "text people twice. Add --allow-duplicates to do it anyway."
        )
    body: JsonObject = {
        "reasons": reasons,
        "campaign_id": args.campaign,
        "execution_id": args.execution,
        "since": args.since,
        "until": args.until,
        "allow_duplicates": args.allow_duplicates,
        "dry_run": args.dry_run,
    }
    if args.message:
        body["message_ids"] = args.message
    out = client_from(args).call("POST", "/dead-letters/redrive", {k: v for k, v in body.items() if v is not None})
    if args.json:
        _print_json(out)
        return 0
    for w in out.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)
    if out["dry_run"]:
        print(f"dry run: {out['would_requeue']:,} of {out['matched']:,} dead letters would be queued again")
    else:
        print(
            f"re-driven: {out['requeued']:,} of {out['matched']:,} dead letters queued again "
            f"({out['held_quiet_hours']:,} held for quiet hours, {out['held_paused']:,} held by a pause)"
        )
    for why, n in sorted(out["skipped"].items()):
        print(f"  skipped {n:,}: {why}")
    return 0


# --------------------------------------------------------------------------------------------- outbox


def cmd_outbox_summary(args: argparse.Namespace) -> int:
    s = client_from(args).call("GET", "/outbox/summary")
    if args.json:
        _print_json(s)
        return 0
    age = s.get("oldest_pending_age_seconds")
    print(
        f"customer webhooks: {s['pending_events']:,} events pending ({s['due_now']:,} entries due now), "
        f"{s['dead_events']:,} events dead"
    )
    print("  entries by status: " + (", ".join(f"{k} {v:,}" for k, v in s["by_status"].items()) or "none"))
    if age is not None:
        print(f"  oldest pending: {age:,.0f} s old (since {s['oldest_pending_at']})")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    page = client_from(args).call("GET", "/outbox" + _q(status=args.status, account_id=args.account, limit=args.limit))
    if _printed_whole(args, page, "no entries"):
        return 0
    print(f"{'entry':<40} {'account':>7} {'status':<9} {'events':>6} {'attempts':>8}  last error")
    for e in page["items"]:
        print(
            f"{e['id']:<40} {e.get('account_id') or '-':>7} {e['status']:<9} {e['events']:>6} {e['attempts']:>8}  "
            f"{e.get('last_error') or ''}"
        )
    return 0


def cmd_outbox_redrive(args: argparse.Namespace) -> int:
    body: JsonObject = {}
    if args.id:
        body["ids"] = args.id
    if args.account:
        body["account_id"] = args.account
    out = client_from(args).call("POST", "/outbox/redrive", body)
    print(f"{out['redriven']:,} customer-webhook entries pending again (due now)")
    return 0


# --------------------------------------------------------------------------------------------- registration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api", help=API_HELP)
    api.add_argument("--token", help="API token (default: http.api_tokens[0] from the config)")
    api.add_argument("--json", action="store_true", help="print the raw JSON")
    parents = [common, api]

    msg = sub.add_parser(
        "messages",
        parents=parents,
        help="message log: a number's (or contact's, campaign's, execution's) messages and outcomes",
    )
    msg.add_argument(
        "phone", nargs="*", help="phone number in any format, spaces allowed: +1 555 123 4567 (normalised like imports)"
    )
    msg.add_argument("--region", default="US", help="region of a number without country code (default US)")
    msg.add_argument("--contact", type=int, help="contact id")
    msg.add_argument("--campaign", type=int, help="campaign id")
    msg.add_argument("--execution", type=int, help="execution id")
    msg.add_argument("--state", choices=("queued", "sent", "failed"))
    msg.add_argument("--limit", type=int, default=100)
    msg.add_argument("--after", help="the next page: the value printed after the previous one")
    msg.set_defaults(func=cmd_messages)

    exp = sub.add_parser("export", parents=parents, help="CSV of every message of a campaign or an execution")
    exp.add_argument("--campaign", type=int)
    exp.add_argument("--execution", type=int)
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    exp.set_defaults(func=cmd_export)

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--campaign", type=int)
    filters.add_argument("--execution", type=int)
    filters.add_argument("--since", help="failed at or after (ISO 8601, e.g. 2026-01-31T22:00:00Z)")
    filters.add_argument("--until", help="failed before (ISO 8601)")

    dl = sub.add_parser("dead-letters", help="list and re-drive failed messages (FailedMessage)")
    dsub = dl.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = dsub.add_parser("list", parents=[*parents, filters], help="list dead letters")
    lst.add_argument("--reason", help=f"one of {', '.join(FailureReason)}")
    lst.add_argument("--limit", type=int, default=100, help="dead letters per page (at most 1000)")
    lst.add_argument("--after", help="the page after this message id (printed at the end of a page)")
    lst.set_defaults(func=cmd_dl_list)
    dsub.add_parser("summary", parents=[*parents, filters], help="dead letters by reason and campaign").set_defaults(
        func=cmd_dl_summary
    )
    rd = dsub.add_parser(
        "redrive",
        parents=[*parents, filters],
        help="queue retryable dead letters again (re-checked: opt-out, cooldown, quiet hours)",
    )
    rd.add_argument(
        "--reason",
        help="comma-separated reasons (default RATE_LIMIT_TIMEOUT,BILLING_BLOCKED,PROVIDER_ERROR;"
        " STALE only when named; NO_RESPONSE needs --allow-duplicates)",
    )
    rd.add_argument("--message", action="append", help="only this message id (repeatable)")
    rd.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="allow NO_RESPONSE: the provider may have sent them already (possible duplicate texts)",
    )
    rd.add_argument("--dry-run", action="store_true", help="count what would be re-driven; change nothing")
    rd.set_defaults(func=cmd_dl_redrive)

    ob = sub.add_parser("outbox", help="the customer-webhook outbox: backlog and dead entries")
    osub = ob.add_subparsers(dest="action", metavar="ACTION", required=True)
    osub.add_parser("summary", parents=parents, help="backlog: pending and dead events, oldest age").set_defaults(
        func=cmd_outbox_summary
    )
    ol = osub.add_parser("list", parents=parents, help="list outbox entries")
    ol.add_argument("--status", choices=("pending", "dead", "delivered", "dropped", "split"))
    ol.add_argument("--account", type=int)
    ol.add_argument("--limit", type=int, default=100)
    ol.set_defaults(func=cmd_outbox_list)
    orr = osub.add_parser("redrive", parents=parents, help="make dead entries pending again (due now)")
    orr.add_argument("--id", action="append", help="only this entry id (repeatable; dropped entries too)")
    orr.add_argument("--account", type=int, help="only this account's dead entries")
    orr.set_defaults(func=cmd_outbox_redrive)
