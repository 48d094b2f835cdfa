"""Lazy per-key material (node/core.py): a node derives an access key's packet key, opener and
sealer when a host first uses it, and drops them when the key's ports are gone — its memory is
O(its own hosts), not O(every key of the network). Dropping must cost no security: a revoked key
is never derived again, and a packet accepted before a drop is refused after the re-derivation.
"""

from __future__ import annotations

import json
import tracemalloc

from atenet.chain.event import Kind
from atenet.node.core import UDP_IDLE, NodeCore
from atenet.overlay.seal import TYPE_CONTROL, TYPE_FRAME, PacketKey, Sealer
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.support.chains import World
from tests.test_node_core import add_key

NOW = 1_000_000.0
NS = 1_000_000_000
KEYS = 1000
ADDR = ("192.168.7.7", 5000)


def _node(world: World) -> tuple[NodeCore, object]:
    core = NodeCore("node-a", lambda packet, addr: None, int((NOW - 1) * NS), clock=lambda: NOW)
    return core, core.add_network(world.chain.network_id)


def _hello(core: NodeCore) -> bytes:
    return json.dumps({"op": "hello", "instance": core.instance}).encode()


async def test_a_node_derives_material_only_for_the_keys_its_hosts_use(world: World) -> None:
    tokens: list[AccessToken] = [await add_key(world, i) for i in range(1, KEYS + 1)]
    state = world.chain.state
    assert len(state.keys) == KEYS
    core, runtime = _node(world)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        runtime.apply_state(state, NOW)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Eagerly, 1,000 keys cost ~1.1 KiB each (packet key, opener, sealer): 1.1 MB measured;
    # lazily 52 KB (the usable-key index).
    assert grown < 256 * 1024, f"applying {KEYS} keys grew memory by {grown} bytes"
    assert runtime.status()["keys_derived"] == 0

    # One host per key 7 and 8: two derivations, and their ports open.
    sealers = {}
    for n, token in ((7, tokens[6]), (8, tokens[7])):
        sealer = Sealer(world.chain.network_id, PacketKey(token.secret, n), 100 + n, int(NOW * NS))
        sealers[n] = sealer
        core.datagram(sealer.seal(_hello(core), TYPE_CONTROL), (ADDR[0], ADDR[1] + n), NOW)
    status = runtime.status()
    assert status["keys_derived"] == 2 and status["key_derivations"] == 2
    assert len(runtime.switch) == 2

    # A frame from key 7's host, accepted; kept to replay later.
    frame = ethernet_frame(b"\xff" * 6, bytes.fromhex("020000000007"), 0x88B5, b"x" * 46)
    captured = sealers[7].seal(frame, TYPE_FRAME)
    core.datagram(captured, (ADDR[0], ADDR[1] + 7), NOW + 1)
    frames_in = [p.frames_in for p in runtime.switch.ports.values()]
    assert sorted(frames_in) == [0, 1]

    # The ports go idle and close; UDP_IDLE after that the material is dropped.
    later = NOW + 1 + UDP_IDLE + 1
    runtime.expire(later)
    assert len(runtime.switch) == 0
    runtime.expire(later + UDP_IDLE + 1)
    assert runtime.status()["keys_derived"] == 0

    # The capture replayed after the drop: the key is derived again, the packet refused (its
    # counter is older than the freshness floor of a window-less sender).
    replay_at = later + UDP_IDLE + 2
    drops_before = dict(runtime.drops)
    core.datagram(captured, (ADDR[0], ADDR[1] + 7), replay_at)
    assert len(runtime.switch) == 0
    assert sum(runtime.drops.values()) == sum(drops_before.values()) + 1, runtime.drops
    # The host itself comes back with fresh counters: derived again, port open again.
    fresh = Sealer(world.chain.network_id, PacketKey(tokens[6].secret, 7), 107, int(replay_at * NS))
    core.datagram(fresh.seal(_hello(core), TYPE_CONTROL), (ADDR[0], ADDR[1] + 7), replay_at)
    assert len(runtime.switch) == 1
    assert runtime.status()["key_derivations"] >= 3


async def test_revocation_closes_at_once_and_a_revoked_key_is_never_derived(world: World) -> None:
    token = await add_key(world, 1)
    core, runtime = _node(world)
    runtime.apply_state(world.chain.state, NOW)
    sealer = Sealer(world.chain.network_id, PacketKey(token.secret, 1), 42, int(NOW * NS))
    core.datagram(sealer.seal(_hello(core), TYPE_CONTROL), ADDR, NOW)
    assert len(runtime.switch) == 1 and runtime.status()["keys_derived"] == 1
    await world.chain.append(Kind.KEY_REVOKE, {"key_id": 1}, world.owner_signer)
    runtime.apply_state(world.chain.state, NOW + 1)
    assert len(runtime.switch) == 0 and runtime.status()["keys_derived"] == 0
    core.datagram(sealer.seal(_hello(core), TYPE_CONTROL), ADDR, NOW + 2)
    assert len(runtime.switch) == 0 and runtime.status()["keys_derived"] == 0
    assert runtime.drops["revoked_key"] >= 1
