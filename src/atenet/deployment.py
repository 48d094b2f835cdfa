"""A deployment: the node authority, this host's node key, and the owner's keys for `tok`.

``atenet init`` creates, under the config dir (``$ATENET_HOME/config`` or the XDG one):

* ``authority.key`` (0600): the node authority's signing and box keys. Every node of the
  deployment holds it (copy it to another server, then run ``atenet init`` there) because nodes
  must read the networks' data keys, which are wrapped for the authority.
* ``node.key`` (0600): this node's own signing key and the authority's certificate for it; the
  node signs its membership records with it.
* ``deployment.json``: the public record tok needs to create networks for this deployment (the
  authority's public keys and the store URL). It is also written to the store's meta table, so a
  `tok` on another machine can fetch it (and pins it on first use).

``tok`` keeps the owner's keys in ``tok/owner.key`` (0600), created on first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atenet.chain.keys import Identity, b64, certify_node, raw_public, short_id, unb64
from atenet.errors import AtenetError
from atenet.paths import config_dir, write_private

if TYPE_CHECKING:
    from atenet.chain.store import ChainStore


class NoDeployment(AtenetError):
    """No deployment has been initialised on this host."""


@dataclass(frozen=True)
class Deployment:
    """The public record of a deployment."""

    authority_sign: bytes
    authority_box: bytes
    store: str

    @property
    def id(self) -> str:
        return short_id(self.authority_sign)

    def to_json(self) -> dict[str, str]:
        return {
            "authority_sign": b64(self.authority_sign),
            "authority_box": b64(self.authority_box),
            "store": self.store,
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Deployment:
        return cls(unb64(data["authority_sign"]), unb64(data["authority_box"]), data["store"])

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Deployment:
        try:
            return cls.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # deep nesting
            raise AtenetError(f"deployment record in {where} is damaged: {exc}") from None


@dataclass
class NodeKey:
    """This host's node identity: its signing key and the authority's certificate for it."""

    sign: Ed25519PrivateKey
    cert: bytes

    @property
    def public(self) -> bytes:
        return raw_public(self.sign.public_key())

    @property
    def node_id(self) -> str:
        return short_id(self.public)


def authority_path() -> Path:
    return config_dir() / "authority.key"


def node_key_path() -> Path:
    return config_dir() / "node.key"


def deployment_path() -> Path:
    return config_dir() / "deployment.json"


def owner_key_path() -> Path:
    return config_dir() / "tok" / "owner.key"


def init_deployment(store_url: str) -> tuple[Deployment, bool]:
    """Create (or complete) this host's deployment files; return the record and whether any
    file was created. Existing keys are never replaced."""
    created = False
    apath = authority_path()
    if apath.exists():
        authority = Identity.load(apath)
    else:
        authority = Identity.generate()
        authority.save(apath)
        created = True
    npath = node_key_path()
    if not npath.exists():
        node_sign = Ed25519PrivateKey.generate()
        cert = certify_node(authority.sign, raw_public(node_sign.public_key()))
        write_private(
            npath,
            json.dumps(
                {"sign": b64(node_sign.private_bytes_raw()), "cert": b64(cert)}, indent=2
            ).encode(),
        )
        created = True
    dpath = deployment_path()
    record = Deployment(authority.sign_public, authority.box_public, store_url)
    if not dpath.exists() or Deployment.decode(dpath.read_bytes(), str(dpath)) != record:
        dpath.write_bytes(record.encode())
        created = True
    return record, created


def load_deployment() -> Deployment:
    path = deployment_path()
    if not path.exists():
        raise NoDeployment(f"no deployment on this host ({path} missing): run `atenet init` first")
    return Deployment.decode(path.read_bytes(), str(path))


def load_authority() -> Identity:
    path = authority_path()
    if not path.exists():
        raise NoDeployment(
            f"no node authority key ({path} missing): run `atenet init`, or copy authority.key "
            "from a server of this deployment"
        )
    return Identity.load(path)


def load_node_key() -> NodeKey:
    path = node_key_path()
    if not path.exists():
        raise NoDeployment(f"no node key ({path} missing): run `atenet init` first")
    try:
        data = json.loads(path.read_text())
        return NodeKey(
            Ed25519PrivateKey.from_private_bytes(unb64(data["sign"])), unb64(data["cert"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise AtenetError(f"node key file {path} is damaged: {exc}") from None


def load_or_create_owner() -> Identity:
    """The owner identity tok signs with; created (mode 0600) on first use."""
    path = owner_key_path()
    if path.exists():
        return Identity.load(path)
    owner = Identity.generate()
    owner.save(path)
    return owner


# --------------------------------------------------------------------------- published nodes

#: The store's meta record listing the deployment's running nodes: ``{node_id: {"endpoints":
#: [HOST:PORT, ...], "time": unix seconds}}``. `tok key export` names these endpoints in tokens
#: when the network has no member node yet.
NODES_RECORD = "nodes"
#: A running node rewrites its entry this often (seconds) ...
NODE_REFRESH = 60.0
#: ... and an entry older than this (seconds) belongs to a node that is gone: readers skip it and
#: the next writer drops it. Five refreshes, so a store outage of a few minutes drops nothing.
NODE_RECORD_MAX_AGE = 300.0


def fresh_nodes(raw: bytes | None, now: float) -> dict[str, dict[str, Any]]:
    """The entries of a "nodes" record that are well-formed and younger than
    :data:`NODE_RECORD_MAX_AGE` (a damaged record reads as empty: nodes rewrite it)."""
    try:
        records = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):  # deep nesting raises RecursionError
        return {}
    if not isinstance(records, dict):
        return {}
    fresh: dict[str, dict[str, Any]] = {}
    for node_id, entry in records.items():
        if not isinstance(entry, dict):
            continue
        when, endpoints = entry.get("time"), entry.get("endpoints")
        if not isinstance(when, int | float) or not isinstance(endpoints, list):
            continue
        if now - when <= NODE_RECORD_MAX_AGE and all(isinstance(e, str) for e in endpoints):
            fresh[str(node_id)] = {"endpoints": endpoints, "time": float(when)}
    return fresh


def published_endpoints(raw: bytes | None, now: float) -> list[str]:
    """Endpoints of the live nodes in a "nodes" record, freshest node first, without repeats."""
    entries = sorted(fresh_nodes(raw, now).values(), key=lambda e: -e["time"])
    endpoints: list[str] = []
    for entry in entries:
        endpoints.extend(e for e in entry["endpoints"] if e not in endpoints)
    return endpoints


async def publish_node(store: ChainStore, node_id: str, endpoints: list[str], now: float) -> None:
    """Write (or refresh) this node's entry of the "nodes" record with compare-and-set, so nodes
    starting together never drop each other's entry; drop the entries of nodes gone quiet."""

    def change(old: bytes | None) -> bytes:
        records = fresh_nodes(old, now)
        records[node_id] = {"endpoints": list(endpoints), "time": now}
        return json.dumps(records, sort_keys=True).encode()

    await store.update_meta(NODES_RECORD, change)
