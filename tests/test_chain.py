"""The chain of trust: verified appends, replay, and every kind of tampering refused by name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.chain import event as ev
from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.chain.log import Chain, Signer
from atenet.chain.sqlite_store import SqliteStore
from atenet.chain.state import NetworkState
from atenet.errors import ChainInvalid, DecodeError, NotAllowed
from tests.support.chains import World, copy_chain, make_world


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteStore(f"sqlite://{tmp_path / 'chains.sqlite'}")
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def other_store(tmp_path: Path):
    s = SqliteStore(f"sqlite://{tmp_path / 'tampered.sqlite'}")
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


async def grow(w: World) -> None:
    """A realistic chain: keys, a revocation, a route, two members."""
    sign = w.owner_signer
    for i in range(1, 4):
        payload = {"key_id": i, "label": f"k{i}", "secret": b64(os.urandom(32)), "expires": None}
        await w.chain.append(Kind.KEY_ADD, payload, sign)
    await w.chain.append(Kind.KEY_REVOKE, {"key_id": 2}, sign)
    node_chain = w.reader()
    await node_chain.load()
    for node in (w.node_a, w.node_b):
        node_id = short_id(node.key.public_key().public_bytes_raw())
        await node_chain.append(
            Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": ["127.0.0.1:4799"]}, node
        )


async def test_replay_rebuilds_the_state(store):
    w = await make_world(store)
    await grow(w)
    fresh = w.reader()
    state = await fresh.load()
    assert state.settings.name == "office"
    assert state.settings.cidr == "10.9.8.0/24"
    assert sorted(state.keys) == [1, 2, 3]
    assert state.keys[2].revoked and not state.keys[1].revoked
    assert len(state.members) == 2
    assert state.seq == 8
    # The owner reads the same state through its own wrapped copy of the data key.
    owner_view = Chain(store, w.chain.network_id, [w.owner.box])
    assert (await owner_view.load()).keys[3].secret == state.keys[3].secret


async def test_a_stranger_cannot_read_or_write(store):
    from atenet.chain.keys import Identity

    w = await make_world(store)
    stranger = Chain(store, w.chain.network_id, [Identity.generate().box])
    with pytest.raises(NotAllowed, match="neither its owner nor its node authority"):
        await stranger.load()


async def test_writer_without_the_right_is_refused_before_append(store):
    w = await make_world(store)
    node_view = w.reader()
    await node_view.load()
    with pytest.raises(ChainInvalid, match="not by the owner"):
        await node_view.append(Kind.SETTINGS, {"name": "hijacked"}, w.node_a)
    assert await store.head(w.chain.network_id) == 2


def _flip(blobs: list[bytes], index: int, offset: int) -> list[bytes]:
    blob = bytearray(blobs[index])
    blob[offset % len(blob)] ^= 0x01
    return [*blobs[:index], bytes(blob), *blobs[index + 1 :]]


@pytest.mark.parametrize("offset", [5, 30, 70, 110, -70, -1], ids=lambda o: f"byte{o}")
async def test_flipped_byte_is_named(store, other_store, offset):
    w = await make_world(store)
    await grow(w)
    await copy_chain(store, other_store, w.chain.network_id, lambda b: _flip(b, 3, offset))
    with pytest.raises(ChainInvalid) as err:
        await w.reader(other_store).load()
    assert err.value.seq == 4


async def test_dropped_event_is_named(store, other_store):
    w = await make_world(store)
    await grow(w)
    await copy_chain(store, other_store, w.chain.network_id, lambda b: b[:4] + b[5:])
    with pytest.raises(ChainInvalid, match="event 5") as err:
        await w.reader(other_store).load()
    assert err.value.seq == 5


async def test_swapped_events_are_named(store, other_store):
    w = await make_world(store)
    await grow(w)
    await copy_chain(store, other_store, w.chain.network_id, lambda b: [*b[:3], b[4], b[3], *b[5:]])
    with pytest.raises(ChainInvalid) as err:
        await w.reader(other_store).load()
    assert err.value.seq == 4


async def test_event_from_another_chain_is_named(store, other_store):
    w = await make_world(store)
    await grow(w)
    w2 = await make_world(store, "other")
    await grow(w2)
    foreign = [blob async for _s, blob in store.read(w2.chain.network_id)]
    await copy_chain(store, other_store, w.chain.network_id, lambda b: [*b[:5], foreign[5], *b[6:]])
    with pytest.raises(ChainInvalid, match="another chain") as err:
        await w.reader(other_store).load()
    assert err.value.seq == 6


async def test_event_signed_by_a_disallowed_key_is_named(store):
    w = await make_world(store)
    node_view = w.reader()
    await node_view.load()
    # A node key builds a SETTINGS event (only the owner may) and a compromised store holds it.
    blob = node_view.state.build(
        Kind.SETTINGS, {"name": "hijacked"}, w.node_a.key, 1, w.node_a.cert
    )
    await store.append(w.chain.network_id, 3, blob)
    with pytest.raises(ChainInvalid, match="not by the owner") as err:
        await w.reader().load()
    assert err.value.seq == 3


async def test_uncertified_node_key_is_named(store):
    from atenet.chain.keys import Identity

    w = await make_world(store)
    rogue = Identity.generate()  # its own "authority": certifies itself
    from tests.support.chains import new_node

    node = new_node(rogue)
    view = w.reader()
    await view.load()
    node_id = short_id(node.key.public_key().public_bytes_raw())
    blob = view.state.build(
        Kind.MEMBER_JOIN, {"node_id": node_id, "endpoints": ["127.0.0.1:1"]}, node.key, 1, node.cert
    )
    await store.append(w.chain.network_id, 3, blob)
    with pytest.raises(ChainInvalid, match="did not certify") as err:
        await w.reader().load()
    assert err.value.seq == 3


async def test_membership_signed_by_another_node_is_named(store):
    w = await make_world(store)
    view = w.reader()
    await view.load()
    victim = short_id(w.node_b.key.public_key().public_bytes_raw())
    blob = view.state.build(Kind.MEMBER_LEAVE, {"node_id": victim}, w.node_a.key, 1, w.node_a.cert)
    await store.append(w.chain.network_id, 3, blob)
    with pytest.raises(ChainInvalid, match=f"record for node {victim} signed by node") as err:
        await w.reader().load()
    assert err.value.seq == 3


async def test_concurrent_appenders_in_one_process_never_fork(store):
    w = await make_world(store)
    writers = [w.reader() for _ in range(4)]
    for c in writers:
        await c.load()

    async def write(k: int, c: Chain, node: Signer, n: int) -> None:
        for i in range(n):
            host = 2 + k * n + i  # a distinct address and MAC per event: every one binds
            lease = {"mac": f"02:00:00:00:00:{host:02x}", "ip": f"10.9.8.{host}", "expires": 1e10}
            await c.append(Kind.LEASE, lease, node)

    await asyncio.gather(*(write(k, c, w.node_a, 25) for k, c in enumerate(writers)))
    state = await w.reader().load()
    assert state.seq == 2 + 100
    assert sorted(state.leases) == sorted(f"10.9.8.{h}" for h in range(2, 102))


async def test_latest_records_are_bounded_and_verified(store):
    w = await make_world(store)
    view = w.reader()
    await view.load()
    for i in range(20):
        await view.put_latest("node-a", {"ports": i}, w.node_a)
    fresh = w.reader()
    await fresh.load()
    diags = await fresh.load_latest()
    assert next(iter(diags.values()))["ports"] == 19
    assert len(await store.get_latest(w.chain.network_id)) == 1


# ------------------------------------------------------------------ decoder fuzzing


@given(st.binary(max_size=400))
@settings(max_examples=400, deadline=None)
def test_random_bytes_only_raise_decode_error(data):
    with contextlib.suppress(DecodeError):
        ev.decode(data)


_SAMPLE: list[bytes] = []


def _sample_event() -> bytes:
    if not _SAMPLE:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        header = ev.encode_unsigned(
            Kind.KEY_ADD,
            os.urandom(16),
            3,
            os.urandom(32),
            1,
            key.public_key().public_bytes_raw(),
            os.urandom(128),
        )
        _SAMPLE.append(ev.assemble(header, os.urandom(60), key.sign))
    return _SAMPLE[0]


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8), st.integers(0, 400)
)
@settings(max_examples=400, deadline=None)
def test_mutated_events_only_raise_decode_error(edits, cut):
    data = bytearray(_sample_event())
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    try:
        decoded = ev.decode(bytes(data[: len(data) - cut % 50]))
    except DecodeError:
        return
    assert decoded.raw == bytes(data[: len(data) - cut % 50])


# ------------------------------------------------------------------ across processes

FOLLOWER = """
import asyncio, sys, time
from pathlib import Path
from atenet.chain.keys import Identity
from atenet.chain.log import Chain
from atenet.chain.store import open_store

