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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atenet.chain.keys import Identity, b64, certify_node, raw_public, short_id, unb64
from atenet.errors import AtenetError
from atenet.paths import config_dir, write_private


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
