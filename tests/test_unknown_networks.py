"""Random network ids cost a node bounded memory, bounded store reads and no log flood (issue 9,
item 2): the sans-I/O gatekeeper alone, then a real node fed 100,000 random ids, then a real
node whose NATS server was killed."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path

import pytest

from atenet.chain.nats_store import NatsStore
from atenet.deployment import NodeKey
from atenet.node.daemon import NodeDaemon
from atenet.node.lookups import UnknownNetworks
from atenet.overlay.seal import PacketKey, Sealer
from tests.support.chains import make_world, serving_node
from tests.support.nats_cluster import NatsCluster

RSS_BOUND = 8 * 1024 * 1024
"""RSS growth allowed for 100,000 random ids (measured: 0.3 MB; before the fix +29 MB here, with
2,869 lookup tasks at once and 100,000 cache entries)."""


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def junk_packet() -> bytes:
    """A well-formed sealed packet; its first 16 bytes (the network id) get replaced."""
    return bytes(Sealer(os.urandom(16), PacketKey(os.urandom(32), 1), 7, 1).seal(b"x" * 60))


def test_the_negative_cache_is_an_lru_that_never_exceeds_its_capacity() -> None:
    gate = UnknownNetworks(capacity=1000, ttl=10.0, rate=1e12, burst=10**9, in_flight=10**9)
    now = 100.0
    for i in range(100_000):
        ident = i.to_bytes(16, "big")
        assert gate.admit(ident, now)
        gate.finished(ident, "unknown", now)
        assert len(gate) <= 1000
    assert gate.evicted == 99_000
    last = (99_999).to_bytes(16, "big")
    assert not gate.admit(last, now + 5)  # remembered...
    assert gate.drops["cached_unknown"] == 1
    assert gate.admit(last, now + 10.5)  # ...until its ttl ran out


def test_lookups_are_rate_limited_and_store_trouble_is_one_short_negative_state() -> None:
    gate = UnknownNetworks(rate=10.0, burst=20, in_flight=5, unavailable_ttl=5.0)
    ids = [os.urandom(16) for _ in range(100)]
    admitted = [i for i in ids if gate.admit(i, 0.0)]
    assert len(admitted) == 5 and gate.drops["lookups_in_flight"] == 95
    for i in admitted:
        gate.finished(i, "unknown", 0.0)
    started = 0
    for i in ids:
        if gate.admit(i, 0.0):
            started += 1
            gate.finished(i, "unknown", 0.0)
    assert started == 15  # the rest of the burst of 20 (5 were already spent)
    assert gate.drops["lookup_rate"] > 0
    # One failed read because the store was down: no lookup starts for 5 s, for any id.
    fresh = os.urandom(16)
    assert gate.admit(fresh, 100.0)
    gate.finished(fresh, "unavailable", 100.0)
    assert not any(gate.admit(os.urandom(16), 103.0) for _ in range(50))
    assert gate.drops["store_unavailable"] == 50
    assert gate.admit(os.urandom(16), 105.5)
    # Refusals are summarised: one line now, then none until the interval has passed.
    line = gate.summary(105.5)
    assert line is not None and "store_unavailable 50" in line
    assert gate.summary(106.0) is None
    assert len(gate) <= gate.capacity


async def test_100k_random_network_ids_keep_memory_and_lookups_bounded(tmp_path: Path) -> None:
    async with serving_node(tmp_path, (1,)) as (daemon, world, _secrets):
        template = junk_packet()
        addr = ("127.0.0.1", 40000)
        base_tasks = len(daemon._tasks)
        gc.collect()
        before = rss()
        most_tasks = 0
        for _ in range(200):
            now = time.time()
            for _ in range(500):
                daemon.core.datagram(os.urandom(16) + template[16:], addr, now)
            daemon.handle_events()
            await asyncio.sleep(0.005)  # lookups run meanwhile
            most_tasks = max(most_tasks, len(daemon._tasks) - base_tasks)
        for _ in range(500):  # let the lookups still running finish
            if not daemon._loading:
                break
            await asyncio.sleep(0.01)
        gc.collect()
        growth = rss() - before
        lookups = daemon.unknown.counters()
        assert daemon.core.drops["unknown_network"] == 100_000
        assert len(daemon.unknown) <= daemon.unknown.capacity
        assert most_tasks <= daemon.unknown.max_in_flight
        assert lookups["drops"]["lookup_rate"] + lookups["drops"]["lookups_in_flight"] > 90_000
        assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MB"
        # A real network still loads once the bucket has a token again.
        await asyncio.sleep(0.1)
        assert await daemon.ensure_network(world.chain.network_id) is not None


@pytest.mark.timeout(120)
async def test_with_nats_down_random_ids_hold_no_tasks_and_log_no_line_each(
    tmp_path: Path, fresh_nats_server: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    store = NatsStore(fresh_nats_server.url)
    await store.connect()
    world = await make_world(store)
    daemon = NodeDaemon(
        store, NodeKey(world.node_a.key, world.node_a.cert), world.authority,
        listen="127.0.0.1", udp_port=0,
    )  # fmt: skip
    await daemon.start()
    try:
        fresh_nats_server.kill(0)
        caplog.set_level(logging.INFO, logger="atenet")
        template = junk_packet()
        base_tasks = len(daemon._tasks)
        most_tasks = 0
        for _ in range(40):  # 4 s of 500 random ids every 0.1 s
            now = time.time()
            for _ in range(500):
                daemon.core.datagram(os.urandom(16) + template[16:], ("127.0.0.1", 40001), now)
            daemon.handle_events()
            await asyncio.sleep(0.1)
            most_tasks = max(most_tasks, len(daemon._tasks) - base_tasks)
        per_id = [r for r in caplog.records if "cannot load" in r.getMessage()]
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not per_id
        assert len(warnings) <= 2, [r.getMessage() for r in warnings]
        assert most_tasks <= daemon.unknown.max_in_flight
        drops = daemon.unknown.counters()["drops"]
        assert sum(drops.values()) > 19_000
    finally:
        await daemon.stop()
        await store.close()


def test_a_store_outage_is_one_warning_per_interval() -> None:
    gate = UnknownNetworks(summary_interval=60.0)
    assert gate.warn_store(10.0)
    assert not any(gate.warn_store(10.0 + t) for t in range(1, 60))
    assert gate.warn_store(70.5)
