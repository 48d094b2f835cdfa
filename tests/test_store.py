"""The chain store contract, run against every backend: SQLite (a temp file) and NATS JetStream
(a real 3-server cluster on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atenet.chain.nats_store import STALL_AFTER, NatsStore
from atenet.chain.sqlite_store import SqliteStore
from atenet.chain.store import ChainStore, open_store
from atenet.errors import AppendConflict, StoreUnavailable
from tests.support.nats_cluster import NatsCluster, free_ports

BACKENDS = ["sqlite", "nats"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store' / 'chains.sqlite'}"
    cluster: NatsCluster = request.getfixturevalue("nats_cluster")
    return cluster.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ChainStore]:
    s = open_store(store_url)
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def net() -> bytes:
    """A fresh network id: tests sharing the session's NATS cluster never see each other."""
    return os.urandom(16)


async def take(it: AsyncIterator[tuple[int, bytes]], n: int, timeout: float = 10.0) -> list:
    """The first ``n`` items of ``it`` (fails the test if they do not come within ``timeout``)."""

    async def go() -> list:
        out = []
        async for item in it:
            out.append(item)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(go(), timeout)


async def read_all(store: ChainStore, net: bytes, from_seq: int = 1) -> list[tuple[int, bytes]]:
    return [item async for item in store.read(net, from_seq)]


