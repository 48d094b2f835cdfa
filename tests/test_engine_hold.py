"""EngineHold (atenet.fast): an fd an engine handed over stays on the event loop while bulk
flows and goes back to the engine once a period passed without bulk work — on a real socket
pair and a real event loop."""

from __future__ import annotations

import asyncio
import socket

from atenet import fast
from atenet.fast import EngineHold


async def test_a_busy_fd_stays_on_the_loop_then_goes_back() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    work = {"bulk": 0}
    read: list[bytes] = []
    resumed: list[float] = []
    loop = asyncio.get_running_loop()

    def on_read() -> None:
        while True:
            try:
                data = a.recv(100)
            except BlockingIOError:
                return
            read.append(data)
            work["bulk"] += data == b"big"

    hold = EngineHold(
        a.fileno(), on_read, lambda: resumed.append(loop.time()), lambda: work["bulk"]
    )
    try:
        started = loop.time()
        hold.hold()
        assert hold.held
        # Bulk for ten periods: the loop reads the fd and the engine does not get it back.
        for _ in range(10):
            b.send(b"big")
            await asyncio.sleep(fast.ENGINE_HOLD)
        assert read.count(b"big") == 10 and not resumed and hold.held
        # Small packets only (what the engine carries itself): back within two periods.
        b.send(b"small")
        await asyncio.sleep(fast.ENGINE_HOLD * 4)
        assert len(resumed) == 1 and not hold.held
        assert resumed[0] - started >= 10 * fast.ENGINE_HOLD
        # Given back: the loop no longer reads the fd.
        b.send(b"after")
        await asyncio.sleep(fast.ENGINE_HOLD * 2)
        assert b"after" not in read
    finally:
        hold.cancel()
        a.close()
        b.close()


async def test_cancel_stops_holding_without_giving_the_fd_back() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    resumed: list[int] = []
    hold = EngineHold(a.fileno(), lambda: None, lambda: resumed.append(1), lambda: 0)
    try:
        hold.hold()
        hold.cancel()
        await asyncio.sleep(fast.ENGINE_HOLD * 3)
        assert not resumed and not hold.held
        asyncio.get_running_loop().add_reader(a.fileno(), lambda: None)  # no reader was left
        asyncio.get_running_loop().remove_reader(a.fileno())
    finally:
        a.close()
        b.close()
