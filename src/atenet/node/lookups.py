"""What ids of networks this node does not serve may cost it: bounded, rate-limited, counted.

Anyone can send a datagram (or open ``/ws`` / ``/net/<token>``) naming a random 16-byte network
id, and the node only learns that the id is unknown by reading the store. Unbounded, that is a
free lever on the node's memory (one cache entry per id, forever), its CPU (one store read per
id) and, with the store down, its tasks and its log (one stuck lookup and one warning per id).

:class:`UnknownNetworks` is the sans-I/O gatekeeper in front of those reads (the daemon asks it
before each lookup and tells it each outcome, with a monotonic ``now``):

* a negative cache of ids the store does not know (or refused), an LRU of at most ``capacity``
  entries that each expire after ``ttl`` seconds;
* a token bucket: at most ``rate`` lookups start per second (bursts of ``burst``), and never
  more than ``in_flight`` at once;
* "store unavailable" is its own short negative state for *every* unknown id (the store being
  down says nothing about one id): no lookup starts for ``unavailable_ttl`` seconds;
* every refused lookup is counted by reason (``drops``) and at most one log line per
  ``summary_interval`` summarises them, instead of one line per id.

Networks the node already serves never come here: their packets find their runtime first.
Defaults are in docs/limits.md.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from atenet.ratelimit import TokenBucket

NEGATIVE_CAPACITY = 10_000
"""Ids remembered as unknown (about 1.5 MB at most)."""

NEGATIVE_TTL = 10.0
"""Seconds an id the store does not know stays remembered (a network created meanwhile is
found at most this late)."""

UNAVAILABLE_TTL = 5.0
"""Seconds no lookup starts after one failed because the store was unavailable."""

LOOKUP_RATE = 50.0
"""Store lookups of not-yet-served ids that may start per second, on average."""

LOOKUP_BURST = 100
"""Lookups that may start at once after a quiet spell (the token bucket's size)."""

LOOKUP_IN_FLIGHT = 32
"""Lookups running at the same time (each is one task and one store read)."""

SUMMARY_INTERVAL = 60.0
"""Seconds between two log lines that summarise refused lookups."""

REASONS = ("cached_unknown", "store_unavailable", "lookup_rate", "lookups_in_flight")
"""Why a lookup was refused: the id is in the negative cache, the store was just unavailable,
the token bucket is empty, too many lookups are running."""


class UnknownNetworks:
    """Gatekeeper for store lookups of ids this node does not serve (see the module doc)."""

    def __init__(
        self,
        *,
        capacity: int = NEGATIVE_CAPACITY,
        ttl: float = NEGATIVE_TTL,
        unavailable_ttl: float = UNAVAILABLE_TTL,
        rate: float = LOOKUP_RATE,
        burst: int = LOOKUP_BURST,
        in_flight: int = LOOKUP_IN_FLIGHT,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.unavailable_ttl = unavailable_ttl
        self.rate = rate
        self.burst = burst
        self.max_in_flight = in_flight
        self.summary_interval = summary_interval
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        self._running: set[bytes] = set()
        self._bucket = TokenBucket(rate, burst)
        self.store_down_until = 0.0
        self.drops: Counter[str] = Counter()
        self.lookups = 0
        self.evicted = 0
        self.store_errors = 0
        self._summarised: Counter[str] = Counter()
        self._summary_at: float | None = None
        self._store_warned: float | None = None

    def __len__(self) -> int:
        """Ids in the negative cache (never more than ``capacity``)."""
        return len(self._negative)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def admit(self, network_id: bytes, now: float) -> bool:
        """Whether a store lookup of ``network_id`` may start now; if it may, it is counted as
        running until :meth:`finished`. A refusal is counted in ``drops`` by reason."""
        until = self._negative.get(network_id)
        if until is not None:
            if now < until:
                self.drops["cached_unknown"] += 1
                return False
            del self._negative[network_id]
        if now < self.store_down_until:
            self.drops["store_unavailable"] += 1
            return False
        if len(self._running) >= self.max_in_flight:
            self.drops["lookups_in_flight"] += 1
            return False
        if not self._bucket.take(now):
            self.drops["lookup_rate"] += 1
            return False
        self._running.add(network_id)
        self.lookups += 1
        return True

    def finished(self, network_id: bytes, outcome: str, now: float) -> None:
        """A lookup ended: ``found`` (now served), ``unknown`` (not in the store, not ours,
        invalid or deleted) or ``unavailable`` (the store did not answer)."""
        self._running.discard(network_id)
        if outcome == "unknown":
            self._negative[network_id] = now + self.ttl
            self._negative.move_to_end(network_id)
            while len(self._negative) > self.capacity:
                self._negative.popitem(last=False)
                self.evicted += 1
        elif outcome == "unavailable":
            self.store_errors += 1
            self.store_down_until = max(self.store_down_until, now + self.unavailable_ttl)

    def warn_store(self, now: float) -> bool:
        """Whether to log that a lookup failed because the store was unavailable: at most once
        per ``summary_interval`` (an outage is one line, not one per id)."""
        if self._store_warned is not None and now - self._store_warned < self.summary_interval:
            return False
        self._store_warned = now
        return True

    def summary(self, now: float) -> str | None:
        """One line about the lookups refused since the last line, at most once per
        ``summary_interval`` (None when it is not time yet or nothing was refused)."""
        if self._summary_at is not None and now - self._summary_at < self.summary_interval:
            return None
        fresh = self.drops - self._summarised
        if not fresh:
            return None
        since = "" if self._summary_at is None else f" in the last {now - self._summary_at:.0f} s"
        self._summary_at = now
        self._summarised = self.drops.copy()
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(fresh.items()))
        return (
            f"refused {sum(fresh.values())} lookups of networks this node does not serve{since} "
            f"({reasons}); see drops in /api/status"
        )

    def counters(self) -> dict[str, object]:
        """For /api/status and /metrics."""
        return {
            "cached": len(self._negative),
            "capacity": self.capacity,
            "in_flight": len(self._running),
            "lookups": self.lookups,
            "evicted": self.evicted,
            "store_errors": self.store_errors,
            "drops": {reason: self.drops.get(reason, 0) for reason in REASONS},
        }