def test_open_store_picks_backend_from_url(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite://{tmp_path}/x.sqlite"), SqliteStore)
    nats = open_store("nats://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(nats, NatsStore)
    assert nats.servers == ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]


async def test_append_then_read_and_head(store: ChainStore, net: bytes) -> None:
    assert await store.head(net) == 0
    assert await read_all(store, net) == []
    for i in range(1, 6):
        assert await store.append(net, i, b"event %d" % i) == i
    assert await store.head(net) == 5
    assert await read_all(store, net) == [(i, b"event %d" % i) for i in range(1, 6)]
    assert await read_all(store, net, from_seq=4) == [(4, b"event 4"), (5, b"event 5")]
    assert await read_all(store, net, from_seq=6) == []


async def test_stale_expected_seq_raises_conflict_with_real_head(
    store: ChainStore, net: bytes
) -> None:
    await store.append(net, 1, b"first")
    await store.append(net, 2, b"second")
    with pytest.raises(AppendConflict) as stale:
        await store.append(net, 2, b"someone else's second")
    assert stale.value.head == 2
    with pytest.raises(AppendConflict) as ahead:
        await store.append(net, 5, b"a gap")
    assert ahead.value.head == 2
    assert await read_all(store, net) == [(1, b"first"), (2, b"second")]


async def test_retried_append_is_stored_once(store: ChainStore, net: bytes) -> None:
    await store.append(net, 1, b"a")
    assert await store.append(net, 2, b"b") == 2
    # The acknowledgement of the first try was "lost": the writer sends the same append again.
    assert await store.append(net, 2, b"b") == 2
    assert await store.head(net) == 2
    assert await read_all(store, net) == [(1, b"a"), (2, b"b")]
    # The same bytes at a later position are a new event, not a duplicate.
    assert await store.append(net, 3, b"b") == 3
    assert await read_all(store, net, 3) == [(3, b"b")]


async def test_subscribe_replays_then_follows_live_appends(store: ChainStore, net: bytes) -> None:
    for i in range(1, 4):
        await store.append(net, i, b"old %d" % i)
    sub = store.subscribe(net)
    first = await take(sub, 3)
    assert first == [(i, b"old %d" % i) for i in range(1, 4)]

    async def append_later() -> None:
        await asyncio.sleep(0.1)
        for i in range(4, 7):
            await store.append(net, i, b"new %d" % i)

    writer = asyncio.create_task(append_later())
    assert await take(sub, 3) == [(i, b"new %d" % i) for i in range(4, 7)]
    await writer
    await sub.aclose()


async def test_subscribe_waits_for_a_chain_that_does_not_exist_yet(
    store: ChainStore, net: bytes
) -> None:
    got = asyncio.create_task(take(store.subscribe(net, from_seq=2), 2))
    await asyncio.sleep(0.3)
    for i in range(1, 4):
        await store.append(net, i, b"%d" % i)
    assert await got == [(2, b"2"), (3, b"3")]


async def test_latest_records_replace_each_other(store: ChainStore, net: bytes) -> None:
    other = os.urandom(16)
    assert await store.get_latest(net) == {}
    await store.put_latest(net, "node-a", b"a1")
    await store.put_latest(net, "node-b", b"b1")
    await store.put_latest(net, "node-a", b"a2")
    await store.put_latest(other, "node-a", b"other")
    await store.put_latest(net, "diag/ünïcode key.*", b"odd")
    assert await store.get_latest(net) == {
        "node-a": b"a2",
        "node-b": b"b1",
        "diag/ünïcode key.*": b"odd",
    }
    assert await store.get_latest(other) == {"node-a": b"other"}


async def test_meta_records(store: ChainStore) -> None:
    name = "deployment-" + os.urandom(4).hex()
    assert await store.get_meta(name) is None
    await store.put_meta(name, b"v1")
    await store.put_meta(name, b"v2")
    assert await store.get_meta(name) == b"v2"


async def test_list_chains_names_every_chain(store: ChainStore) -> None:
    nets = [os.urandom(16) for _ in range(3)]
    for n in nets:
        await store.append(n, 1, b"genesis")
    assert set(nets) <= set(await store.list_chains())


async def test_delete_chain_removes_events_and_latest(store: ChainStore, net: bytes) -> None:
    keep = os.urandom(16)
    for n in (net, keep):
        await store.append(n, 1, b"genesis")
        await store.put_latest(n, "k", b"v")
    await store.delete_chain(net)
    assert await store.head(net) == 0
    assert await read_all(store, net) == []
    assert await store.get_latest(net) == {}
    assert net not in await store.list_chains()
    assert await read_all(store, keep) == [(1, b"genesis")]
    assert await store.get_latest(keep) == {"k": b"v"}
    # A deleted network can start over from 1.
    assert await store.append(net, 1, b"reborn") == 1


async def test_unreachable_store_names_its_url(tmp_path: Path) -> None:
    sqlite_url = "sqlite:///proc/atenet-no-such-dir/chains.sqlite"
    with pytest.raises(StoreUnavailable) as err:
        await open_store(sqlite_url).connect()
    assert sqlite_url in str(err.value)

    (port,) = free_ports(1)
    nats_url = f"nats://127.0.0.1:{port}"
    store = NatsStore(nats_url, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        await store.head(os.urandom(16))
    assert time.monotonic() - started < 5
    assert nats_url in str(err.value)
    assert "\n" not in str(err.value)


async def test_sqlite_subscriber_sees_another_connections_append_quickly(tmp_path: Path) -> None:
    """Two store objects = two connections, as for two processes: no in-process wake-up."""
    url = f"sqlite://{tmp_path / 'chains.sqlite'}"
    net = os.urandom(16)
    async with open_store(url) as reader, open_store(url) as writer:
        await writer.append(net, 1, b"one")
        sub = reader.subscribe(net)
        assert await take(sub, 1) == [(1, b"one")]
        got = asyncio.create_task(take(sub, 1))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await writer.append(net, 2, b"two")
        assert await got == [(2, b"two")]
        assert time.monotonic() - started < 0.2
        await sub.aclose()


async def test_an_idle_sqlite_subscriber_does_not_query_while_the_files_stand_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each query is a hand-off to the store's thread and back (context switches, and jitter on
    the node's packet loop): an idle subscriber stats the files instead, and queries only when
    another connection's commit moved them (or after FULL_POLL, here pushed out of the way)."""
    from atenet.chain import sqlite_store

    monkeypatch.setattr(sqlite_store, "FULL_POLL", 3600.0)
    url = f"sqlite://{tmp_path / 'chains.sqlite'}"
    net = os.urandom(16)
    async with open_store(url) as reader, open_store(url) as writer:
        await writer.append(net, 1, b"one")
        queries = 0
        run = reader._run  # type: ignore[attr-defined]

        async def counted(*args: object) -> object:
            nonlocal queries
            queries += 1
            return await run(*args)

        monkeypatch.setattr(reader, "_run", counted)
        sub = reader.subscribe(net)
        assert await take(sub, 1) == [(1, b"one")]
        got = asyncio.create_task(take(sub, 1))
        await asyncio.sleep(1.0)  # 20 poll intervals
        assert queries <= 3, f"{queries} queries in 1 s with nothing appended"
        await writer.append(net, 2, b"two")  # another connection: only the files tell
        assert await asyncio.wait_for(got, 10) == [(2, b"two")]
        await sub.aclose()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from atenet.chain.store import open_store
    from atenet.errors import AppendConflict

    async def main(url, net, name, count):
        conflicts = 0
        async with open_store(url) as store:
            await store.head(net)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # start together
            for i in range(count):
                blob = f"{name}-{i}".encode()
                while True:
                    head = await store.head(net)
                    try:
                        await store.append(net, head + 1, blob)
                        break
                    except AppendConflict:
                        conflicts += 1
        print("conflicts", conflicts, flush=True)

    asyncio.run(main(sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
    """
)


async def run_two_writers(url: str, net: bytes, count: int) -> int:
    """Two OS processes append ``count`` blobs each to one chain at the same time; returns how
    many conflicts they met (and retried)."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for name in ("w1", "w2"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, url, net.hex(), name, str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 30)
            assert line.strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        conflicts = 0
        for p in procs:
            out, _ = await asyncio.wait_for(asyncio.to_thread(p.communicate), 120)
            assert p.returncode == 0
            conflicts += int(out.split()[-1])
        return conflicts
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None and not f.closed:
                    f.close()


async def two_writers_on_one_chain(url: str, count: int) -> int:
    """Create a chain (so both writers start on a settled stream), let two processes append
    ``count`` blobs each, and check the chain did not fork. Returns the conflicts retried."""
    net = os.urandom(16)
    async with open_store(url) as store:
        await store.append(net, 1, b"genesis")
    conflicts = await run_two_writers(url, net, count)
    async with open_store(url) as store:
        events = await read_all(store, net)
    assert [seq for seq, _ in events] == list(range(1, 2 * count + 2))
    assert events[0] == (1, b"genesis")
    blobs = sorted(blob for _, blob in events[1:])
    expected = sorted(f"{w}-{i}".encode() for w in ("w1", "w2") for i in range(count))
    assert blobs == expected
    # Each writer's own blobs stay in the order it wrote them.
    for w in ("w1", "w2"):
        mine = [int(b.split(b"-")[1]) for _, b in events if b.startswith(w.encode())]
        assert mine == list(range(count))
    return conflicts


async def test_two_processes_appending_to_one_sqlite_chain_never_fork(tmp_path: Path) -> None:
    conflicts = await two_writers_on_one_chain(f"sqlite://{tmp_path / 'chains.sqlite'}", 500)
    print(f"sqlite: 2 x 500 appends, {conflicts} conflicts retried")


async def test_two_processes_appending_to_one_nats_chain_never_fork(
    nats_cluster: NatsCluster,
) -> None:
    conflicts = await two_writers_on_one_chain(nats_cluster.url, 100)
    print(f"nats: 2 x 100 appends, {conflicts} conflicts retried")


async def test_closing_the_store_ends_its_subscriptions(store_url: str, net: bytes) -> None:
    store = open_store(store_url)
    await store.append(net, 1, b"one")
    sub = store.subscribe(net)
    assert await take(sub, 1) == [(1, b"one")]
    pending = asyncio.create_task(take(sub, 1))
    await asyncio.sleep(0.2)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(pending, STALL_AFTER + 2)
    with pytest.raises(StoreUnavailable):
        await store.head(net)