async def main():
    store = open_store(sys.argv[1])
    await store.connect()
    ident = Identity.load(Path(sys.argv[3]))
    chain = Chain(store, bytes.fromhex(sys.argv[2]), [ident.box])
    await chain.load()
    print("ready", flush=True)
    async for event, payload in chain.follow():
        if event.kind == 4:
            print("revoked", payload["key_id"], time.time(), flush=True)
            return

asyncio.run(main())
"""


async def revocation_reaches_another_process(store, tmp_path: Path) -> float:
    """Seconds between the owner's revoke append and a follower process seeing it."""
    w = await make_world(store)
    await grow(w)
    keyfile = tmp_path / "authority.key"
    w.authority.save(keyfile)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FOLLOWER,
        store.url,
        w.chain.network_id.hex(),
        str(keyfile),
        stdout=subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
        t0 = time.time()
        await w.chain.append(Kind.KEY_REVOKE, {"key_id": 3}, w.owner_signer)
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        fields = line.split()
        assert fields[:2] == [b"revoked", b"3"]
        return float(fields[2]) - t0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_revocation_reaches_another_process_within_1s_sqlite(store, tmp_path):
    assert await revocation_reaches_another_process(store, tmp_path) < 1.0


async def test_revocation_reaches_another_process_within_1s_nats(nats_cluster, tmp_path):
    from atenet.chain.nats_store import NatsStore

    store = NatsStore(nats_cluster.url)
    await store.connect()
    try:
        assert await revocation_reaches_another_process(store, tmp_path) < 1.0
    finally:
        await store.close()


