"""Micro-benchmark: what MAC learning costs one stream through a node's packet core.

    PYTHONPATH=src python bench/bench_learning.py [--frames 3000] [--rounds 5] [--json]

Sans-I/O, in one process: real chains in a throwaway SQLite store, real sealing, the node's own
:class:`~atenet.node.core.NodeCore` fed pre-sealed 1400-byte frames of one client stream
(``datagram(data, addr, now)``), time per frame best of a few rounds. Run it once with the
learning switch and once with the tree before it (``PYTHONPATH=/path/to/old/src``) to compare:
the script uses only APIs both have.

Cases (the stream's frames, after both hosts have spoken once):

- ``local unicast``: client → the node → the other client on the same node (no peers);
- ``unknown unicast``: the same, to a MAC nobody has sent from (flooded: learning's worst case,
  a lookup that misses and saves nothing);
- ``to peer``: client → its node → sealed to the destination's node (2 nodes, 1 host each);
- ``from peer``: the receiving node of the case above (open, learn the source, deliver);
- ``switch local`` / ``switch from peer``: the switch alone (ports that drop what they get), so
  the learning's own cost is visible apart from sealing and the machine's noise.

``--old-switch PATH`` (e.g. ``/work/main/src/atenet/switch/core.py`` before learning) instead
loads that file as a second module and times both switches alone in the same process, rounds
interleaved — on a shared machine the only comparison steadier than the cost itself.

With 1-2 ports per node flooding and learning deliver the same copies, so the difference is the
learning itself (lookups, refresh); with more ports learning saves a seal per extra port.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.chains import make_world  # noqa: E402
from tests.test_node_core import build  # noqa: E402

from atenet.chain.sqlite_store import SqliteStore  # noqa: E402
from atenet.switch.core import Port, Switch  # noqa: E402
from atenet.wire.ethernet import ethernet_frame  # noqa: E402

MAC_A, MAC_B, MAC_X = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b"), b"\x02" * 6


def frame(dst: bytes, src: bytes) -> bytes:
    return ethernet_frame(dst, src, 0x0800, b"p" * 1386)


async def setup(tmp: Path, n_nodes: int, per_node: int):
    store = SqliteStore(f"sqlite://{tmp / f'c{n_nodes}.sqlite'}")
    await store.connect()
    try:
        world = await make_world(store)
        return await build(world, n_nodes, per_node)
    finally:
        await store.close()


def timed(node, packets: list[bytes], addr, now: float) -> float:
    """Seconds per datagram; ``now`` advances 0.1 ms a packet (under the port's rate limit)."""
    start = time.perf_counter()
    for packet in packets:
        now += 1e-4
        node.datagram(packet, addr, now)
    return (time.perf_counter() - start) / len(packets)


class Drop(Port):
    def deliver(self, frame: bytes) -> None:
        self.frames_out += 1


def switch_only(n: int, rounds: int) -> dict[str, list[float]]:
    """The switch alone: a 2-port switch, a stream a → b, and the same frames from a peer."""
    switch = Switch()
    a, b = Drop("a", "bench"), Drop("b", "bench")
    switch.add("a", a)
    switch.add("b", b)
    to_b, from_peer = frame(MAC_B, MAC_A), frame(MAC_B, MAC_X)
    switch.from_local(b, frame(b"\xff" * 6, MAC_B))
    try:
        switch.from_peer(from_peer, 7)  # learning: the source behind peer 7
        peer_args: tuple[object, ...] = (from_peer, 7)
    except TypeError:  # a switch without learning
        peer_args = (from_peer,)
    out: dict[str, list[float]] = {"switch local": [], "switch from peer": []}
    local, remote = switch.from_local, switch.from_peer
    for _ in range(rounds * 4):
        start = time.perf_counter()
        for _ in range(n):
            local(a, to_b)
        out["switch local"].append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        for _ in range(n):
            remote(*peer_args)  # type: ignore[arg-type]
        out["switch from peer"].append((time.perf_counter() - start) / n)
    assert b.frames_out >= 2 * n * rounds * 4, "the stream did not reach port b"
    return out


def ab_switch(old_path: str, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """ns per frame (old, new) of the switch alone, interleaved in one process."""
    spec = importlib.util.spec_from_file_location("old_switch", old_path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    new = sys.modules[Switch.__module__]

    def setup(mod: Any) -> tuple[Any, Any, tuple[object, ...]]:
        class Sink(mod.Port):  # type: ignore[name-defined,misc]
            def deliver(self, frame: bytes) -> None:
                self.frames_out += 1

        switch = mod.Switch(lambda _frame: 1)
        a, b = Sink("a", "bench"), Sink("b", "bench")
        switch.add("a", a)
        switch.add("b", b)
        switch.from_local(b, frame(b"\xff" * 6, MAC_B))
        from_peer = frame(MAC_B, MAC_X)
        try:
            switch.from_peer(from_peer, 7)
            return switch, a, (from_peer, 7)
        except TypeError:
            return switch, a, (from_peer,)

    switches = {"old": setup(old), "new": setup(new)}
    to_b, unknown = frame(MAC_B, MAC_A), frame(MAC_X, MAC_A)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for which, (switch, a, peer_args) in switches.items():
            for case, run, args in (
                ("local", switch.from_local, (a, to_b)),
                ("unknown", switch.from_local, (a, unknown)),
                ("from peer", switch.from_peer, peer_args),
            ):
                start = time.perf_counter()
                for _ in range(n):
                    run(*args)
                times.setdefault((case, which), []).append((time.perf_counter() - start) / n)
    cases = ("local", "unknown", "from peer")
    return {c: (min(times[(c, "old")]) * 1e9, min(times[(c, "new")]) * 1e9) for c in cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--old-switch", metavar="PATH", help="switch/core.py to compare with")
    args = parser.parse_args()
    if args.old_switch:
        ab = ab_switch(args.old_switch, 2000, args.rounds * 4)
        if args.json:
            print(json.dumps({"switch_ns_old_new": ab}))
        for case, (old_ns, new_ns) in ab.items():
            print(f"switch {case:10} old {old_ns:5.0f} ns  new {new_ns:5.0f} ns  "
                  f"{new_ns - old_ns:+5.0f} ns")  # fmt: skip
        return
    n = args.frames
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        one = asyncio.run(setup(Path(tmp), 1, 2))
        two = asyncio.run(setup(Path(tmp), 2, 1))
    now = 1000.0

    def speak(wire, clients) -> None:
        for (addr, client), mac in zip(clients, (MAC_A, MAC_B), strict=False):
            wire.sender(addr)(client.seal_frame(frame(b"\xff" * 6, mac)), client.node)
        wire.run(now)

    wire, nodes, clients = one
    speak(wire, clients)
    (a_addr, a), _b = clients
    for _ in range(args.rounds):
        for name, dst in (("local unicast", MAC_B), ("unknown unicast", MAC_X)):
            packets = [a.seal_frame(frame(dst, MAC_A)) for _ in range(n)]
            results.setdefault(name, []).append(timed(nodes[0], packets, a_addr, now))
            now += n * 1e-4 + 1
            wire.queue.clear()

    wire, nodes, clients = two
    speak(wire, clients)
    (a_addr, a), _b = clients
    peer_addr = ("10.0.0.1", 4799)
    for _ in range(args.rounds):
        for node in nodes:  # what the node's once-a-second tick does: counters follow the clock
            for runtime in node.networks.values():
                runtime.advance(now)
        packets = [a.seal_frame(frame(MAC_B, MAC_A)) for _ in range(n)]
        wire.queue.clear()
        results.setdefault("to peer", []).append(timed(nodes[0], packets, a_addr, now))
        to_b = [p for p, _src, dst in wire.queue if dst == ("10.0.0.2", 4799)]
        assert len(to_b) == n, f"node A sent {len(to_b)} datagrams to node B for {n} frames"
        wire.queue.clear()
        results.setdefault("from peer", []).append(timed(nodes[1], to_b, peer_addr, now))
        delivered = sum(1 for _p, _src, dst in wire.queue if dst == clients[1][0])
        assert delivered == n, f"node B delivered {delivered} of {n} frames"
        now += n * 1e-4 + 1
        wire.queue.clear()

    results.update(switch_only(n, args.rounds))
    best = {name: min(values) * 1e6 for name, values in results.items()}
    if args.json:
        print(json.dumps({"us_per_frame": best}))
        return
    for name, us in best.items():
        print(f"{name:16} {us:7.2f} µs/frame  ({1000 / us:.0f}k frames/s on one core)")


if __name__ == "__main__":
    main()
