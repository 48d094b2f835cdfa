"""The neighbour cache shared by ARP (IPv4) and Neighbor Discovery (IPv6).

Why one class: both resolve an IP address to a MAC, hold the packets waiting for the answer,
retry the question a few times and forget answers after a while. Everything here is bounded
(entries, destinations waiting, packets per destination) because a peer or a program can make
any of them grow; each bound that bites bumps a counter.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

__all__ = ["NeighborCache"]

IPAddress = IPv4Address | IPv6Address


@dataclass(slots=True)
class _Pending:
    packets: deque[bytes]
    next_try: float
    tries: int


@dataclass(slots=True)
class NeighborCache:
    """IP → MAC with expiry, plus bounded queues of packets waiting for a resolution."""

    capacity: int = 256
    ttl: float = 60.0
    max_waiting: int = 64
    per_destination: int = 8
    retry: float = 1.0
    tries: int = 3
    counters: Counter[str] = field(default_factory=Counter)
    entries: dict[IPAddress, tuple[bytes, float]] = field(default_factory=dict)
    pending: dict[IPAddress, _Pending] = field(default_factory=dict)
    gave_up: list[IPAddress] = field(default_factory=list)
    """Destinations :meth:`due` gave up on since the owner last emptied this list: the
    interface fails the connections still opening towards them (EHOSTUNREACH, as Linux)."""

    def lookup(self, ip: IPAddress, now: float) -> bytes | None:
        """The MAC of ``ip`` if known and fresh."""
        entry = self.entries.get(ip)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.entries[ip]
            return None
        return entry[0]

    def learn(self, ip: IPAddress, mac: bytes, now: float, *, create: bool = True) -> list[bytes]:
        """Record ``ip`` at ``mac``; returns the packets that were waiting for it.

        ``create=False`` only refreshes an entry that exists or is being resolved (RFC 826's
        merge rule): a stream of gratuitous announcements cannot fill the cache.
        """
        if not create and ip not in self.entries and ip not in self.pending:
            return []
        if ip not in self.entries and len(self.entries) >= self.capacity:
            oldest = min(self.entries, key=lambda k: self.entries[k][1])
            del self.entries[oldest]
            self.counters["neighbor_evicted"] += 1
        self.entries[ip] = (mac, now + self.ttl)
        waiting = self.pending.pop(ip, None)
        return list(waiting.packets) if waiting else []

    def queue(self, ip: IPAddress, packet: bytes, now: float) -> bool:
        """Hold ``packet`` until ``ip`` resolves; True when a request must go out right now."""
        waiting = self.pending.get(ip)
        if waiting is None:
            if len(self.pending) >= self.max_waiting:
                self.counters["neighbor_pending_full"] += 1
                return False
            self.pending[ip] = _Pending(deque([packet]), now + self.retry, 1)
            return True
        if len(waiting.packets) >= self.per_destination:
            waiting.packets.popleft()
            self.counters["neighbor_queue_overflow"] += 1
        waiting.packets.append(packet)
        return False

    def due(self, now: float) -> list[IPAddress]:
        """Destinations to ask again now; those out of tries are dropped (packets counted)."""
        again: list[IPAddress] = []
        if not self.pending:  # the usual case, asked on every poll
            return again
        for ip in [ip for ip, w in self.pending.items() if w.next_try <= now]:
            waiting = self.pending[ip]
            if waiting.tries >= self.tries:
                self.counters["neighbor_unresolved"] += len(waiting.packets)
                del self.pending[ip]
                if len(self.gave_up) < self.max_waiting:
                    self.gave_up.append(ip)
                continue
            waiting.tries += 1
            waiting.next_try = now + self.retry
            again.append(ip)
        return again

    def poll_at(self) -> float | None:
        """When :meth:`due` has work (entries expire lazily and need no wake-up)."""
        if not self.pending:
            return None
        return min((w.next_try for w in self.pending.values()), default=None)
