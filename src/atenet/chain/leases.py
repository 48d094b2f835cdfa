"""The DHCP binding table a network's ``lease`` events fold to — one rule for every reader.

Every node serving a network, and ``tok lease list``, must resolve the chain's lease events to
the same table, or two nodes would hand one address to two clients. The rule (docs/router.md,
"DHCPv4 on the gateway"): events are applied in chain order; an event binding an address that
another MAC holds is ignored unless it names the holder's event in ``reclaims`` — so of two
nodes binding one address at once, the first event wins. An event outside the pool (network,
gateway and broadcast addresses, or another network) or for a multicast MAC is ignored too: it
is well-formed (the chain stays valid) but binds nothing.

The table is bounded by the pool: every MAC in it holds one address of the pool.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

__all__ = ["RECENT", "LeaseTable", "Pool", "wins"]

RECENT = 1024
"""Lease events a state keeps in order (winners and losers) for a node's DHCP server to settle
the requests waiting on them; one further behind starts again from the table."""


def wins(holder_mac: bytes | None, holder_seq: int, mac: bytes, reclaims: int | None) -> bool:
    """Whether a binding of an address to ``mac`` takes it from its current holder (if any)."""
    return holder_mac is None or holder_mac == mac or holder_seq == reclaims


@dataclass(frozen=True, slots=True)
class Pool:
    """The addresses DHCP hands out: every host of the CIDR except the gateway (first host)."""

    lo: int
    hi: int
    gateway: int

    @classmethod
    def of(cls, cidr: str) -> Pool | None:
        """The pool of ``cidr`` (None for no IPv4 network or one smaller than a /30)."""
        if not cidr:
            return None
        network = IPv4Network(cidr, strict=False)
        if network.prefixlen > 30:
            return None
        first = int(network.network_address)
        return cls(first + 1, int(network.broadcast_address) - 1, first + 1)

    def __contains__(self, ip: int) -> bool:
        return self.lo <= ip <= self.hi and ip != self.gateway


def _mac(record: dict[str, Any]) -> bytes:
    """A lease payload's MAC (text checked by chain/rules.py) as bytes."""
    return bytes.fromhex(str(record["mac"]).replace(":", "").replace("-", ""))


class LeaseTable:
    """The folded bindings: by address and by MAC, each a lease event's payload plus its
    ``seq`` and ``time`` (what ``tok lease list`` and a node starting up read)."""

    def __init__(self) -> None:
        self.by_ip: dict[str, dict[str, Any]] = {}
        self._ip_of: dict[bytes, str] = {}
        self.ignored = 0
        self.recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=RECENT)
        """The latest lease events, in order, won or not: (seq, payload)."""
        self.forgotten = 0
        """Seq of the newest event that fell out of :attr:`recent` (0: none has)."""

    def apply(self, seq: int, when: float, payload: dict[str, Any], pool: Pool | None) -> bool:
        """Fold one event (already shape-checked by chain/rules.py); True when it bound."""
        if len(self.recent) == RECENT:
            self.forgotten = self.recent[0][0]
        self.recent.append((seq, payload))
        mac = _mac(payload)
        ip_text = str(payload["ip"])
        ip = int(IPv4Address(ip_text))
        if pool is None or ip not in pool or mac[0] & 1:
            self.ignored += 1
            return False
        holder = self.by_ip.get(ip_text)
        holder_mac = None if holder is None else _mac(holder)
        holder_seq = -1 if holder is None else holder["seq"]
        if not wins(holder_mac, holder_seq, mac, payload.get("reclaims")):
            self.ignored += 1
            return False
        if holder_mac is not None and holder_mac != mac:
            self._ip_of.pop(holder_mac, None)
        old_ip = self._ip_of.get(mac)
        if old_ip is not None and old_ip != ip_text:
            self.by_ip.pop(old_ip, None)
        self.by_ip[ip_text] = {**payload, "seq": seq, "time": when}
        self._ip_of[mac] = ip_text
        return True

    def values(self) -> list[dict[str, Any]]:
        """The bindings ordered by address."""
        return [self.by_ip[k] for k in sorted(self.by_ip, key=lambda t: int(IPv4Address(t)))]
