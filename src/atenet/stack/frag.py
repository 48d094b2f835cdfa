"""IP fragment reassembly (RFC 791 / RFC 8200 §4.5) and IPv4 fragmentation.

Reassembly is bounded three ways — number of datagrams in progress, bytes held in total, and a
30 s lifetime — because fragments are the cheapest way to make a receiver hold memory.
Overlapping fragments drop the whole datagram (RFC 5722 demands it for IPv6; for IPv4 it is the
safe choice, overlaps are only ever used to evade filters).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Reassembler", "fragment_offsets"]

MAX_DATAGRAM = 65535


@dataclass(slots=True)
class _Partial:
    expires: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    size: int = 0


@dataclass(slots=True)
class Reassembler:
    """Collects fragments by key (addresses, protocol, identification) until complete."""

    max_datagrams: int = 16
    max_bytes: int = 256 * 1024
    timeout: float = 30.0
    counters: Counter[str] = field(default_factory=Counter)
    partial: dict[tuple[object, ...], _Partial] = field(default_factory=dict)
    held: int = 0

    def add(
        self, key: tuple[object, ...], offset: int, more: bool, data: bytes, now: float
    ) -> bytes | None:
        """Add one fragment (``offset`` in bytes); returns the whole payload once complete."""
        self.expire(now)
        end = offset + len(data)
        if end > MAX_DATAGRAM or (more and len(data) % 8) or (more and not data):
            self.counters["frag_malformed"] += 1
            return None
        entry = self.partial.get(key)
        if entry is None:
            if len(self.partial) >= self.max_datagrams:
                self.counters["frag_table_full"] += 1
                return None
            entry = self.partial[key] = _Partial(now + self.timeout)
        if self.held + len(data) > self.max_bytes:
            self.counters["frag_bytes_full"] += 1
            self._drop(key)
            return None
        if not more:
            if entry.total is not None and entry.total != end:
                self.counters["frag_overlap"] += 1
                self._drop(key)
                return None
            entry.total = end
        for start, piece in entry.pieces.items():
            if start < end and offset < start + len(piece) and (start, piece) != (offset, data):
                self.counters["frag_overlap"] += 1
                self._drop(key)
                return None
        if offset in entry.pieces:
            self.counters["frag_duplicate"] += 1
            return None
        if entry.total is not None and end > entry.total:
            self.counters["frag_overlap"] += 1
            self._drop(key)
            return None
        entry.pieces[offset] = data
        entry.size += len(data)
        self.held += len(data)
        if entry.total is None or entry.size != entry.total:
            return None
        self._drop(key)
        self.counters["frag_reassembled"] += 1
        return b"".join(entry.pieces[o] for o in sorted(entry.pieces))

    def _drop(self, key: tuple[object, ...]) -> None:
        entry = self.partial.pop(key, None)
        if entry is not None:
            self.held -= entry.size

    def expire(self, now: float) -> None:
        """Forget datagrams older than the timeout (counted as ``frag_timeout``)."""
        if not self.partial:  # the usual case, asked on every poll and fragment
            return
        for key in [k for k, e in self.partial.items() if e.expires <= now]:
            self.counters["frag_timeout"] += 1
            self._drop(key)

    def poll_at(self) -> float | None:
        """When the oldest datagram in progress times out."""
        if not self.partial:
            return None
        return min((e.expires for e in self.partial.values()), default=None)


def fragment_offsets(length: int, room: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges splitting ``length`` bytes into pieces of at most ``room``
    bytes, every piece but the last a multiple of 8 (the fragment offset unit)."""
    step = room // 8 * 8
    return [(start, min(start + step, length)) for start in range(0, length, step)] or [(0, 0)]
