"""Which data path runs: the compiled fast path (``atenet._fast``) or pure Python.

The fast path is an optional C extension (``csrc/fast/``, built by ``scripts/setup.sh`` with
``python setup.py build_ext --inplace`` when a C compiler and OpenSSL's headers are there). It
does a hop's common case — read, open or seal, forward, send — in one call from the event loop,
on the same Python objects the pure path uses; everything else falls back to the pure path, which
is the reference and stays the default wherever the module is not built. docs/fastpath.md says
what it covers and how it is tested.

``ATENET_PURE=1`` in the environment turns the fast path off (read once, at import): the tests
run the data path both ways, and a user who suspects the compiled code can rule it out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio only when an engine runs: `tok --help` imports this module
    import asyncio

__all__ = ["ENGINE_HOLD", "FAST", "EngineHold", "changed", "fast_status"]


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("ATENET_PURE", "") not in ("", "0"):
        return None, "off (ATENET_PURE is set)"
    try:
        from atenet import _fast  # type: ignore[attr-defined]
    except ImportError as err:
        return None, f"not built ({err}); run scripts/setup.sh"
    return _fast, "on"


FAST, _STATUS = _load()
"""The compiled module, or None (pure Python)."""


def fast_status() -> str:
    """``on``, or why not: for ``atenet run``'s log line, ``/api/status`` and ``tok status``."""
    return _STATUS


def _nothing() -> None:
    return None


changed = FAST.node_changed if FAST is not None and hasattr(FAST, "node_changed") else _nothing
"""Say that something a node engine's cached flow may depend on changed — a port added or
removed, an opener dropped, the MAC table written, a switch setting, a client's address: every
cached flow is then dropped before its next datagram (csrc/fast/nodeengine.c; docs/fastpath.md,
"Node engine", lists the callers and why they are all). A no-op on the pure path."""


def _hold_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("ATENET_ENGINE_HOLD", "0.005")))
    except ValueError:
        return 0.005


ENGINE_HOLD = _hold_seconds()
"""Seconds an fd an engine handed over stays on the event loop after bulk work through it last
moved (checked once per period; ``ATENET_ENGINE_HOLD``; 0: back to the engine at once, as
before).

Why: an engine hands an fd over for anything it does not carry (a super-frame, a fragment run,
a first packet) and takes it back once Python has drained it. Under bulk traffic that is one
hand-over per burst — an eventfd write, a loop wake-up, two epoll_ctl calls and a thread
wake-up — and once the bulk path itself ran in C that dance cost more than it saved: 2 nodes,
TCP 1.16 Gbit/s with the engines against 1.50 without them (bench/RESULTS.md, issue 14).
Keeping a busy fd on the loop until it has been quiet for a few milliseconds runs bulk as the
event-loop path does, while an idle ping (its datagrams tens of milliseconds apart) still finds
the fd back in the engine."""


def _loop() -> asyncio.AbstractEventLoop:
    import asyncio  # here, not at the top: see the TYPE_CHECKING import

    return asyncio.get_running_loop()


class EngineHold:
    """Keep one fd on the event loop while it is busy, then give it back to an engine.

    :meth:`hold` (after a hand-over was handled) adds ``read`` as the fd's loop reader and checks
    every :data:`ENGINE_HOLD` seconds whether ``busy()`` — a running count of the work the
    engine would have handed over (fragments joined, super-frames, datagrams for the pure path)
    — moved since the last check; when it did not, the reader is removed and ``resume`` gives
    the fd back to the engine. So bulk keeps the fd on the loop, and a stream of small packets
    the engine carries goes back to it within one period. :meth:`cancel` removes the reader and
    the check without resuming (the engine is going away)."""

    __slots__ = ("_busy", "_fd", "_read", "_resume", "_seen", "_timer")

    def __init__(
        self,
        fd: int,
        read: Callable[[], None],
        resume: Callable[[], None],
        busy: Callable[[], int],
    ) -> None:
        self._fd = fd
        self._read = read
        self._resume = resume
        self._busy = busy
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def held(self) -> bool:
        """The fd is the loop's now (not the engine's)."""
        return self._timer is not None

    def hold(self) -> None:
        """The engine handed the fd over and Python drained it: keep it (or give it back now
        when holding is off)."""
        if ENGINE_HOLD <= 0:
            self._resume()
            return
        if self._timer is not None:
            return
        loop = _loop()
        loop.add_reader(self._fd, self._read)
        self._seen = self._busy()
        self._timer = loop.call_later(ENGINE_HOLD, self._check)

    def cancel(self) -> None:
        """Stop holding without giving the fd back (the engine stops or is replaced)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            _loop().remove_reader(self._fd)

    def _check(self) -> None:
        loop = _loop()
        busy = self._busy()
        if busy != self._seen:
            self._seen = busy
            self._timer = loop.call_later(ENGINE_HOLD, self._check)
            return
        self._timer = None
        loop.remove_reader(self._fd)
        self._resume()
