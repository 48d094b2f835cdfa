"""Which address a node tells clients to dial: the endpoints its tokens carry.

A node bound to every address (``0.0.0.0``) must still name *one* address other machines can
reach. ``gethostbyname(gethostname())`` is the classic guess and the wrong one: it answers
127.0.0.1 or Debian's 127.0.1.1, so every token named the node's loopback. The order here:

1. ``--advertise HOST[:PORT][,HOST[:PORT]...]``: what the user said, loopback included.
2. ``--listen ADDR`` other than 0.0.0.0: the address the socket is bound to.
3. The source address of the default route (the address this host uses to reach the world),
   taken from the kernel's routing table: the route's preferred source, else the address the
   kernel picks to reach its gateway (a UDP ``connect()`` sends nothing), else the first global
   address of its interface.
4. No default route: every global IPv4 address (tokens carry them all; clients try each).
5. Nothing but loopback: 127.0.0.1, with a warning that only this machine can connect.

The node's UDP socket is IPv4 (``AF_INET``), so only IPv4 addresses are candidates.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from atenet.errors import AtenetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Advertised:
    """The endpoints tokens will carry, and why these (for the start-up message)."""

    endpoints: list[str]
    source: str
    """How they were chosen: "--advertise", "--listen", "default route", "global addresses",
    or "loopback"."""

    @property
    def loopback_only(self) -> bool:
        """True when no endpoint can be reached from another machine."""
        return all(_is_loopback(e.rpartition(":")[0]) for e in self.endpoints)


def choose(listen: str, port: int, advertise: str | None) -> Advertised:
    """The endpoints a node listening on ``listen``:``port`` advertises (see the module doc).

    Blocking (netlink round trips); safe to call from an event loop's thread: pyroute2 runs in
    a worker thread of its own, because its synchronous API refuses to run inside a running
    (uv)loop."""
    if advertise:
        return Advertised(parse_advertise(advertise, port), "--advertise")
    if listen not in ("0.0.0.0", ""):
        return Advertised([f"{listen}:{port}"], "--listen")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atenet-advertise") as pool:
        return pool.submit(_from_routes, port).result()


def _from_routes(port: int) -> Advertised:
    source = default_route_source()
    if source is not None:
        return Advertised([f"{source}:{port}"], "default route")
    addresses = global_ipv4_addresses()
    if addresses:
        return Advertised([f"{a}:{port}" for a in addresses], "global addresses")
    return Advertised([f"127.0.0.1:{port}"], "loopback")


def parse_advertise(text: str, port: int) -> list[str]:
    """``HOST[:PORT][,HOST[:PORT]...]`` -> ``["HOST:PORT", ...]`` (the UDP port when omitted)."""
    endpoints: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, tail = item.rpartition(":")
        if not sep:
            host, tail = item, str(port)
        if not host or not tail.isdigit() or not 0 < int(tail) < 65536 or " " in host:
            raise AtenetError(f"bad --advertise {item!r}: use HOST:PORT, e.g. 192.0.2.7:4799")
        endpoint = f"{host}:{int(tail)}"
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise AtenetError("empty --advertise: use HOST:PORT, e.g. 192.0.2.7:4799")
    return endpoints


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _usable(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast)


def default_route_source() -> str | None:
    """The IPv4 source address of the main table's lowest-metric default route, or None."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            routes = [
                r
                for r in ipr.get_default_routes(family=socket.AF_INET)
                if r.get_attr("RTA_TABLE") in (None, 254)
            ]
            routes.sort(key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
            for route in routes:
                prefsrc = route.get_attr("RTA_PREFSRC")
                if _usable(prefsrc):
                    return str(prefsrc)
                gateway = route.get_attr("RTA_GATEWAY")
                if gateway:
                    source = _source_towards(str(gateway))
                    if _usable(source):
                        return source
                oif = route.get_attr("RTA_OIF")
                for msg in ipr.get_addr(family=socket.AF_INET, index=oif):
                    address = msg.get_attr("IFA_ADDRESS")
                    if msg.get("scope") == 0 and _usable(address):
                        return str(address)
    except Exception as exc:  # netlink unavailable (not Linux, seccomp): fall back below
        log.debug("no default route lookup: %r", exc)
    return None


def _source_towards(address: str) -> str | None:
    """The local address the kernel would send from to reach ``address``. A UDP ``connect()``
    only looks the route up: no packet leaves the host."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def global_ipv4_addresses() -> list[str]:
    """Every IPv4 address of global scope on this host, in interface order."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = [
                str(msg.get_attr("IFA_ADDRESS"))
                for msg in ipr.get_addr(family=socket.AF_INET)
                if msg.get("scope") == 0 and _usable(msg.get_attr("IFA_ADDRESS"))
            ]
    except Exception as exc:
        log.debug("cannot list addresses: %r", exc)
        return []
    return list(dict.fromkeys(found))
