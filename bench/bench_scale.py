"""Scale by simulation: what one frame costs in an M-node × H-host network, flood vs learned.

The node and client cores are sans-I/O, so a whole network fits in one process: M real
``NodeCore`` s (each a member of one network whose chain lives in a real SQLite store) with H
``ClientCore`` hosts each, joined by an in-memory wire (tests/test_node_core.py's ``Wire``). For
each size the bench sends, from host 0 of node 0:

* a unicast frame to the last host of the last node (after every host has broadcast once, so
  every switch has learned every MAC), and
* a broadcast frame,

and counts the datagrams on the wire (client → node hops included), the seals (AES-GCM
operations), the frames delivered to hosts, and the CPU time of the whole propagation. "flood"
is the same network with learning off (every switch's table cleared and capped at 0: unicast
floods, as before issue 11); "learned" is the learning switch.

Memory per node: one more node joins the finished network and attaches its own H hosts; the
traced allocation growth of that (its runtime, switch, ports, the derived key material of its
own hosts) is reported. The chain state a node holds (O(keys + members), ~1 KiB per key) is
reported apart: every node needs it, lazily derived key material is what issue 11 removed.

    .venv/bin/python bench/bench_scale.py            # M ∈ {2, 10, 100} × H ∈ {1, 10}, 5 rounds
    .venv/bin/python bench/bench_scale.py --quick    # M ∈ {2, 10} × H ∈ {1, 2}, 2 rounds

Goal (issue 11): a unicast frame costs ≤ 3 datagrams and within 2× of the 2-node CPU at every
size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.* helpers

from tests.support.chains import make_world, new_node
from tests.test_node_core import add_key, build, handshake

from atenet.chain.sqlite_store import SqliteStore
from atenet.client.core import ClientCore
from atenet.node.core import NodeCore
from atenet.overlay import seal as seal_module
from atenet.wire.ethernet import ethernet_frame

NOW = 1000.0
BCAST = b"\xff" * 6

_seals = 0
_real_seal = seal_module.Sealer.seal


def _counting_seal(self: Any, payload: bytes, ptype: int = seal_module.TYPE_FRAME) -> bytes:
    global _seals
    _seals += 1
    return _real_seal(self, payload, ptype)


def mac(i: int) -> bytes:
    return bytes([2, 0, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF, 1])


def eth(dst: bytes, src: bytes, payload: bytes = b"x" * 64) -> bytes:
    return ethernet_frame(dst, src, 0x88B5, payload)


class Meter:
    """Counts datagrams the wire carries and frames it delivers."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire

    def send(self, addr: Any, client: ClientCore, frame: bytes) -> dict[str, float]:
        global _seals
        wire = self.wire
        delivered_before = sum(len(v) for v in wire.frames.values())
        datagrams = 0
        seals_before = _seals
        cpu = time.process_time()
        wire.sender(addr)(client.seal_frame(frame), client.node)
        while wire.queue:
            packet, src, dst = wire.queue.pop(0)
            datagrams += 1
            if dst in wire.nodes:
                wire.nodes[dst].datagram(packet, src, NOW)
            elif dst in wire.clients:
                got = wire.clients[dst].datagram(packet, NOW)
                if got is not None:
                    wire.frames[dst].append(got)
        cpu = time.process_time() - cpu
        return {
            "datagrams": datagrams,
            "seals": _seals - seals_before,
            "delivered": sum(len(v) for v in wire.frames.values()) - delivered_before,
            "cpu_us": cpu * 1e6,
        }


async def one_size(m: int, h: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="atn-scale-") as tmp:
        store = SqliteStore(f"sqlite://{tmp}/chains.db")
        world = await make_world(store)
        wire, nodes, clients = await build(world, m, h, NOW)
        net = world.chain.network_id
        meter = Meter(wire)
        for i, (addr, client) in enumerate(clients):  # every host says who it is
            meter.send(addr, client, eth(BCAST, mac(i)))
        wire.frames.clear()
        (src_addr, src), last = clients[0], len(clients) - 1
        unicast = eth(mac(last), mac(0))
        out: dict[str, Any] = {"M": m, "H": h}
        for mode in ("learned", "flood"):
            if mode == "flood":
                for node in nodes:
                    switch = node.networks[net].switch
                    switch.fdb_max = 0
                    switch.fdb.clear()
                    switch.fdb_seen.clear()
                    switch.peer_learned.clear()
                    for port in switch.ports.values():
                        port.learned = set()
                        port.fdb_mac = bytes(6)
            uni = [meter.send(src_addr, src, unicast) for _ in range(rounds)]
            bc = [meter.send(src_addr, src, eth(BCAST, mac(0))) for _ in range(rounds)]
            out[mode] = {
                "unicast": {k: statistics.median(r[k] for r in uni) for k in uni[0]},
                "broadcast": {k: statistics.median(r[k] for r in bc) for k in bc[0]},
            }
        out["node_memory_kib"] = await _node_memory(world, h) / 1024
        out["keys"] = len(world.chain.state.keys)
        await store.close()
        return out


