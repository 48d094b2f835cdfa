"""A token bucket: ``rate`` events per second on average, bursts of ``burst``.

The one rate limiter of the control paths (ICMP errors, router solicitations, store lookups of
unknown networks). The per-packet paths (a client port's bucket in ``node/core.py``, new
senders in ``overlay/seal.py``) keep theirs inline: they check before decryption and charge
only after authentication, and they run per packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; :meth:`take` spends one.

    Time is the caller's ``now`` (seconds, monotonic); a clock that goes backwards adds
    nothing. ``refused`` counts the takes that found the bucket empty.
    """

    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    last: float | None = None
    refused: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (and count it) when the budget is spent."""
        if self.last is not None and now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
