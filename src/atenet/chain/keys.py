"""Identities and key wrapping for chains.

Every writer of a chain has an Ed25519 signing key; every reader of a chain's secrets has an
X25519 "box" key. A network's payloads are encrypted with a random 32-byte *data key*, which the
genesis event carries wrapped once for the owner and once for the node authority: only those two
(and the nodes holding the authority's box key) can read settings, access-key secrets and routes.

Wrapping is ECIES-style: a fresh X25519 key pair per wrap, HKDF-SHA256 over the shared secret
(bound to both public keys), AES-256-GCM over the data key. A fresh ephemeral key per wrap means
the fixed all-zero nonce is never reused under one key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atenet.errors import AtenetError
from atenet.paths import write_private

CERT_LEN = 128
_CERT_CONTEXT = b"atenet/v1 node certificate"
_WRAP_INFO = b"atenet/v1 data key wrap"
_ZERO_NONCE = bytes(12)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    # public_bytes_raw, not public_bytes(Encoding.Raw, ...): importing the serialization
    # module costs ~10 ms on every `tok` start.
    return key.public_bytes_raw()


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public``'s Ed25519 signature over ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def short_id(public: bytes) -> str:
    """A short, stable, printable name for a public key (16 hex digits of its SHA-256)."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass
class Identity:
    """A signing key plus a box key: what an owner or the node authority holds."""

    sign: Ed25519PrivateKey
    box: X25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def sign_public(self) -> bytes:
        return raw_public(self.sign.public_key())

    @property
    def box_public(self) -> bytes:
        return raw_public(self.box.public_key())

    @property
    def id(self) -> str:
        return short_id(self.sign_public)

    def to_json(self) -> dict[str, str]:
        return {
            "sign": b64(self.sign.private_bytes_raw()),
            "box": b64(self.box.private_bytes_raw()),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Identity:
        return cls(
            Ed25519PrivateKey.from_private_bytes(unb64(data["sign"])),
            X25519PrivateKey.from_private_bytes(unb64(data["box"])),
        )

    def save(self, path: Path, **extra: object) -> None:
        """Write the private keys to ``path`` with mode 0600."""
        write_private(path, json.dumps({**self.to_json(), **extra}, indent=2).encode())

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise AtenetError(f"cannot read key file {path}: {exc}") from None


def certify_node(authority: Ed25519PrivateKey, node_public: bytes) -> bytes:
    """The node authority's certificate for a node key: authority pub || node pub || signature."""
    signature = authority.sign(_CERT_CONTEXT + node_public)
    return raw_public(authority.public_key()) + node_public + signature


def parse_cert(cert: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a certificate into (authority public, node public, signature); no verification."""
    if len(cert) != CERT_LEN:
        raise ValueError(f"node certificate must be {CERT_LEN} bytes, got {len(cert)}")
    return cert[:32], cert[32:64], cert[64:]


def cert_valid(cert: bytes, authority_public: bytes, node_public: bytes) -> bool:
    """True when ``cert`` says ``authority_public`` vouches for ``node_public``."""
    try:
        auth, node, signature = parse_cert(cert)
    except ValueError:
        return False
    return (
        auth == authority_public
        and node == node_public
        and verify_signature(auth, signature, _CERT_CONTEXT + node)
    )


def _wrap_key(shared: bytes, eph_public: bytes, recipient_public: bytes) -> AESGCM:
    kdf = HKDF(
        algorithm=SHA256(), length=32, salt=None, info=_WRAP_INFO + eph_public + recipient_public
    )
    return AESGCM(kdf.derive(shared))


def wrap(data_key: bytes, recipient_box_public: bytes) -> bytes:
    """Encrypt ``data_key`` so only the holder of the X25519 private key can read it."""
    eph = X25519PrivateKey.generate()
    eph_public = raw_public(eph.public_key())
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_box_public))
    return eph_public + _wrap_key(shared, eph_public, recipient_box_public).encrypt(
        _ZERO_NONCE, data_key, None
    )


def unwrap(wrapped: bytes, box: X25519PrivateKey) -> bytes | None:
    """The data key, or None when ``wrapped`` was not made for ``box``."""
    if len(wrapped) < 32 + 16:
        return None
    eph_public = wrapped[:32]
    mine = raw_public(box.public_key())
    try:
        shared = box.exchange(X25519PublicKey.from_public_bytes(eph_public))
        return _wrap_key(shared, eph_public, mine).decrypt(_ZERO_NONCE, wrapped[32:], None)
    except (InvalidTag, ValueError):
        return None


def new_secret() -> bytes:
    return os.urandom(32)
