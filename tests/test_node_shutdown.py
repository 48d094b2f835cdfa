"""A node stopping with WebSocket clients connected closes them and exits promptly.

Before, ``atenet run`` on SIGTERM left open ``/ws``, ``/net/<token>`` and ``/mio`` sockets to
aiohttp's shutdown timeout: the node took ~30 s to exit (and a supervisor's stop timeout, or a
test's, killed it instead). Now the app's shutdown closes every open WebSocket with 1001.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from atenet.mio import connect as mio_connect
from tests.support.loopback_node import LoopbackNode


def test_sigterm_closes_open_websockets_with_1001_and_the_node_exits(tmp_path: Path) -> None:
    async def scenario(node: LoopbackNode) -> tuple[list[int | None], float]:
        token = node.token("shutdown")
        async with aiohttp.ClientSession() as http:
            raw = await http.ws_connect(  # the v86 relay: frames only
                f"{node.ws}/net/{token}"
            )
            net = await mio_connect(f"{node.ws}/mio", token)
            assert node.proc is not None
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)

            async def drain() -> None:  # broadcasts (the mio session's DHCP) until the close
                async for _frame in raw:
                    pass

            await asyncio.wait_for(drain(), 15)
            await asyncio.wait_for(net.wait_closed(), 15)
            await net.close()
            await asyncio.to_thread(node.proc.wait, 30)
            return [raw.close_code], time.monotonic() - started

    with LoopbackNode(tmp_path) as node:
        codes, took = asyncio.run(scenario(node))
        assert node.proc is not None and node.proc.returncode == 0
    assert codes == [1001]
    assert took < 10, f"the node took {took:.1f} s to stop with WebSockets open"
