"""Helpers for chain tests: a deployment + owner + network in a store, and a tampering copier."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atenet.chain.event import Kind
from atenet.chain.keys import Identity, b64, certify_node, raw_public
from atenet.chain.log import Chain, Signer, create_network
from atenet.chain.store import ChainStore
from atenet.deployment import Deployment, NodeKey

if TYPE_CHECKING:
    from atenet.node.daemon import NodeDaemon


@dataclass
class World:
    """An owner, a node authority with two certified nodes, and one network."""

    store: ChainStore
    owner: Identity
    authority: Identity
    deployment: Deployment
    chain: Chain
    node_a: Signer
    node_b: Signer

    @property
    def owner_signer(self) -> Signer:
        return Signer(self.owner.sign)

    def reader(self, store: ChainStore | None = None) -> Chain:
        """A fresh authority-side view of the network (as a node reads it)."""
        return Chain(store or self.store, self.chain.network_id, [self.authority.box])


def new_node(authority: Identity) -> Signer:
    key = Ed25519PrivateKey.generate()
    return Signer(key, certify_node(authority.sign, raw_public(key.public_key())))


async def make_world(store: ChainStore, name: str = "office") -> World:
    owner = Identity.generate()
    authority = Identity.generate()
    deployment = Deployment(authority.sign_public, authority.box_public, store.url)
    chain = await create_network(
        store, owner, deployment, name=name, cidr="10.9.8.0/24", cidr6="fd00:1:2:3::/64", mtu=1400
    )
    return World(
        store, owner, authority, deployment, chain, new_node(authority), new_node(authority)
    )


async def copy_chain(
    src: ChainStore,
    dst: ChainStore,
    network_id: bytes,
    edit: Callable[[list[bytes]], list[bytes]] = lambda blobs: blobs,
) -> None:
    """Copy a chain's blobs into another store after ``edit`` — what a tampered store holds."""
    blobs = [blob async for _seq, blob in src.read(network_id)]
    for seq, blob in enumerate(edit(blobs), start=1):
        await dst.append(network_id, seq, blob)


@asynccontextmanager
async def serving_node(
    tmp_path: Path, key_ids: tuple[int, ...], revoked: tuple[int, ...] = (), name: str = "office"
) -> AsyncIterator[tuple[NodeDaemon, World, dict[int, bytes]]]:
    """A real node daemon on 127.0.0.1 (any free UDP port) serving one network with access keys
    ``key_ids`` (``revoked`` among them revoked); yields (daemon, world, secrets by key id)."""
    from atenet.chain.sqlite_store import SqliteStore
    from atenet.node.daemon import NodeDaemon

    store = SqliteStore(f"sqlite://{tmp_path / 'c.sqlite'}")
    await store.connect()
    world = await make_world(store, name)
    secrets = {}
    for key_id in key_ids:
        secrets[key_id] = os.urandom(32)
        payload = {"key_id": key_id, "label": "", "secret": b64(secrets[key_id]), "expires": None}
        await world.chain.append(Kind.KEY_ADD, payload, world.owner_signer)
    for key_id in revoked:
        await world.chain.append(Kind.KEY_REVOKE, {"key_id": key_id}, world.owner_signer)
    daemon = NodeDaemon(
        store, NodeKey(world.node_a.key, world.node_a.cert), world.authority,
        listen="127.0.0.1", udp_port=0,
    )  # fmt: skip
    await daemon.start()
    try:
        yield daemon, world, secrets
    finally:
        await daemon.stop()
        await store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A :class:`World` in a fresh SQLite store under ``tmp_path``, closed afterwards."""
    from atenet.chain.sqlite_store import SqliteStore

    store = SqliteStore(f"sqlite://{tmp_path / 'c.sqlite'}")
    await store.connect()
    try:
        yield await make_world(store)
    finally:
        await store.close()
