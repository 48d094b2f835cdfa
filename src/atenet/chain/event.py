"""The event: one signed entry of a chain, as bytes.

Layout (all integers big-endian; see docs/chain.md for the full table)::

    0   4   magic "ATEV"
    4   1   version (1)
    5   1   kind (Kind)
    6   16  network id
    22  8   seq: position in the chain, from 1 (0 for "latest" records kept beside the chain)
    30  32  prev: SHA-256 of the previous event's full bytes (zeros for seq 1 and seq 0)
    62  8   time: milliseconds since the Unix epoch, as the author saw it
    70  32  author: Ed25519 public key of the signer
    102 2   cert length C (0 or 128)
    104 C   cert: the node authority's certificate of the author (node-written events)
    .   4   body length B
    .   B   body: clear JSON for GENESIS; otherwise nonce(12) + AES-256-GCM(data key) of JSON,
            with every byte before the body as associated data
    .   64  Ed25519 signature over every byte before it

The hash of an event (what the next event's ``prev`` holds) covers the signature too, so
altering, dropping, reordering or splicing events breaks either the signature or the hash chain.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from atenet.errors import ChainInvalid, DecodeError

MAGIC = b"ATEV"
VERSION = 1
SIG_LEN = 64
MAX_EVENT = 1 << 20  # 1 MiB: far above any legitimate event, bounds what a decoder allocates

_HEAD = struct.Struct(">4sBB16sQ32sQ32sH")
_BODY_LEN = struct.Struct(">I")
ZERO_HASH = bytes(32)


class Kind(enum.IntEnum):
    """What an event says. The trust rules (atenet.chain.state) say who may write each."""

    GENESIS = 1  # owner: creates the chain, names owner and node authority, wraps the data key
    SETTINGS = 2  # owner: name, CIDRs, MTU
    KEY_ADD = 3  # owner: a new access key (its secret inside the encrypted body)
    KEY_REVOKE = 4  # owner
    ROUTE_ADD = 5  # owner: a route to another network, with the access key to enter it
    ROUTE_REMOVE = 6  # owner
    MEMBER_JOIN = 7  # a node, about itself: its UDP endpoints
    MEMBER_LEAVE = 8  # a node, about itself
    LEASE = 9  # node authority or a certified node: a DHCP lease
    DELETED = 10  # owner: the network is deleted (tombstone)
    DIAG = 11  # a certified node: diagnostics, kept only as a "latest" record (seq 0)


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event. ``body`` is still encrypted (except for GENESIS)."""

    kind: int
    network_id: bytes
    seq: int
    prev: bytes
    time_ms: int
    author: bytes
    cert: bytes
    body: bytes
    signature: bytes
    raw: bytes  # the exact bytes decoded; hash and signature are checked over these

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def signed_part(self) -> bytes:
        return self.raw[:-SIG_LEN]

    @property
    def aad(self) -> bytes:
        """Associated data of the encrypted body: every byte before the body."""
        return self.raw[: len(self.raw) - SIG_LEN - len(self.body)]

    @property
    def kind_name(self) -> str:
        try:
            return Kind(self.kind).name.lower()
        except ValueError:
            return f"kind-{self.kind}"


def encode_unsigned(
    kind: int,
    network_id: bytes,
    seq: int,
    prev: bytes,
    time_ms: int,
    author: bytes,
    cert: bytes,
) -> bytes:
    """The header up to (not including) the body length: the AEAD's associated data prefix."""
    if len(network_id) != 16 or len(prev) != 32 or len(author) != 32:
        raise ValueError("network id must be 16 bytes, prev 32 and author 32")
    return (
        _HEAD.pack(MAGIC, VERSION, kind, network_id, seq, prev, time_ms, author, len(cert)) + cert
    )


def assemble(header: bytes, body: bytes, signature_of: object) -> bytes:
    """header + body length + body, signed by ``signature_of(message) -> 64 bytes``."""
    message = header + _BODY_LEN.pack(len(body)) + body
    signature = signature_of(message)  # type: ignore[operator]
    return message + signature


def aad_for(header: bytes, body_len: int) -> bytes:
    """The associated data an encrypted body of ``body_len`` bytes is sealed with."""
    return header + _BODY_LEN.pack(body_len)


def decode(raw: bytes) -> Event:
    """Parse an event's bytes. Raises DecodeError (and only that) on any malformed input.

    Decoding checks structure only; signatures and trust are checked by atenet.chain.state."""
    raw = bytes(raw)
    if len(raw) > MAX_EVENT:
        raise DecodeError(f"event is {len(raw)} bytes, more than the {MAX_EVENT} allowed")
    if len(raw) < _HEAD.size + _BODY_LEN.size + SIG_LEN:
        raise DecodeError(f"event is {len(raw)} bytes, too short for a header")
    magic, version, kind, network_id, seq, prev, time_ms, author, cert_len = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise DecodeError("not an atenet event (bad magic)")
    if version != VERSION:
        raise DecodeError(f"unsupported event version {version}")
    pos = _HEAD.size
    if cert_len not in (0, 128):
        raise DecodeError(f"certificate length {cert_len} is neither 0 nor 128")
    if pos + cert_len + _BODY_LEN.size + SIG_LEN > len(raw):
        raise DecodeError("event truncated inside its certificate")
    cert = raw[pos : pos + cert_len]
    pos += cert_len
    (body_len,) = _BODY_LEN.unpack_from(raw, pos)
    pos += _BODY_LEN.size
    if pos + body_len + SIG_LEN != len(raw):
        raise DecodeError(
            f"body length {body_len} does not match the event size ({len(raw) - pos - SIG_LEN})"
        )
    body = raw[pos : pos + body_len]
    signature = raw[pos + body_len :]
    return Event(kind, network_id, seq, prev, time_ms, author, cert, body, signature, raw)


def decode_stored(network_id: bytes, seq: int, raw: bytes) -> Event:
    """The event a store holds at position ``seq`` of ``network_id``'s chain: it must decode and
    say it is event ``seq``; otherwise the chain is refused (ChainInvalid naming the seq)."""
    try:
        event = decode(raw)
    except DecodeError as exc:
        raise ChainInvalid(network_id, seq, f"does not decode: {exc}") from None
    if event.seq != seq:
        raise ChainInvalid(
            network_id, seq, f"stored at position {seq} but says it is event {event.seq}"
        )
    return event
