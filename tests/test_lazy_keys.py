"""Access-key material is derived lazily (issue 11, "Scale, measured by simulation"): a node
builds a key's packet key, opener and sealer on the first packet that names it and drops them
once the key has had no port for UDP_IDLE, so its memory is O(its hosts), not O(every access
key of the network). Real chains in a real SQLite store; UDP simulated as in test_node_core."""

from __future__ import annotations

import os
import tracemalloc

from atenet.chain.event import Kind
from atenet.chain.keys import b64
from atenet.client.core import ClientCore
from atenet.node.core import UDP_IDLE, NodeCore
from atenet.overlay.replay import AHEAD_SKEW
from atenet.overlay.token import AccessToken
from tests.test_node_core import add_key, build, frame, handshake

KEYS = 1000
NOW = 1000.0


async def many_keys(world, n: int = KEYS, first: int = 10_000) -> None:
    """``n`` access keys nobody uses on the node under test (other nodes' hosts)."""
    for key_id in range(first, first + n):
        await add_key(world, key_id)


def derived(runtime) -> int:
    return runtime.status()["keys_derived"]


async def test_a_node_derives_material_only_for_keys_that_sent_a_packet(world):
    await many_keys(world)
    wire, nodes, clients = await build(world, 1, 3, now=NOW)
    runtime = nodes[0].networks[world.chain.network_id]
    assert len(runtime.state.keys) == KEYS + 3
    status = runtime.status()
    assert status["keys_derived"] == 3  # the three hosts that said hello, not 1,003
    assert status["key_derivations"] == 3
    # Frames flow both ways on the lazily derived material.
    (a_addr, a), (b_addr, _b) = clients[0], clients[1]
    wire.sender(a_addr)(a.seal_frame(frame(1, b"lazy")), a.node)
    wire.run(NOW)
    assert wire.frames[b_addr] == [frame(1, b"lazy")]


async def test_memory_grows_with_used_keys_not_with_keys_in_the_chain(world):
    await many_keys(world)
    _wire, nodes, clients = await build(world, 1, 3, now=NOW)
    state = nodes[0].networks[world.chain.network_id].state
    # A second node instance takes the same chain: what does holding it cost?
    sent: list[bytes] = []
    core = NodeCore("other", lambda packet, _addr: sent.append(packet), 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        runtime = core.add_network(world.chain.network_id)
        runtime.apply_state(state, NOW)
        for addr, client in clients:
            core.datagram(client.control("hello", NOW), addr, NOW)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(sent) == 3  # each hello answered (a challenge): the material works
    # Deriving every key costs > 1 KiB of Python objects each (> 1 MiB here); the lazy node
    # holds three, plus a dict entry per usable key.
    assert grown < 400 * 1024, f"{grown / 1024:.0f} KiB for {KEYS} unused keys"
    assert derived(runtime) == 3


async def test_idle_material_is_dropped_and_derived_again_on_the_next_packet(world):
    wire, nodes, clients = await build(world, 1, 2, now=NOW)
    core = nodes[0]
    runtime = core.networks[world.chain.network_id]
    assert derived(runtime) == 2
    core.expire(NOW + UDP_IDLE - 1)
    assert len(runtime.switch) == 2 and derived(runtime) == 2
    core.expire(NOW + UDP_IDLE + 1)  # the clients fell silent: ports and material gone
    assert len(runtime.switch) == 0 and derived(runtime) == 0
    # A client comes back: material derived again, hello, port, frames.
    later = NOW + 2 * UDP_IDLE + 3
    for addr, client in clients:
        wire.sender(addr)(client.control("hello", later), client.node)
    wire.run(later)
    handshake(wire, clients, later)
    assert len(runtime.switch) == 2 and derived(runtime) == 2
    assert runtime.status()["key_derivations"] == 4
    (a_addr, a), (b_addr, _b) = clients
    wire.sender(a_addr)(a.seal_frame(frame(1, b"again")), a.node)
    wire.run(later)
    assert wire.frames[b_addr][-1] == frame(1, b"again")


async def test_a_replay_after_re_derivation_is_refused(world):
    """A client whose clock runs AHEAD_SKEW - 5 s ahead: its packets stay above the freshness
    floor for more than UDP_IDLE, so material dropped after idle time alone would come back
    without replay windows and take a capture of them."""
    wire, nodes, clients = await build(world, 1, 2, now=NOW)
    core = nodes[0]
    runtime = core.networks[world.chain.network_id]
    (_a_addr, _a), (b_addr, b) = clients
    ahead = ClientCore(
        b.token, int((NOW + AHEAD_SKEW - 5) * 1e9), sender_id=777
    )  # counters start ahead
    ahead.endpoints = b.endpoints
    capture = ahead.control("hello", NOW)
    core.datagram(capture, b_addr, NOW)  # accepted (a challenge back), then captured
    assert runtime.drops["replay"] == 0
    core.datagram(capture, b_addr, NOW)
    assert runtime.drops["replay"] == 1  # the window refuses it while the material lives
    key_id = b.token.key_id
    t = NOW
    while t < NOW + 3 * UDP_IDLE:
        t += 1.0
        core.expire(t)
        if key_id not in runtime.sealers:
            break
    # Dropped only once the capture is below the floor, so a re-derived opener calls it stale.
    assert key_id not in runtime.sealers
    wire.queue.clear()
    core.datagram(capture, b_addr, t + 1)
    assert runtime.status()["key_derivations"] >= 3  # derived again for the replay
    assert runtime.drops["stale"] == 1 and runtime.drops["replay"] == 1
    assert wire.queue == []  # not answered


async def test_revocation_closes_the_port_at_once_and_the_key_is_never_derived_again(world):
    wire, nodes, clients = await build(world, 1, 2, now=NOW)
    runtime = nodes[0].networks[world.chain.network_id]
    (a_addr, a), (b_addr, _b) = clients
    await world.chain.append(Kind.KEY_REVOKE, {"key_id": a.token.key_id}, world.owner_signer)
    closed = runtime.apply_state(world.chain.state, NOW + 1)
    assert [p.key_id for p in closed] == [a.token.key_id]
    assert a.token.key_id not in runtime.openers and derived(runtime) == 1
    for t in (NOW + 1, NOW + 2 * UDP_IDLE + 5):  # with the material live elsewhere, and idle
        nodes[0].expire(t)
        wire.sender(a_addr)(a.control("hello", t), a.node)
        wire.sender(a_addr)(a.seal_frame(frame(1)), a.node)
        wire.run(t)
    assert runtime.drops["revoked_key"] == 4
    assert runtime.status()["key_derivations"] == 2  # never derived again
    assert frame(1) not in wire.frames[b_addr]


async def test_an_expired_key_is_never_derived(world):
    _wire, nodes, _clients = await build(world, 1, 1, now=NOW)
    runtime = nodes[0].networks[world.chain.network_id]
    secret = os.urandom(32)
    payload = {"key_id": 50, "label": "", "secret": b64(secret), "expires": NOW + 10}
    await world.chain.append(Kind.KEY_ADD, payload, world.owner_signer)
    runtime.apply_state(world.chain.state, NOW)  # usable when the state was applied
    token = AccessToken(world.chain.network_id, 50, secret, ("10.0.0.1:4799",))
    client = ClientCore(token, 1, sender_id=50)
    derivations = runtime.status()["key_derivations"]
    nodes[0].datagram(client.control("hello", NOW + 11), ("192.168.9.9", 5000), NOW + 11)
    assert runtime.status()["key_derivations"] == derivations
    assert runtime.drops["revoked_key"] == 1 and 50 not in runtime.openers
