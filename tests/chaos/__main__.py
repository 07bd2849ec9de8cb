"""``python -m tests.chaos [--seed N] [--short] [--messages N] [--keep DIR]``: run a chaos campaign, print the table,
exit 1 when an invariant is violated (SEED in the environment is the default seed; random when unset)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
from dataclasses import replace
from pathlib import Path

from trackly_exec.logs import configure_logging

from .run import FAULTS, Plan, Result, run_campaign


async def _run(plan: Plan, keep: Path | None) -> Result:
    """The campaign; SIGTERM/SIGINT cancel it (its clean-up still kills every process it started)."""
    task = asyncio.ensure_future(run_campaign(plan, keep, keep=keep is not None))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: $SEED, else random (printed)")
    parser.add_argument("--short", action="store_true", help="the CI version (fewer kills, landed faults only)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--faults", default=None, help=f"comma-separated subset of {','.join(FAULTS)} ('' for none)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work directory to keep (logs, store) for a post-mortem"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(os.environ.get("SEED") or random.randrange(1, 1_000_000))
    plan = Plan.short(seed) if args.short else Plan(seed=seed)
    if args.messages:
        plan = replace(plan, messages=args.messages)
    if args.faults is not None:
        plan = replace(plan, faults=tuple(f for f in args.faults.split(",") if f))
    print(f"chaos: seed {seed} ({'short' if args.short else 'full'}); rerun with SEED={seed}", flush=True)
    configure_logging("warning", "console", stream=sys.stderr)
    result = asyncio.run(_run(plan, args.keep))
    print(result.table(), flush=True)
    checked = sum(1 for _, _, expect in result.rows if expect)
    print(f"chaos: {checked - len(result.violations)} passed, {len(result.violations)} failed", flush=True)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
