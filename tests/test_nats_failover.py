"""Losing a chain stream's leader (SIGKILL) in the middle of a stream of appends loses nothing,
forks nothing, and a subscriber sees every event exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from atenet.chain.nats_store import CHAIN_STREAM_PREFIX, STALL_AFTER, NatsStore
from atenet.errors import StoreUnavailable
from tests.support.nats_cluster import NatsCluster

EVENTS = 300
KILL_AT = 100


def blob(seq: int) -> bytes:
    return b"event-%04d" % seq


async def test_killing_the_stream_leader_loses_and_duplicates_nothing(
    fresh_nats_cluster: NatsCluster,
) -> None:
    cluster = fresh_nats_cluster
    net = os.urandom(16)
    stream = CHAIN_STREAM_PREFIX + net.hex()
    acked: list[int] = []
    unavailable = 0

    async with NatsStore(cluster.url) as writer:
        assert writer.replicas == 3
        await writer.append(net, 1, blob(1))
        acked.append(1)
        leader = await asyncio.to_thread(cluster.stream_leader, stream)
        assert leader is not None, "the chain's stream has no leader"
        # The subscriber knows only the server about to die: it has to fail over to servers
        # the cluster announced, and to a new consumer on the new leader.
        reader = NatsStore(f"nats://127.0.0.1:{cluster.servers[leader].client_port}")
        await reader.connect()

        async def subscriber() -> list[tuple[int, bytes]]:
            got = []
            async for item in reader.subscribe(net):
                got.append(item)
                if len(got) == EVENTS:
                    break
            return got

        received = asyncio.create_task(subscriber())

        killed = None
        outage_started = time.monotonic()
        outage = 0.0
        seq = 2
        while seq <= EVENTS:
            if seq == KILL_AT and killed is None:
                killed = await asyncio.to_thread(cluster.stream_leader, stream)
                assert killed == leader, "the leader moved before the kill"
                cluster.kill(killed, signal.SIGKILL)
                outage_started = time.monotonic()
            try:
                assert await writer.append(net, seq, blob(seq)) == seq
            except StoreUnavailable:
                unavailable += 1  # still electing after retry_for: keep trying the same append
                continue
            if seq == KILL_AT:
                outage = time.monotonic() - outage_started
            acked.append(seq)
            seq += 1

        try:
            events = await asyncio.wait_for(received, 30)
        finally:
            await reader.close()
        assert events == [(s, blob(s)) for s in range(1, EVENTS + 1)]

    assert killed is not None
    assert acked == list(range(1, EVENTS + 1))
    print(f"leader n{killed + 1} killed; appends resumed after {outage:.1f} s")

    # The killed server comes back, catches up, and the chain reads the same through it.
    await asyncio.to_thread(cluster.restart, killed)
    via_restarted = f"nats://127.0.0.1:{cluster.servers[killed].client_port}"
    async with NatsStore(via_restarted) as store:
        assert await store.head(net) == EVENTS
        chain = [item async for item in store.read(net)]
    assert chain == [(s, blob(s)) for s in acked]
    assert unavailable == 0


async def test_subscription_outlives_a_full_outage_and_appends_report_it(
    fresh_nats_server: NatsCluster,
) -> None:
    server = fresh_nats_server
    net = os.urandom(16)
    async with NatsStore(server.url, retry_for=1.0) as store:
        for seq in range(1, 4):
            await store.append(net, seq, blob(seq))
        sub = store.subscribe(net)
        received = asyncio.create_task(take_events(sub, 6))
        await asyncio.sleep(0.2)

        server.kill(0, signal.SIGKILL)
        with pytest.raises(StoreUnavailable) as err:
            await store.append(net, 4, blob(4))
        assert server.url in str(err.value)
        await asyncio.sleep(STALL_AFTER)  # long enough for the subscription to notice

        await asyncio.to_thread(server.restart, 0)
        for seq in range(4, 7):
            await store.append(net, seq, blob(seq))
        assert await asyncio.wait_for(received, 20) == [(s, blob(s)) for s in range(1, 7)]
        await sub.aclose()


async def take_events(it: AsyncIterator[tuple[int, bytes]], n: int) -> list[tuple[int, bytes]]:
    out = []
    async for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out
