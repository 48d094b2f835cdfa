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
from types import ModuleType

__all__ = ["FAST", "changed", "fast_status"]


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
