"""Micro-benchmark: what the gateway costs per frame, against the plain switch flood.

    .venv/bin/python bench/bench_router.py            # a table
    .venv/bin/python bench/bench_router.py --json     # the same numbers as JSON

Sans-I/O, in one process, with the node's own wiring: a ``NodeCore`` serving two networks
(A 10.9.8.0/24, B 10.9.9.0/24) from real chains in a temporary SQLite store, a route A → B
(``tok route add`` as the chain records it), and local ports that only count what they are
given (no sealing, no sockets: the table is the switch + gateway + router logic alone). Each
frame enters network A's switch from host a1's port (``Switch.from_local``), as a client's
frame does after the node opened it:

- **ARP who-has gateway**: broadcast; the gateway answers a1 and the switch floods it to a2.
- **ping gateway**: ICMP echo (56 bytes of data) to the gateway's MAC and IPv4; answered.
- **routed 64 B / 1400 B**: UDP from a1 to b1 in network B via the gateway's MAC: route
  lookup, TTL decrement with the incremental checksum fix, B's neighbour cache (b1 resolved
  once by ARP, as on a live node), re-addressed, into B's switch from the route's port, to b1.
- **unicast a1 → a2**: an ordinary frame between two hosts, which the gateway must not slow.

The baseline for each is *the same frame* through the same switch with the gateway unhooked
(``switch.gateway = None``): the flood every frame got before the router existed (the ARP and
the ping are flooded to a2; the routed frame, addressed to the gateway's MAC, too). Rounds of
``--frames`` calls alternate gateway and baseline for every case (so a busy machine inflates
both alike); the table shows the median per-frame time over ``--rounds`` rounds, the range,
and the difference.
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from scapy.all import ARP, ICMP, IP, UDP, Ether, raw  # type: ignore[attr-defined]  # noqa: E402
from tests.support.chains import World, make_world  # noqa: E402

from atenet.chain.event import Kind  # noqa: E402
from atenet.chain.keys import b64  # noqa: E402
from atenet.chain.log import Chain, create_network  # noqa: E402
from atenet.chain.sqlite_store import SqliteStore  # noqa: E402
from atenet.node.core import NetworkRuntime, NodeCore  # noqa: E402
from atenet.overlay.seal import PacketKey, Sealer  # noqa: E402
from atenet.switch.core import Port  # noqa: E402

A1_MAC, A2_MAC, B1_MAC = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:bb:00:00:00:01"
A1_IP, A2_IP, B1_IP = "10.9.8.10", "10.9.8.11", "10.9.9.20"


class Sink(Port):
    """A local port that counts frames; b1 also answers ARP for its address, like a kernel."""

    def __init__(self, name: str, runtime: NetworkRuntime, arp_reply: bytes | None = None):
        super().__init__(name, "bench", time.time())
        self.runtime = runtime
        self.arp_reply = arp_reply
        self.count = 0

    def deliver(self, frame: bytes) -> None:
        self.count += 1
        if self.arp_reply is not None and frame[12:14] == b"\x08\x06" and frame[21] == 1:
            self.runtime.switch.from_local(self, self.arp_reply)


async def build(store_path: Path) -> tuple[NodeCore, World, Chain]:
    store = SqliteStore(f"sqlite://{store_path}")
    await store.connect()
    world = await make_world(store)
    net_b = await create_network(
        store, world.owner, world.deployment, name="lab", cidr="10.9.9.0/24",
        cidr6="fd00:1:2:4::/64", mtu=1400,
    )  # fmt: skip
    # A route A → B, as `tok route add` records it: a key of B, and the route in A's chain.
    payload = {"key_id": 1, "label": "route", "secret": b64(os.urandom(32)), "expires": None}
    await net_b.append(Kind.KEY_ADD, payload, world.owner_signer)
    await world.chain.append(
        Kind.ROUTE_ADD,
        {"to": net_b.network_id.hex(), "name": "lab", "key_id": 1, "token": "x",
         "created_key": True},
        world.owner_signer,
    )  # fmt: skip
    core = NodeCore("bench-node", lambda packet, addr: None, time.time_ns())
    now = time.time()
    for chain in (world.chain, net_b):
        await chain.catch_up()
        core.add_network(chain.network_id).apply_state(chain.state, now)
    await store.close()
    return core, world, net_b


def frames(gw_mac: str, gw_ip: str) -> dict[str, bytes]:
    pad = b"x" * 56
    return {
        "ARP who-has gateway": raw(
            Ether(src=A1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=A1_MAC, psrc=A1_IP, pdst=gw_ip)
        ),
        "ping gateway": raw(
            Ether(src=A1_MAC, dst=gw_mac) / IP(src=A1_IP, dst=gw_ip) / ICMP(id=7, seq=1) / pad
        ),
        "routed 64 B": raw(
            Ether(src=A1_MAC, dst=gw_mac)
            / IP(src=A1_IP, dst=B1_IP, ttl=64)
            / UDP(sport=4000, dport=5000)
            / (b"r" * 64)
        ),
        "routed 1400 B": raw(
            Ether(src=A1_MAC, dst=gw_mac)
            / IP(src=A1_IP, dst=B1_IP, ttl=64)
            / UDP(sport=4000, dport=5000)
            / (b"r" * 1372)
        ),
        "unicast a1 → a2": raw(
            Ether(src=A1_MAC, dst=A2_MAC)
            / IP(src=A1_IP, dst=A2_IP)
            / UDP(sport=4000, dport=5000)
            / (b"u" * 64)
        ),
    }


def per_frame(run: Callable[[bytes], None], frame: bytes, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run(frame)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--frames", type=int, default=2000, help="frames per case per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        core, world, net_b = asyncio.run(build(Path(tmp) / "c.sqlite"))
    a = core.networks[world.chain.network_id]
    b = core.networks[net_b.network_id]
    assert a.gateway is not None and b.gateway is not None
    gw_mac = a.gateway.mac.hex(":")
    gw_b = b.gateway.mac.hex(":")
    b1_arp_reply = raw(
        Ether(src=B1_MAC, dst=gw_b)
        / ARP(op=2, hwsrc=B1_MAC, psrc=B1_IP, hwdst=gw_b, pdst=str(b.gateway.ipv4))
    )
    a1, a2 = Sink("a1", a), Sink("a2", a)
    b1 = Sink("b1", b, b1_arp_reply)
    a.add_port("a1", a1)
    a.add_port("a2", a2)
    b.add_port("b1", b1)
    core.expire(time.time())  # links the route A → B (node/routes.py)
    assert a.routed_cidrs(), "the route A → B was not linked"

    cases = frames(gw_mac, str(a.gateway.ipv4))
    switch = a.switch
    hook = switch.gateway

    def send(frame: bytes) -> None:
        switch.from_local(a1, frame)

    # Warm up, resolve b1 in B's neighbour cache, and check each case does what it says.
    for frame in cases.values():
        send(frame)
    for name, frame in cases.items():
        before = (a1.count, a2.count, b1.count)
        send(frame)
        send(frame)
        after = (a1.count, a2.count, b1.count)
        got = tuple(y - x for x, y in zip(before, after, strict=True))
        expect = {
            "ARP who-has gateway": (1, 1, 0),
            "ping gateway": (1, 0, 0),
            "routed 64 B": (0, 0, 1),
            "routed 1400 B": (0, 0, 1),
            "unicast a1 → a2": (0, 1, 0),
        }[name]
        assert got == tuple(2 * e for e in expect), f"{name}: delivered {got}, expected {expect}"
    routed_before = a.gateway.handled["routed4"]

    times: dict[str, dict[str, list[float]]] = {n: {"gateway": [], "baseline": []} for n in cases}
    for _ in range(args.rounds):
        for name, frame in cases.items():
            switch.gateway = hook
            times[name]["gateway"].append(per_frame(send, frame, args.frames))
            switch.gateway = None
            times[name]["baseline"].append(per_frame(send, frame, args.frames))
    switch.gateway = hook
    # For scale: sealing a frame, which every frame delivered to a UDP client port costs on top.
    sealer = Sealer(a.network_id, PacketKey(os.urandom(32), 1), 7, time.time_ns())
    seal_times: dict[str, list[float]] = {"64 B": [], "1400 B": []}
    for _ in range(args.rounds):
        for name in ("64 B", "1400 B"):
            frame = cases[f"routed {name}"]
            seal_times[name].append(per_frame(sealer.seal, frame, args.frames))
    routed = a.gateway.handled["routed4"] - routed_before
    assert routed == 2 * args.rounds * args.frames, f"routed {routed} frames"

    rows = []
    for name, t in times.items():
        g, base = t["gateway"], t["baseline"]
        diff = [x - y for x, y in zip(g, base, strict=True)]
        rows.append(
            {
                "case": name,
                "gateway_us": statistics.median(g) * 1e6,
                "gateway_range_us": (min(g) * 1e6, max(g) * 1e6),
                "baseline_us": statistics.median(base) * 1e6,
                "baseline_range_us": (min(base) * 1e6, max(base) * 1e6),
                "added_us": statistics.median(diff) * 1e6,
            }
        )
    seals = {
        f"seal one routed {n} frame (AES-256-GCM)": (
            statistics.median(t) * 1e6,
            min(t) * 1e6,
            max(t) * 1e6,
        )
        for n, t in seal_times.items()
    }
    machine = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "rounds": args.rounds,
        "frames": args.frames,
    }
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows, "seal_us": seals}, indent=2))
        return
    print(
        f"{args.rounds} rounds x {args.frames} frames per case; load average "
        f"{load_start[0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end"
    )
    print("| frame from a local port | gateway µs/frame (range) | switch flood µs/frame (range) "
          "| added by the gateway µs |")  # fmt: skip
    print("|---|--:|--:|--:|")
    for r in rows:
        g0, g1 = r["gateway_range_us"]
        b0, b1_ = r["baseline_range_us"]
        gateway = f"{r['gateway_us']:.2f} ({g0:.2f}–{g1:.2f})"
        baseline = f"{r['baseline_us']:.2f} ({b0:.2f}–{b1_:.2f})"
        print(f"| {r['case']} | {gateway} | {baseline} | {r['added_us']:+.2f} |")
    for name, (med, lo, hi) in seals.items():
        print(f"| for scale: {name} | – | {med:.2f} ({lo:.2f}–{hi:.2f}) | – |")


if __name__ == "__main__":
    main()
