"""A network's chain as its readers see it: replay, verified append, live follow.

:class:`Chain` joins a :class:`~atenet.chain.store.ChainStore` (bytes) and a
:class:`~atenet.chain.state.NetworkState` (trust + meaning). Every event read or written goes
through ``NetworkState.apply``, so callers only ever see verified events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from atenet.chain import event as ev
from atenet.chain.event import Event, Kind
from atenet.chain.keys import Identity, new_secret
from atenet.chain.state import NetworkState, build_genesis
from atenet.chain.store import ChainStore
from atenet.deployment import Deployment
from atenet.errors import AppendConflict, AtenetError, ChainInvalid, DecodeError, NotFound

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 200


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Signer:
    """Who writes: a signing key, plus the authority's certificate when it is a node key."""

    key: Ed25519PrivateKey
    cert: bytes = b""


class Chain:
    """One network's chain in one store, read with ``readers`` (X25519 box keys)."""

    def __init__(
        self, store: ChainStore, network_id: bytes, readers: list[X25519PrivateKey]
    ) -> None:
        self.store = store
        self.network_id = network_id
        self.state = NetworkState(network_id, list(readers))

    def _decode(self, seq: int, blob: bytes) -> Event:
        return ev.decode_stored(self.network_id, seq, blob)

    async def load(self) -> NetworkState:
        """Replay every event not yet applied; verify each. Returns the state."""
        async for seq, blob in self.store.read(self.network_id, self.state.seq + 1):
            self.state.apply(self._decode(seq, blob))
        if self.state.seq == 0:
            raise NotFound(f"no chain {self.network_id.hex()} in {self.store.url}")
        return self.state

    async def catch_up(self) -> None:
        async for seq, blob in self.store.read(self.network_id, self.state.seq + 1):
            self.state.apply(self._decode(seq, blob))

    async def append(
        self, kind: Kind, payload: dict[str, Any], signer: Signer
    ) -> tuple[Event, dict[str, Any]]:
        """Sign and append ``payload`` as the next event; retry after concurrent appends.

        The event is verified by the same rules a reader applies before it is sent, so a writer
        without the right cannot even produce it. Returns the stored event and its payload."""
        for attempt in range(APPEND_ATTEMPTS):
            await self.catch_up()
            blob = self.state.build(kind, payload, signer.key, now_ms(), signer.cert)
            event = ev.decode(blob)
            self.state.verify(event)
            try:
                await self.store.append(self.network_id, event.seq, blob)
            except AppendConflict:
                # Someone else won this position, or our own earlier try did (lost ack): the
                # catch_up at the top of the loop tells which, by applying what is there.
                await self.catch_up()
                if self.state.head == event.hash:
                    return event, payload
                # Jittered backoff so two busy writers cannot starve one another.
                await asyncio.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.1)))
                continue
            return event, self.state.apply(event)
        raise AtenetError(
            f"could not append to chain {self.network_id.hex()}: "
            f"{APPEND_ATTEMPTS} concurrent writers won in a row"
        )

    async def follow(
        self, *, poll_latest: bool = False
    ) -> AsyncIterator[tuple[Event, dict[str, Any]]]:
        """Yield every new verified event, forever (replaying what is missing first).

        A tampered event stops the iterator with ChainInvalid; the state stays at the last good
        event. Store outages are ridden out by the store's subscribe()."""
        async for seq, blob in self.store.subscribe(self.network_id, self.state.seq + 1):
            if seq <= self.state.seq:
                continue
            event = self._decode(seq, blob)
            payload = self.state.apply(event)
            yield event, payload

    async def put_latest(self, key: str, payload: dict[str, Any], signer: Signer) -> None:
        """Write a bounded side record (diagnostics, liveness): the latest per ``key`` only."""
        blob = self.state.build(Kind.DIAG, payload, signer.key, now_ms(), signer.cert, latest=True)
        self.state.apply_latest(ev.decode(blob))
        await self.store.put_latest(self.network_id, key, blob)

    async def load_latest(self) -> dict[str, dict[str, Any]]:
        """Read and verify every latest record; records that fail verification are skipped
        (logged), since they carry no configuration."""
        for key, blob in (await self.store.get_latest(self.network_id)).items():
            try:
                self.state.apply_latest(ev.decode(blob))
            except (DecodeError, ChainInvalid) as exc:
                log.warning("ignoring latest record %s of %s: %s", key, self.network_id.hex(), exc)
        return self.state.diagnostics


async def create_network(
    store: ChainStore,
    owner: Identity,
    deployment: Deployment,
    *,
    name: str,
    cidr: str,
    cidr6: str,
    mtu: int,
) -> Chain:
    """Start a new chain: genesis (keys) then settings. Returns the loaded chain."""
    network_id = os.urandom(16)
    data_key = new_secret()
    genesis = build_genesis(
        network_id,
        owner.sign,
        owner.box_public,
        deployment.authority_sign,
        deployment.authority_box,
        data_key,
        now_ms(),
    )
    await store.append(network_id, 1, genesis)
    chain = Chain(store, network_id, [owner.box])
    await chain.load()
    await chain.append(
        Kind.SETTINGS, {"name": name, "cidr": cidr, "cidr6": cidr6, "mtu": mtu}, Signer(owner.sign)
    )
    return chain


async def first_event(store: ChainStore, network_id: bytes) -> Event | None:
    """The genesis of a chain, decoded but not verified (for quick ownership filters)."""
    async for _seq, blob in store.read(network_id, 1):
        try:
            return ev.decode(blob)
        except DecodeError:
            return None
    return None
