"""systemd integration without a dependency: ``sd_notify`` over ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` (sent once the store answers and every component has
started), shows ``STATUS=`` lines in ``systemctl status``, hears ``STOPPING=1`` on SIGTERM, and, with
``WatchdogSec=``, restarts a daemon whose event loop stops answering (``WATCHDOG=1`` every half period).
Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``) to systemd; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, in seconds, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def watchdog_loop(interval: float) -> None:
    """Ping the watchdog while the event loop runs (cancel to stop)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