WRITER = """
import asyncio, sys
from pathlib import Path
from atenet.chain.keys import Identity
from atenet.chain.log import Chain, Signer
from atenet.chain.store import open_store

async def main():
    store = open_store(sys.argv[1])
    await store.connect()
    ident = Identity.load(Path(sys.argv[3]))
    chain = Chain(store, bytes.fromhex(sys.argv[2]), [ident.box])
    await chain.load()
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[5])):
        lease = {"mac": f"02:00:00:{sys.argv[4]}:{i >> 8:02x}:{i & 255:02x}", "ip": "10.9.8.7",
                 "host": f"{sys.argv[4]}-{i}", "expires": 1e10}
        await chain.append(9, lease, Signer(ident.sign))
    await store.close()

asyncio.run(main())
"""


async def test_two_processes_append_500_each_to_one_sqlite_chain(store, tmp_path):
    w = await make_world(store)
    keyfile = tmp_path / "authority.key"
    w.authority.save(keyfile)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                store.url,
                w.chain.network_id.hex(),
                str(keyfile),
                name,
                "500",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for name in ("0a", "0b")
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        for p in procs:  # start both at once
            p.stdin.write(b"go\n")
            p.stdin.flush()
        for p in procs:
            assert await asyncio.to_thread(p.wait, 120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    state = await w.reader().load()  # verifies every hash link and signature
    assert state.seq == 1002
    replay = NetworkState(w.chain.network_id, [w.authority.box])
    hosts = set()
    async for _seq, blob in store.read(w.chain.network_id, 1):
        payload = replay.apply(ev.decode(blob))
        hosts.add(payload.get("host"))
    assert {f"{n}-{i}" for n in ("0a", "0b") for i in range(500)} <= hosts
