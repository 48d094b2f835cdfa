"""The pmd-pytcp 0.3.8 side of bench/bench_mio.py — the baseline, run in a throwaway venv.

    /tmp/pmdvenv/bin/python bench/mio_pmd_engine.py TAPNAME 10.79.2.2/24

pmd-pytcp is GPL-3: it is never a dependency of atenet and nothing in src/ imports it. This
script runs only under the throwaway venv that bench_mio.py creates (``--pmd-venv``), inside the
bench's namespace. It speaks the same line protocol on stdin/stdout as the atenet engine in
bench_mio.py (see there): ``ready`` once the stack is up, then one JSON line per command.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time


def cpu() -> float:
    """User + system CPU seconds of this process, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def rx(psock, port: int) -> dict[str, float]:
    """Listen on ``port``; count bytes until EOF (timed from the first byte)."""
    srv = psock.socket(psock.AF_INET4, psock.SOCK_STREAM)
    srv.bind(("0.0.0.0", port))
    srv.listen(backlog=1)
    print(json.dumps({"listening": port}), flush=True)
    conn, _ = await srv.accept()
    got = 0
    t0 = c0 = None
    while True:
        chunk = await conn.recv(1 << 16)
        if not chunk:
            break
        if t0 is None:
            t0, c0 = time.monotonic(), cpu()
        got += len(chunk)
    t1, c1 = time.monotonic(), cpu()
    conn.close()
    srv.close()
    return {"bytes": got, "seconds": t1 - (t0 or t1), "cpu": c1 - (c0 or c1)}


async def tx(psock, host: str, port: int, seconds: float) -> dict[str, float]:
    """Connect, send for ``seconds``, shut down, then wait for the kernel's 8-byte count."""
    s = psock.socket(psock.AF_INET4, psock.SOCK_STREAM)
    await s.connect((host, port))
    block = bytes(1 << 16)
    # pmd's send() takes everything into an unbounded buffer and never suspends: hold the
    # buffer near 1 MiB (our stack's send buffer in the bench) and give the loop its turns.
    tx_buffer = s._tcp_session._tx.buffer
    t0, c0 = time.monotonic(), cpu()
    while time.monotonic() - t0 < seconds:
        if len(tx_buffer) < 1 << 20:
            await s.send(block)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.001)
    s.shutdown(psock.SHUT_WR)
    receipt = b""
    while len(receipt) < 8:
        chunk = await s.recv(8 - len(receipt))
        if not chunk:
            break
        receipt += chunk
    t1, c1 = time.monotonic(), cpu()
    s.close()
    got = int.from_bytes(receipt, "big") if len(receipt) == 8 else 0
    return {"bytes": got, "seconds": t1 - t0, "cpu": c1 - c0}


async def amain() -> None:
    name, address = sys.argv[1], sys.argv[2]
    from pmd_net_addr import Ip4IfAddr, MacAddress
    from pmd_pytcp import socket as psock
    from pmd_pytcp import stack

    stack.LOG__CHANNEL = set()
    stack.LOG__OUTPUT = open("/dev/null", "w")  # noqa: SIM115
    iface = stack.initialize_interface__tap(name, mac_address=MacAddress("02:a7:e0:00:00:22"))
    stack.init(**iface, ip4_host=Ip4IfAddr(address), ip4_dhcp=False, ip6_support=False)
    await stack.start()  # the stack runs on this event loop
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.split()
        if not line or cmd[:1] == ["quit"]:
            break
        if not cmd:
            continue
        if cmd[0] == "wait":  # the kernel side is configured: let the stack finish its start
            await asyncio.sleep(float(cmd[1]))
            result: dict[str, float] = {"ok": True}
        elif cmd[0] == "rx":
            result = await rx(psock, int(cmd[1]))
        else:
            result = await tx(psock, cmd[1], int(cmd[2]), float(cmd[3]))
        print(json.dumps(result), flush=True)
    await stack.stop()


if __name__ == "__main__":
    asyncio.run(amain())
