"""Outgoing requests to URLs a customer chose (the delivery-status webhook) reach the public internet only.

Two checks, both needed:

- :func:`check_url` when the URL is set (the admin API answers 422): http(s) only, no userinfo, no fragment, no
  odd host spellings (``2130706433``, ``127.1``, ``0x7f.0.0.1``), and no internal address (judged on the host as
  the HTTP client connects to it, after IDNA mapping: Unicode digits or full-width letters cannot hide one):
  loopback, private, link-local (cloud metadata ``169.254.169.254``), multicast, unspecified, reserved, shared
  (CGNAT) or any other non-global range, as a literal or as what the name resolves to right now;
- :class:`GuardedResolver` when it is used: the addresses a name resolves to at delivery time are checked again
  (a DNS name can change after it was accepted), and a URL with an IP literal is checked before the request
  (:func:`refusal`), so a request is never connected to an internal address.

``tracking.webhook_url_allowlist`` lets an operator allow internal receivers explicitly: CIDRs
(``"10.1.2.0/24"``, ``"127.0.0.1/32"``) or host names (``"hooks.internal"``, matched exactly, case-insensitively).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from trackly_exec.errors import TracklyError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Host names that always mean this machine, whatever a resolver says.
_LOCAL_NAMES = re.compile(r"(^|\.)(localhost|localhost\.localdomain|ip6-localhost|ip6-loopback)$")
#: A host made only of digits, dots and hex: an IP in some spelling inet_aton accepts (2130706433, 127.1, 0x7f.1).
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*\.?$", re.IGNORECASE)


class RefusedAddress(TracklyError, OSError):
    """The request would connect to an internal address."""


@dataclass(frozen=True)
class Allowlist:
    """Internal receivers the operator allows explicitly."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        nets: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if text:
                    hosts.add(text.lower().rstrip("."))
        return cls(tuple(nets), frozenset(hosts))

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts


#: Ranges Python's ``is_global`` still calls global that no public webhook lives in: the IETF protocol
#: assignments (192.0.0.0/24, e.g. 192.0.0.8) and the deprecated 6to4 relay anycast (192.88.99.0/24).
_NOT_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))


def forbidden_ip(ip: IPAddress) -> bool:
    """Anything but a global unicast address: loopback, private, link-local, site-local, multicast, unspecified,
    reserved, the protocol-assignment and 6to4-relay blocks..."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None and forbidden_ip(mapped):
            return True
        if ip.is_site_local:  # fec0::/10: deprecated, but routed inside some networks
            return True
    elif any(ip in net for net in _NOT_PUBLIC):
        return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _static_problem(url: str, allow: Allowlist) -> tuple[str | None, str | None]:
    """``(problem, host to resolve)`` from the URL's text alone."""
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        return "must not contain spaces, control characters or backslashes", None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})", None
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL", None
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        return "must not contain user information (user:password@)", None
    if "#" in url:
        return "must not contain a fragment (#)", None
    if not (parts.hostname or "").rstrip("."):
        return "must name a host", None
    try:
        # the host as the HTTP client will connect to it (yarl's IDNA/UTS-46 mapping: "127.0.0.1" followed by a
        # compatibility digit such as U+1FBF0 becomes "127.0.0.10"), never the text as typed
        host = (URL(url).raw_host or "").rstrip(".").lower()
    except (ValueError, UnicodeError) as exc:
        return f"is not a valid URL ({exc})", None
    if not host:
        return "must name a host", None
    if "%" in host:  # a percent-encoded host ("%31%32%37.0.0.1") is no host name the client would connect to
        return "must name the host plainly (no percent-encoding)", None
    if port == 0:
        return "must not use port 0", None
    if allow.allows_host(host):
        return None, None
    ip = _ip(host)
    if ip is not None:
        if forbidden_ip(ip) and not allow.allows_ip(ip):
            return f"points at an internal address ({ip}); allow it in tracking.webhook_url_allowlist", None
        return None, None
    if _NUMERIC_HOST.match(host):
        return "must not spell an IP address as a number (use the dotted form)", None
    if _LOCAL_NAMES.search(host.lower()):
        return "points at this machine (localhost); allow it in tracking.webhook_url_allowlist", None
    return None, host


async def check_url(url: str, allow: Allowlist, *, resolve: bool = True, timeout: float = 3.0) -> str | None:
    """Why ``url`` may not be a customer webhook (None when it may). A name is resolved now: any internal
    address among its answers refuses it (a name that does not resolve yet is accepted; delivery checks again)."""
    problem, host = _static_problem(url, allow)
    if problem or host is None or not resolve:
        return problem
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return None
    for info in infos:
        ip = _ip(str(info[4][0]))
        if ip is not None and forbidden_ip(ip) and not allow.allows_ip(ip):
            return f"resolves to an internal address ({ip}); allow it in tracking.webhook_url_allowlist"
    return None


def refusal(url: str, allow: Allowlist) -> str | None:
    """At delivery time, before the request: the URL's own problems (a name's addresses are checked by
    :class:`GuardedResolver` when it connects)."""
    return _static_problem(url, allow)[0]


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops internal addresses (unless allowed) and fails when none is left."""

    def __init__(self, allow: Allowlist, inner: AbstractResolver | None = None) -> None:
        self.allow = allow
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.allow.allows_host(host):
            return results
        kept = []
        for r in results:
            ip = _ip(str(r["host"]))
            if ip is not None and (not forbidden_ip(ip) or self.allow.allows_ip(ip)):
                kept.append(r)
        if not kept:
            raise RefusedAddress(f"{host} resolves only to internal addresses")
        return kept

    async def close(self) -> None:
        await self.inner.close()


def guarded_connector(allow: Allowlist, **kwargs: Any) -> Any:
    """A TCPConnector whose name resolution refuses internal addresses."""
    import aiohttp

    return aiohttp.TCPConnector(resolver=GuardedResolver(allow), **kwargs)
