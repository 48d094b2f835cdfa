"""Compare-and-set of the store's meta records, on every backend (a real SQLite file and a real
NATS JetStream cluster): several nodes rewrite the deployment's "nodes" record at once, and none
may lose another's entry."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

from atenet.chain.store import ChainStore, open_store
from tests.test_store import store, store_url  # noqa: F401 - fixtures, one per backend


async def test_compare_and_set_writes_only_over_the_expected_value(store: ChainStore) -> None:  # noqa: F811
    name = "cas-" + os.urandom(4).hex()
    assert await store.compare_and_set_meta(name, None, b"a")
    assert not await store.compare_and_set_meta(name, None, b"b")  # exists already
    assert await store.get_meta(name) == b"a"
    assert not await store.compare_and_set_meta(name, b"stale", b"c")
    assert await store.compare_and_set_meta(name, b"a", b"d")
    assert await store.get_meta(name) == b"d"
    await store.put_meta(name, b"plain put still works")
    assert await store.get_meta(name) == b"plain put still works"


async def test_concurrent_updates_from_separate_connections_all_land(store_url: str) -> None:  # noqa: F811
    name = "nodes-" + os.urandom(4).hex()
    stores = [open_store(store_url) for _ in range(4)]
    for s in stores:
        await s.connect()
    try:

        def adder(key: str) -> Callable[[bytes | None], bytes]:
            def change(old: bytes | None) -> bytes:
                records = json.loads(old) if old else {}
                records[key] = True
                return json.dumps(records, sort_keys=True).encode()

            return change

        await asyncio.gather(
            *(
                s.update_meta(name, adder(f"w{i}-{j}"))
                for i, s in enumerate(stores)
                for j in range(5)
            )
        )
        final = json.loads(await stores[0].get_meta(name))
        assert sorted(final) == sorted(f"w{i}-{j}" for i in range(4) for j in range(5))
    finally:
        for s in stores:
            await s.close()
