"""Access tokens: one printable string that lets a host or browser join a network.

A token holds the network id, the access key's id and its 32-byte secret, and the node endpoints
to dial (``host:port``, in order of preference). It is shown once by ``tok key export`` and never
stored in clear by tok. Layout before base64url (no padding), behind the prefix ``atn1.``::

    1   version (1)
    16  network id
    4   key id (u32, big-endian)
    32  secret
    1   endpoint count N
    N × (1 length L, L bytes "host:port" UTF-8)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from atenet.errors import AtenetError

PREFIX = "atn1."
_FIXED = struct.Struct(">B16sI32sB")


class BadToken(AtenetError):
    """A string that is not an access token."""


@dataclass(frozen=True)
class AccessToken:
    network_id: bytes
    key_id: int
    secret: bytes
    endpoints: tuple[str, ...] = ()

    def encode(self) -> str:
        parts = [_FIXED.pack(1, self.network_id, self.key_id, self.secret, len(self.endpoints))]
        for endpoint in self.endpoints:
            raw = endpoint.encode()
            if len(raw) > 255:
                raise ValueError(f"endpoint too long: {endpoint!r}")
            parts.append(bytes([len(raw)]) + raw)
        return PREFIX + base64.urlsafe_b64encode(b"".join(parts)).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> AccessToken:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise BadToken(
                f"not an atenet access token (it should start with {PREFIX!r}): "
                "get one with `tok key export NETWORK`"
            )
        body = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise BadToken("access token is damaged (not base64url): copy it again") from None
        if len(raw) < _FIXED.size:
            raise BadToken("access token is truncated: copy it again, whole")
        version, network_id, key_id, secret, count = _FIXED.unpack_from(raw)
        if version != 1:
            raise BadToken(f"access token version {version} is not supported by this atenet")
        pos = _FIXED.size
        endpoints = []
        try:
            for _ in range(count):
                length = raw[pos]
                endpoints.append(raw[pos + 1 : pos + 1 + length].decode())
                if pos + 1 + length > len(raw):
                    raise IndexError
                pos += 1 + length
        except (IndexError, UnicodeDecodeError):
            raise BadToken("access token is truncated: copy it again, whole") from None
        if pos != len(raw):
            raise BadToken("access token has trailing bytes: copy it again, exactly")
        return cls(network_id, key_id, secret, tuple(endpoints))

    @property
    def network_hex(self) -> str:
        return self.network_id.hex()


HELLO_CONTEXT = "atenet/v1 ws hello|"


def hello_mac(auth_key: bytes, network_hex: str, key_id: int, when: int, nonce: str) -> str:
    """The HMAC a WebSocket hello (``/ws``, ``/mio``) carries: proves the client holds the
    access key without sending its secret."""
    message = f"{HELLO_CONTEXT}{network_hex}|{key_id}|{when}|{nonce}".encode()
    return hmac.new(auth_key, message, hashlib.sha256).hexdigest()


def hello(
    token: AccessToken, *, when: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """The first message of a ``/ws`` or ``/mio`` session for ``token`` (docs/websocket.md):
    time in ms and a fresh nonce, so the node can refuse a replayed hello."""
    from atenet.overlay.seal import PacketKey  # the key schedule lives with the sealing code

    nonce = nonce or os.urandom(16).hex()
    when = int(time.time() * 1000) if when is None else when
    auth = PacketKey(token.secret, token.key_id).auth_key
    network = token.network_id.hex()
    return {
        "op": "hello",
        "network": network,
        "key_id": token.key_id,
        "time": when,
        "nonce": nonce,
        "mac": hello_mac(auth, network, token.key_id, when, nonce),
    }
