"""A sliding replay window over 64-bit packet counters, in the spirit of RFC 6479.

Every sealed packet carries a per-sender counter that the sender increments by one per packet.
A receiver keeps one window per sender: the highest counter it has accepted (``top``) and one
bit for each of the ``size`` counters at and below it. A counter is fresh when it is above
``top``, or inside the window with its bit still clear. Counters that fall off the bottom of the
window are rejected, because the receiver can no longer tell whether it saw them.

Two calls, because marking must wait for authentication:

- :meth:`ReplayWindow.check` is read-only and cheap. The receiver calls it *before* decrypting,
  so a flood of replayed packets is dropped without spending AES time on it.
- :meth:`ReplayWindow.update` checks again and marks the counter. The receiver calls it only
  *after* the packet authenticated. If forged packets could mark counters, an attacker who
  cannot forge a single valid packet could still push the window far ahead (one packet with
  counter 2**64 - 1) and make every genuine packet look stale.

The check in ``update`` is not redundant: it keeps the window correct even when two packets with
the same counter pass ``check`` before either is marked (a batch decrypted together).

RFC 6479 stores the bitmap as a ring of 64-bit words so that advancing never moves bits. In
Python a single int used as a shift register is faster (``bench/bench_seal.py`` measures both:
about 0.6 µs for an in-order check + update with a 2048-bit int, 0.9-1.6 µs with a ring of 64
words), because one big-int shift is a single C loop while the ring needs a Python loop to clear
the words it skips.
"""

from __future__ import annotations

DEFAULT_SIZE = 2048
"""Counters tracked below the highest one. At 1 Mpps that tolerates 2 ms of reordering."""

PAST_SKEW = 30.0
"""Seconds a counter may lag the receiver's clock when the receiver holds no window for its
sender (a restarted node, another node, an evicted window): older is refused as ``stale``."""

AHEAD_SKEW = 60.0
"""Seconds a counter may run ahead of the receiver's clock in that case: more is ``future``."""

_NS = 1_000_000_000
U64_MAX = (1 << 64) - 1


class Freshness:
    """Which counters a receiver takes from a sender it holds no replay window for.

    Senders' counters track their wall clock in ns (see docs/protocol.md, "Replay across
    restarts and nodes"), so without a window a receiver can still refuse what is older than
    ``now - past`` or below ``start_ns`` (when this receiver started listening: everything sealed
    before that is a capture), and what is further ahead than ``now + ahead`` (a broken clock; a
    capture of such a packet would stay replayable that long). One object is shared by every
    :class:`~atenet.overlay.seal.Opener` of a receiver and moved on by :meth:`set_now` once per
    batch, so the per-packet path only compares two ints, and only for a sender's first packet.
    Without ``set_now`` it refuses nothing below ``start_ns`` and nothing ahead.
    """

    __slots__ = ("ahead_ns", "ceiling", "floor", "now", "past_ns", "start_ns")

    def __init__(
        self, start_ns: int = 0, past: float = PAST_SKEW, ahead: float = AHEAD_SKEW
    ) -> None:
        self.start_ns = start_ns
        self.past_ns = int(past * _NS)
        self.ahead_ns = int(ahead * _NS)
        self.now = -1.0
        self.floor = start_ns
        self.ceiling = U64_MAX

    def set_now(self, now: float) -> None:
        """Move the bounds to the caller's clock ``now`` (seconds since the Unix epoch)."""
        if now != self.now:
            self.now = now
            now_ns = int(now * _NS)
            self.floor = max(now_ns - self.past_ns, self.start_ns)
            self.ceiling = now_ns + self.ahead_ns

    def __repr__(self) -> str:
        return f"Freshness(floor={self.floor}, ceiling={self.ceiling})"


class ReplayWindow:
    """Which counters of one sender were already accepted, within the last ``size``."""

    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be at least 1, not {size}")
        self.size = size
        # Bit d of _bits is set when counter (top - d) was accepted; bit 0 is top itself.
        self._mask = (1 << size) - 1
        self._bits = 0
        # -1 means "nothing accepted yet", so every counter (they are >= 0) is above it.
        self.top = -1

    def start(self, counter: int) -> None:
        """Open a new window at ``counter`` (an authenticated first packet) with every counter
        below it counted as seen: an older packet of this sender that arrives later is a capture
        being replayed as likely as a reordering, and the receiver cannot tell which."""
        self.top = counter
        self._bits = self._mask

    def check(self, counter: int) -> bool:
        """True when ``counter`` has not been accepted and is not too old. Changes nothing."""
        behind = self.top - counter
        if behind < 0:
            return True
        if behind >= self.size:
            return False
        return not (self._bits >> behind) & 1

    def update(self, counter: int) -> bool:
        """Mark ``counter`` as accepted; False (and nothing marked) if it is a replay or too old.

        Call only for a packet that authenticated: see the module docstring.
        """
        behind = self.top - counter
        if behind < 0:
            # Ahead of the window: slide it forward. Bits pushed past `size` fall off the mask.
            self.top = counter
            if -behind < self.size:
                self._bits = ((self._bits << -behind) | 1) & self._mask
            else:
                self._bits = 1
            return True
        if behind >= self.size:
            return False
        bit = 1 << behind
        if self._bits & bit:
            return False
        self._bits |= bit
        return True

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top}, marked={self._bits.bit_count()})"
