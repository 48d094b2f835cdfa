"""mio: programs join an atenet network without root or a TCP/IP stack of their own.

The node runs the TCP/IP stack (``atenet.stack``) for a program, as one switch port; the
program speaks socket commands to it over a WebSocket bus (:mod:`atenet.mio.bus`, docs/mio.md)::

    from atenet import mio

    async with await mio.connect(url, token) as net:
        reader, writer = await net.open_connection("10.0.0.5", 22)

``connect``, ``Network`` and ``MioError`` come from :mod:`atenet.mio.client`, imported on first
use: the node imports the bus and the session core from this package and must not pay for the
client's aiohttp session machinery (nor must a CLI that never opens a session).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MioError", "Network", "connect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from atenet.mio import client

        return getattr(client, name)
    raise AttributeError(f"module 'atenet.mio' has no attribute {name!r}")
