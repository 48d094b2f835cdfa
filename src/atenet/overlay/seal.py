"""The overlay packet format: key derivation, seal and open.

Every packet between a client and a node, or between two nodes, is one sealed packet::

    0        16  17  18      22        26          34                      len-16     len
    | network | v | t | key id | sender | counter   | AES-256-GCM ciphertext | GCM tag |
    '------------- header, in clear, authenticated ---'

The header is the AEAD associated data; the nonce is the header's last 12 bytes (sender id ||
counter). ``docs/protocol.md`` describes every byte and the reasoning; this module is the code.

The module is sans-I/O: it takes bytes and the caller's counter start, never a clock or socket.
It is on the hot path, so it precompiles its structs, builds each AESGCM object once per key,
and creates no objects per packet beyond the few small ones the output needs.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atenet.errors import AtenetError
from atenet.fast import FAST, changed
from atenet.overlay.replay import DEFAULT_SIZE, Freshness, ReplayWindow

_Window = FAST.Window if FAST is not None else ReplayWindow
"""Replay windows are the C ones when the fast path is built: it checks and marks them without
calling back into Python (same API and semantics; tests/test_fast.py runs both side by side)."""

_sealer_seal = FAST.sealer_seal if FAST is not None else None
_opener_open = FAST.opener_open if FAST is not None else None

__all__ = [
    "HEADER_LEN",
    "NETWORK_ID_LEN",
    "NODE_KEY_ID",
    "OVERHEAD",
    "SECRET_LEN",
    "TAG_LEN",
    "TYPE_CONTROL",
    "TYPE_FRAGMENT",
    "TYPE_FRAME",
    "TYPE_SUPERFRAME",
    "VERSION",
    "Opener",
    "PacketKey",
    "SealError",
    "Sealer",
    "derive_node_secret",
    "network_id_of",
    "open_packet",
    "parse_header",
]

VERSION = 1
TYPE_FRAME = 1
"""The payload is one Ethernet frame."""
TYPE_SUPERFRAME = 2
"""The payload is an offloaded packet: a 10-byte virtio-net header, then a frame that may be a
TSO/USO super-frame or carry a partial checksum (see :mod:`atenet.offload`, docs/protocol.md)."""
TYPE_CONTROL = 3
"""The payload is a control message between tok and node, or node and node."""
TYPE_FRAGMENT = 4
"""Not a sealed packet but a piece of one, with a clear prefix (see :mod:`atenet.overlay.fragment`);
put back together before anything here sees it."""
PACKET_TYPES = frozenset({TYPE_FRAME, TYPE_SUPERFRAME, TYPE_CONTROL})

NODE_KEY_ID = 0
"""Key id of the node-to-node key; access keys use 1..2**32-1."""

NETWORK_ID_LEN = 16
HEADER_LEN = 34
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
SECRET_LEN = 32
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

# network id, version, type, key id, sender id, counter.
_HEADER = struct.Struct(">16sBBIIQ")
# The first 22 bytes of the header are fixed for a (sender, key, type): precomputed per Sealer.
_PREFIX = struct.Struct(">16sBBI")
# The last 12 bytes are the nonce: sender id || counter.
_NONCE = struct.Struct(">IQ")
_NONCE_AT = HEADER_LEN - _NONCE.size
assert _HEADER.size == HEADER_LEN and _PREFIX.size == _NONCE_AT

_INTO_FROM = 8192  # payload size from which encrypt_into beats encrypt + concatenation

NEW_SENDER_RATE = 60.0
"""New sender ids (client sessions, or node processes) one key may start per second at one
receiver, on average; see :class:`Opener`."""
NEW_SENDER_BURST = 200.0
"""How many new sender ids a key may start at once (a node restarting with many clients)."""

INFO_AES = b"atenet/v1 packet aes-256-gcm"
INFO_AUTH = b"atenet/v1 packet sha-256 auth"
INFO_NODE = b"atenet/v1 node-to-node secret"


class SealError(AtenetError):
    """A packet was dropped. ``reason`` names the check that failed and is the drop counter.

    Reasons: ``short`` (fewer bytes than a header and tag), ``version`` (not our format
    version), ``type`` (unknown packet type), ``auth`` (wrong key, or the packet was altered),
    ``replay`` (counter already seen or older than the replay window), ``stale`` / ``future``
    (a sender with no replay window here whose counter is older than the receiver's clock minus
    the skew, or than the receiver's start; or too far ahead of its clock), ``senders_full``
    (every replay window of the key is in use by a sender active within the skew). A sender sees
    ``counter`` only after 2**64 packets of one session.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"dropped overlay packet: {reason}")
        self.reason = reason


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """32 bytes from ``secret`` for one purpose; a distinct ``info`` gives independent keys."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _check_secret(secret: bytes) -> None:
    if len(secret) != SECRET_LEN:
        raise ValueError(f"a key secret is {SECRET_LEN} bytes, not {len(secret)}")


def derive_node_secret(data_key: bytes) -> bytes:
    """The node-to-node secret (used with key id 0) from the network's 32-byte data key.

    Every node that can read the chain holds the data key, so each derives the same node-to-node
    secret without it ever being written anywhere; clients holding only an access key cannot.
    """
    _check_secret(data_key)
    return _hkdf(data_key, INFO_NODE)


class PacketKey:
    """The packet keys derived from one 32-byte secret, built once and kept while the key lives.

    Building the AESGCM object expands the AES key schedule, so it happens here and never per
    packet.
    """

    __slots__ = ("aead", "auth_key", "fast", "key_id")

    def __init__(self, secret: bytes, key_id: int) -> None:
        _check_secret(secret)
        if not 0 <= key_id <= U32_MAX:
            raise ValueError(f"a key id is a u32, not {key_id}")
        self.key_id = key_id
        aes_key = _hkdf(secret, INFO_AES)
        self.aead = AESGCM(aes_key)
        self.fast = FAST.Key(aes_key) if FAST is not None else None
        """The same AES key set up for the compiled fast path (None: pure Python)."""
        # For HMAC-SHA256 wherever a MAC is needed outside the AEAD (e.g. a WebSocket hello).
        self.auth_key = _hkdf(secret, INFO_AUTH)

    def __repr__(self) -> str:
        # Never print key material.
        return f"PacketKey(key_id={self.key_id})"


class Sealer:
    """Seals packets for one sender session under one key.

    ``counter_start`` must make (key, sender id, counter) unique forever: GCM with a repeated
    nonce leaks the XOR of two plaintexts and lets an attacker forge tags. The I/O layer passes
    ``time.time_ns()``; the counter then grows by one per packet and the I/O layer moves it up to
    its clock with :meth:`advance` at least once a second, so the counter never lags real time
    by more than that (receivers without a window for this sender refuse stale counters) and a
    restarted sender with the same sender id starts above every counter it used before as long
    as it sent fewer than 1e9 packets per second and the clock did not step back.

    Seal once per flood: the same sealed bytes go to every peer.
    """

    __slots__ = (
        "_cell" if FAST is not None else "_counter",
        "_encrypt",
        "_encrypt_into",
        "_prefixes",
        "key",
        "network_id",
        "sender_id",
    )
    # With the fast path built the counter lives in a C Counter (``_cell``, behind a mutex) so
    # that GIL-held code and a GIL-free engine thread sealing for the same sender can never take
    # the same counter (a repeated nonce breaks AES-GCM); ``_counter`` is then a property over it.

    def __init__(
        self, network_id: bytes, key: PacketKey, sender_id: int, counter_start: int
    ) -> None:
        if len(network_id) != NETWORK_ID_LEN:
            raise ValueError(f"a network id is {NETWORK_ID_LEN} bytes, not {len(network_id)}")
        if not 0 <= sender_id <= U32_MAX:
            raise ValueError(f"a sender id is a u32, not {sender_id}")
        if not 0 <= counter_start <= U64_MAX:
            raise ValueError(f"a counter is a u64, not {counter_start}")
        self.network_id = bytes(network_id)
        self.key = key
        self.sender_id = sender_id
        if FAST is not None:
            self._cell = FAST.Counter(counter_start)
        else:
            self._counter = counter_start
        self._encrypt = key.aead.encrypt
        self._encrypt_into = key.aead.encrypt_into
        self._prefixes = {
            ptype: _PREFIX.pack(self.network_id, VERSION, ptype, key.key_id)
            for ptype in PACKET_TYPES
        }

    @property
    def counter(self) -> int:
        """The counter the next packet will carry."""
        return self._counter

    def advance(self, now_ns: int) -> None:
        """Move the counter up to the clock ``now_ns`` (never down: nonces stay unique).

        Called by the I/O layer per batch or tick, not per packet (no clock in here, and no
        per-packet cost); between calls the counter counts up by one per packet.
        """
        if now_ns > self._counter:
            self._counter = now_ns

    if FAST is not None:

        @property  # type: ignore[no-redef]
        def _counter(self) -> int:
            return self._cell.value  # type: ignore[no-any-return]

        @_counter.setter
        def _counter(self, value: int) -> None:
            self._cell.value = value

        def advance(self, now_ns: int) -> None:  # type: ignore[no-redef]
            """Move the counter up to the clock ``now_ns`` (never down), under its lock."""
            self._cell.advance(now_ns)

    def seal(self, payload: bytes | memoryview, ptype: int = TYPE_FRAME) -> bytes | bytearray:
        """The sealed packet carrying ``payload``: ``len(payload) + OVERHEAD`` bytes.

        A large payload (a super-frame) is encrypted straight behind its header in one buffer,
        a bytearray, which saves copying 64 KB once more to prepend the header.
        """
        counter = self._counter
        try:
            nonce = _NONCE.pack(self.sender_id, counter)
            header = self._prefixes[ptype] + nonce
        except struct.error:
            # Only after 2**64 packets; refusing beats wrapping around to a used nonce.
            message = "packet counter exhausted: start a new sender session"
            raise SealError("counter", message) from None
        except KeyError:
            raise ValueError(f"unknown packet type {ptype}") from None
        self._counter = counter + 1
        size = len(payload)
        if size < _INTO_FROM:
            return header + self._encrypt(nonce, payload, header)
        packet = bytearray(HEADER_LEN + size + TAG_LEN)
        packet[:HEADER_LEN] = header
        self._encrypt_into(nonce, payload, header, memoryview(packet)[HEADER_LEN:])
        return packet

    _seal_pure = seal
    """The pure Python :meth:`seal`: the reference tests/test_fast.py compares the C one with."""

    def _seal_fast(self, payload: bytes | memoryview, ptype: int = TYPE_FRAME) -> bytes:
        """The sealed packet carrying ``payload``: ``len(payload) + OVERHEAD`` bytes.

        This is :meth:`seal` when the fast path is built: one C call (``_fast.sealer_seal``)
        gives the pure path's bytes, counter and errors, sealed with the key's OpenSSL context
        set up once (1.6x faster for 64 bytes, 1.4x for 1400, 1.2x for 64 KB; docs/fastpath.md).
        """
        return _sealer_seal(self, payload, ptype)  # type: ignore[misc]

    if _sealer_seal is not None:
        seal = _seal_fast  # type: ignore[assignment]


def network_id_of(packet: bytes | memoryview) -> bytes:
    """The network id a packet is for (its first 16 bytes), to find the chain without a key.

    The caller checks the length first (``parse_header`` does); a short packet gives a short id.
    """
    return bytes(packet[:NETWORK_ID_LEN])


def parse_header(packet: bytes | memoryview) -> tuple[bytes, int, int, int, int]:
    """``(network_id, ptype, key_id, sender_id, counter)`` of a packet, before any crypto.

    Nothing here is trusted yet: the fields only say which key to try and which replay window to
    consult. Raises :class:`SealError` with reason ``short``, ``version`` or ``type``.
    """
    if len(packet) < OVERHEAD:
        raise SealError("short")
    network_id, version, ptype, key_id, sender_id, counter = _HEADER.unpack_from(packet)
    if version != VERSION:
        raise SealError("version")
    if ptype not in PACKET_TYPES:
        raise SealError("type")
    return network_id, ptype, key_id, sender_id, counter


def open_packet(key: PacketKey, packet: bytes | memoryview) -> bytes:
    """The payload of ``packet`` if it authenticates under ``key``; else ``SealError("auth")``.

    Checks neither the replay window nor the header's version and type: the caller has parsed
    the header (to pick ``key`` by key id) and owns the replay window. See :class:`Opener`.
    """
    view = memoryview(packet)
    return _decrypt(key.aead, view[_NONCE_AT:HEADER_LEN], view)


def _decrypt(aead: AESGCM, nonce: bytes | memoryview, view: memoryview) -> bytes:
    """Decrypt and authenticate; slices of ``view`` avoid copying a 64 KiB ciphertext."""
    if len(view) < OVERHEAD:
        raise SealError("short")
    try:
        return aead.decrypt(nonce, view[HEADER_LEN:], view[:HEADER_LEN])
    except InvalidTag:
        raise SealError("auth") from None


class Opener:
    """Opens packets under one key and rejects replays, with one replay window per sender.

    A window is created only after a sender's first packet authenticated, so forged packets
    cannot fill the table; it starts closed below that first counter. A sender without a window
    must pass ``freshness`` (its counter within the receiver's clock skew and not below the
    receiver's start) and ``min_counter`` (set by the owner, e.g. to when a node began to take
    peer traffic) — checked before decryption, so stale floods cost no AES time. Together
    they make acceptance hold across restarts and across receivers: see docs/protocol.md.

    The table is bounded by ``max_senders``. Only a window whose top is below the freshness
    floor is ever forgotten (every packet of that sender is then refused as ``stale`` anyway,
    so forgetting opens no replay); when every window is fresher, a new sender is refused
    (``senders_full``) until some go quiet for the skew.

    New senders are also metered: a token bucket of ``new_sender_rate`` per second (depth
    ``new_sender_burst``) is checked before decryption for a sender with no window and charged
    when its packet authenticates. One sender id is one client session, so honest keys use a
    handful; a key holder minting a sender id per packet (each would cost an AES open, a new
    window and an answer) is cut to the rate for a header parse each (``new_sender_rate``), and
    the table cannot fill within the skew (60/s x 30 s < 4096), so ``senders_full`` stays rare.
    """

    __slots__ = (
        "_bucket_at",
        "_tokens",
        "_windows",
        "freshness",
        "key",
        "max_senders",
        "min_counter",
        "new_sender_burst",
        "new_sender_rate",
        "window_size",
    )

    def __init__(
        self,
        key: PacketKey,
        max_senders: int = 4096,
        window_size: int = DEFAULT_SIZE,
        freshness: Freshness | None = None,
        new_sender_rate: float = NEW_SENDER_RATE,
        new_sender_burst: float = NEW_SENDER_BURST,
    ) -> None:
        self.key = key
        self.max_senders = max_senders
        self.window_size = window_size
        self.freshness = freshness if freshness is not None else Freshness()
        self.min_counter = 0
        self.new_sender_rate = new_sender_rate
        self.new_sender_burst = new_sender_burst
        self._tokens = new_sender_burst
        self._bucket_at = self.freshness.now
        self._windows: dict[int, ReplayWindow] = {}

    def open(self, packet: bytes | memoryview, sender_id: int, counter: int) -> bytes:
        """The payload of ``packet``, or :class:`SealError` (``short``, ``auth``, ``replay``,
        ``stale``, ``future``, ``senders_full``).

        ``sender_id`` and ``counter`` are the values :func:`parse_header` returned for this same
        packet; passing them saves unpacking the header twice. The nonce is built from them
        rather than read from the packet, so they are authenticated: if they differ from the
        packet's header bytes, the packet fails ``auth`` and no window is touched.
        """
        window = self._windows.get(sender_id)
        if window is None:
            fresh = self.freshness
            if counter < fresh.floor or counter < self.min_counter:
                raise SealError("stale")
            if counter > fresh.ceiling:
                raise SealError("future")
            if self._tokens < 1.0 and not self._refill():
                raise SealError("new_sender_rate")
        elif not window.check(counter):
            raise SealError("replay")
        payload = _decrypt(self.key.aead, _NONCE.pack(sender_id, counter), memoryview(packet))
        if window is None:
            window = self._windows.get(sender_id)  # another copy may have made it meanwhile
            if window is None:
                self._new_window(sender_id).start(counter)
                self._tokens -= 1.0
                return payload
        if not window.update(counter):
            # Two copies of one packet both passed check() before either was marked.
            raise SealError("replay")
        return payload

    _open_pure = open
    """The pure Python :meth:`open`: the reference tests/test_fast.py compares the C one with."""

    def _open_fast(self, packet: bytes | memoryview, sender_id: int, counter: int) -> bytes:
        """:meth:`open` when the fast path is built: a sender with a (C) replay window is
        opened in one C call (``_fast.opener_open``: the same checks in the same order, the
        same drop reasons; 1.9x faster for 64 bytes, 1.4x for 1400); its first packet, which
        makes the window, takes :meth:`_open_pure`."""
        got = _opener_open(self, packet, sender_id, counter)  # type: ignore[misc]
        if got.__class__ is bytes:
            return got  # type: ignore[no-any-return]
        if got is None:
            return self._open_pure(packet, sender_id, counter)
        raise SealError(got)

    if _opener_open is not None:
        open = _open_fast  # type: ignore[assignment]

    def _refill(self) -> bool:
        """Top the new-sender bucket up for the time passed; True when a token is there."""
        now = self.freshness.now
        elapsed = now - self._bucket_at
        self._bucket_at = now
        if elapsed > 0:
            self._tokens = min(self.new_sender_burst, self._tokens + elapsed * self.new_sender_rate)
        return self._tokens >= 1.0

    def _new_window(self, sender_id: int) -> ReplayWindow:
        windows = self._windows
        if len(windows) >= self.max_senders:
            floor = max(self.freshness.floor, self.min_counter)
            stale = [s for s, w in windows.items() if w.top < floor]
            if not stale:
                raise SealError("senders_full")
            for sid in stale:
                del windows[sid]
            changed()  # a node engine's cached flow may hold one of them: drop those flows
        window = windows[sender_id] = _Window(self.window_size)
        return window

    def forget(self, sender_id: int) -> None:
        """Drop a sender's window (e.g. when the key is revoked): its packets then face the
        freshness floor like a new sender's."""
        if self._windows.pop(sender_id, None) is not None:
            changed()  # a node engine's cached flow may hold it: drop those flows

    def newest(self) -> int:
        """The highest counter accepted from any sender (-1 when none): once it is below the
        freshness floor, dropping this opener and building a new one opens no replay (every
        packet it accepted is then refused as ``stale`` by a fresh opener)."""
        return max((w.top for w in self._windows.values()), default=-1)

    def __len__(self) -> int:
        """How many senders have a replay window."""
        return len(self._windows)