async def _node_memory(world: Any, h: int) -> float:
    """Traced memory of one more node that joins and attaches its own ``h`` hosts."""
    view = world.reader()
    await view.load()
    signer = new_node(world.authority)
    from atenet.chain.event import Kind
    from atenet.chain.keys import short_id

    node_id = short_id(signer.key.public_key().public_bytes_raw())
    await view.append(Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": ["10.0.9.9:4799"]},
                      signer)  # fmt: skip
    tokens = []
    base = max(view.state.keys) + 1
    for j in range(h):
        tokens.append(await add_key(world, base + j))
    await view.catch_up()
    state = view.state
    from tests.test_node_core import Wire

    wire = Wire()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        core = NodeCore(node_id, wire.sender(("10.0.9.9", 4799)), 1)
        wire.nodes[("10.0.9.9", 4799)] = core
        core.add_network(world.chain.network_id).apply_state(state, NOW)
        clients = []
        for j, token in enumerate(tokens):
            client = ClientCore(token, 1, sender_id=10_000 + j)
            client.endpoints = [("10.0.9.9", 4799)]
            addr = (f"192.168.99.{j + 1}", 5000)
            wire.clients[addr] = client
            clients.append((addr, client))
            wire.sender(addr)(client.control("hello", NOW), client.node)
        wire.run(NOW)
        handshake(wire, clients, NOW)
        # The hosts' own objects are not the node's: measure them alone and subtract.
        node_and_hosts = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    extra = [ClientCore(t, 1, sender_id=20_000 + j) for j, t in enumerate(tokens)]
    hosts_alone = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del extra
    return max(0.0, node_and_hosts - hosts_alone)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| M × H | frame | mode | datagrams | seals | delivered | CPU µs | CPU vs M=2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[str, str, int], float] = {}
    for r in results:
        for kind in ("unicast", "broadcast"):
            for mode in ("flood", "learned"):
                x = r[mode][kind]
                key = (kind, mode, r["H"])
                if r["M"] == 2:
                    base[key] = x["cpu_us"]
                ratio = x["cpu_us"] / base[key] if base.get(key) else float("nan")
                lines.append(
                    f"| {r['M']} × {r['H']} | {kind} | {mode} | {x['datagrams']:.0f} | "
                    f"{x['seals']:.0f} | {x['delivered']:.0f} | {x['cpu_us']:,.0f} | "
                    f"{ratio:.2f}× |"
                )
    lines.append("")
    lines.append("| M × H | access keys in the chain | memory of one more node with its H hosts |")
    lines.append("|---|---|---|")
    for r in results:
        lines.append(f"| {r['M']} × {r['H']} | {r['keys']} | {r['node_memory_kib']:,.0f} KiB |")
    return "\n".join(lines)


def goals(results: list[dict[str, Any]]) -> list[str]:
    problems = []
    base = {r["H"]: r["learned"]["unicast"]["cpu_us"] for r in results if r["M"] == 2}
    for r in results:
        u = r["learned"]["unicast"]
        if u["datagrams"] > 3:
            problems.append(f"M={r['M']} H={r['H']}: unicast took {u['datagrams']:.0f} datagrams")
        if r["H"] in base and u["cpu_us"] > 2 * base[r["H"]]:
            problems.append(
                f"M={r['M']} H={r['H']}: unicast CPU {u['cpu_us']:.0f} µs > 2× the 2-node "
                f"{base[r['H']]:.0f} µs"
            )
    return problems


async def main_async(args: argparse.Namespace) -> int:
    seal_module.Sealer.seal = _counting_seal  # type: ignore[method-assign]
    sizes = [(m, h) for m in args.nodes for h in args.hosts]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results = []
    for m, h in sizes:
        t = time.monotonic()
        results.append(await one_size(m, h, args.rounds))
        print(f"  M={m} H={h}: {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    print(table(results))
    problems = goals(results)
    print("\ngoals: " + ("met" if not problems else "MISSED: " + "; ".join(problems)))
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (seconds)")
    parser.add_argument("--rounds", type=int, default=5, help="frames per measure (median)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.nodes, args.hosts = ([2, 10], [1, 2]) if args.quick else ([2, 10, 100], [1, 10])
    if args.quick:
        args.rounds = min(args.rounds, 2)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
