"""Fragments: a sealed packet too big for one path-MTU datagram, carried as several (sans-I/O).

A sealed super-frame is up to ~63 KB: one AES-GCM call, one replay-window slot. Sent as one UDP
datagram, the kernel would split it into ~45 IP fragments, and IP fragmentation is slow (every
fragment is its own trip through the stack, reassembly on the far side; measured on the bench's
veth underlay: 2.4 Gbit/s of kernel time per core) and often filtered on real networks. Instead
the sealed packet is cut here into datagrams of at most :data:`FRAGMENT_SIZE` bytes, each with a
32-byte clear prefix, and all of them leave in *one* ``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO):
the kernel (or the NIC) cuts the buffer at fixed offsets, and on the way in ``UDP_GRO`` hands a
run of them back in one ``recvmsg``. Measured on the same underlay: 22 Gbit/s, 9x less CPU.

Fragment datagram (docs/protocol.md, "Fragments")::

    0        16  17  18        22        30      31      32
    | network | v | 4 | sender  | counter | index | count | bytes of the sealed packet ...

``sender`` and ``counter`` are copied from the sealed packet's header and name the packet;
fragment ``index`` of ``count`` holds bytes ``[index * C, index * C + C)`` of it, where ``C`` is
the chunk size of the first fragment (every fragment but the last is full). Nothing in the prefix
is authenticated, and nothing needs to be: the reassembled packet is opened like any other, so a
forged or mixed-up fragment makes it fail authentication (and be dropped, never answered).
Losing one fragment loses the packet, as with IP fragmentation; TCP recovers the super-frame.
"""

from __future__ import annotations

import struct

from atenet.fast import FAST
from atenet.overlay.seal import HEADER_LEN, NETWORK_ID_LEN, OVERHEAD, TYPE_FRAGMENT, VERSION

__all__ = [
    "FRAGMENT_SIZE",
    "MAX_FRAGMENTS",
    "MAX_PACKET",
    "PREFIX_LEN",
    "Reassembler",
    "fragment",
    "fragment_parts",
    "fragment_py",
    "is_fragment",
]

FRAGMENT_SIZE = 1464
"""Largest fragment datagram: the size of a sealed full-MTU frame (1400 + 14 + 50), so the
underlay carries nothing bigger than it already does for standard frames (1492 bytes in IPv4)."""

PREFIX_LEN = 32
CHUNK = FRAGMENT_SIZE - PREFIX_LEN

MAX_FRAGMENTS = 65507 // FRAGMENT_SIZE
"""A UDP GSO send is one IPv4-sized buffer (at most 65,507 bytes of datagrams): 44 fragments."""

MAX_PACKET = MAX_FRAGMENTS * CHUNK
"""The largest sealed packet that can be fragmented (63,008 bytes)."""

MAX_SUPERFRAME = MAX_PACKET - OVERHEAD
"""The largest offloaded packet (virtio-net header + frame) that fits, once sealed."""

_INDEX = struct.Struct("BB")
# Per fragment count, the index bytes; per fragment, its slice of the packet and, in a GSO run
# that starts at 0, the slice of its chunk: tables so that cutting and joining run as C
# iterators (map, zip, join) instead of a Python loop per fragment.
_INDEXES = [[bytes((i, c)) for i in range(c)] for c in range(MAX_FRAGMENTS + 1)]
_PACKET_SLICES = [slice(i * CHUNK, i * CHUNK + CHUNK) for i in range(MAX_FRAGMENTS)]
_RUN_SLICES = [
    slice(i * FRAGMENT_SIZE + PREFIX_LEN, (i + 1) * FRAGMENT_SIZE) for i in range(MAX_FRAGMENTS)
]
_VERSION_TYPE = bytes((VERSION, TYPE_FRAGMENT))
_KEY_AT = NETWORK_ID_LEN + 2  # sender id + counter: the sealed header's last 12 bytes
_ID_AT = HEADER_LEN - 12
_TYPE_AT = NETWORK_ID_LEN + 1


def is_fragment(datagram: bytes | memoryview) -> bool:
    """True when ``datagram`` is a fragment (type 4) rather than a whole sealed packet."""
    return len(datagram) > PREFIX_LEN and datagram[_TYPE_AT] == TYPE_FRAGMENT


def fragment_parts(packet: bytes | bytearray) -> list[bytes | memoryview]:
    """The fragments of sealed ``packet`` as a scatter list (prefix, chunk, prefix, chunk, ...).

    Handed to ``sendmsg`` with ``UDP_SEGMENT = FRAGMENT_SIZE``, the kernel gathers it into
    datagrams of :data:`FRAGMENT_SIZE` bytes (the last one shorter): the 64 KB are never joined
    in Python. Raises ValueError above :data:`MAX_PACKET`.
    """
    size = len(packet)
    count = -(-size // CHUNK)
    if count > MAX_FRAGMENTS:
        raise ValueError(f"sealed packet of {size} bytes exceeds {MAX_PACKET}: cannot fragment")
    view = memoryview(packet)
    prefix = bytes(view[:NETWORK_ID_LEN]) + _VERSION_TYPE + view[_ID_AT:HEADER_LEN]
    # Filled by two extended-slice assignments (C loops over the maps): measured ~25 % faster
    # than interleaving with chain(zip()), which builds a tuple per fragment.
    parts: list[bytes | memoryview] = [prefix] * (count + count)
    parts[::2] = map(prefix.__add__, _INDEXES[count])
    parts[1::2] = map(view.__getitem__, _PACKET_SLICES[:count])
    return parts


def fragment(packet: bytes | bytearray) -> bytes:
    """The fragments of sealed ``packet``, back to back, each :data:`FRAGMENT_SIZE` bytes but the
    last (what a UDP GSO send puts on the wire, cut at that size).

    This is what :class:`~atenet.transport.udp.UdpSocket` sends: joining here (one 64 KB copy
    in C) and handing ``sendmsg`` one buffer was measured faster than handing it the 88-entry
    scatter list, whose every entry the socket module must export as a buffer and the kernel
    walk as an iovec (loopback, UDP GSO: 12 vs 17 µs per super-frame).
    """
    return b"".join(fragment_parts(packet))


fragment_py = fragment
"""The pure-Python :func:`fragment`: the reference the compiled one is tested against."""
if getattr(FAST, "fragment", None) is not None:  # (an extension built before frag.c: pure)
    # The same bytes in one C pass (csrc/fast/frag.c; tests/test_fast_frag.py compares them):
    # the list of 88 scatter entries above cost more than the 63 KB copy.
    fragment = FAST.fragment  # type: ignore[union-attr]


class Reassembler:
    """Puts fragments back together into sealed packets; bounded, stateless beyond that.

    ``feed`` takes what one ``recvmsg`` returned: a single datagram, or with ``UDP_GRO`` a run
    of equal-size datagrams (``segment`` bytes each but the last). The common case — all of a
    packet's fragments in one run, in order, as one GSO send produced them — is joined in one
    step without touching the pending table. Fragments that arrive apart wait in the table,
    keyed by (source address, sender id, counter); it holds at most ``max_pending`` packets and
    forgets the oldest first, so stray or forged fragments cannot grow it.
    """

    __slots__ = ("_pending", "dropped", "max_pending")

    def __init__(self, max_pending: int = 64) -> None:
        self.max_pending = max_pending
        self._pending: dict[tuple[object, bytes], list[bytes | None]] = {}
        self.dropped = 0
        """Fragments refused as malformed or inconsistent, and packets forgotten incomplete."""

    def feed(self, data: bytes, segment: int, addr: object) -> list[bytes]:
        """The whole datagrams in ``data``: packets passed through, fragments reassembled.

        With the fast path on, this is ``_fast.reassemble`` (the same packets out: a whole run
        joined in C, every other fragment handed to :meth:`_add`); :meth:`feed_py` is the pure
        reference either way.
        """
        if _reassemble is not None:
            return _reassemble(self, data, segment, addr)  # type: ignore[no-any-return]
        return self.feed_py(data, segment, addr)

    def feed_py(self, data: bytes, segment: int, addr: object) -> list[bytes]:
        """:meth:`feed` in pure Python."""
        if not segment or segment >= len(data):
            if not is_fragment(data):
                return [data]
            packet = self._add(memoryview(data), addr)
            return [] if packet is None else [packet]
        out: list[bytes] = []
        view = memoryview(data)
        end = len(data)
        at = 0
        while at < end:
            piece = view[at : at + segment]
            if not is_fragment(piece):
                out.append(bytes(piece))
                at += segment
                continue
            index, count = _INDEX.unpack_from(piece, PREFIX_LEN - 2)
            last = at + (count - 1) * segment
            if index == 0 and count > 1 and last < end:
                tail = view[last : last + segment]
                # is_fragment first: it makes sure tail[PREFIX_LEN - 2] exists (a run may end
                # in a datagram of any length; 30 bytes used to raise IndexError here).
                if (
                    is_fragment(tail)
                    and tail[PREFIX_LEN - 2] == count - 1
                    and tail[_KEY_AT : PREFIX_LEN - 2] == piece[_KEY_AT : PREFIX_LEN - 2]
                ):
                    # A whole packet in one run: a mix-up in between fails authentication later.
                    if at == 0 and segment == FRAGMENT_SIZE:
                        chunks = list(map(view.__getitem__, _RUN_SLICES[: count - 1]))
                    else:
                        chunks = [
                            view[i + PREFIX_LEN : i + segment] for i in range(at, last, segment)
                        ]
                    chunks.append(tail[PREFIX_LEN:])
                    out.append(b"".join(chunks))
                    at = last + segment
                    continue
            packet = self._add(piece, addr)
            if packet is not None:
                out.append(packet)
            at += segment
        return out

    def _add(self, piece: memoryview, addr: object) -> bytes | None:
        """Keep one fragment that came apart from the rest of its packet; the packet once whole.

        The only place the pending table grows and ``dropped`` counts (the C path calls it too)."""
        index, count = _INDEX.unpack_from(piece, PREFIX_LEN - 2)
        if count < 2 or index >= count:
            self.dropped += 1
            return None
        key = (addr, bytes(piece[_KEY_AT : PREFIX_LEN - 2]))
        pending = self._pending
        chunks = pending.get(key)
        if chunks is None:
            if len(pending) >= self.max_pending:
                del pending[next(iter(pending))]
                self.dropped += 1
            chunks = pending[key] = [None] * count
        elif len(chunks) != count:
            self.dropped += 1
            return None
        chunks[index] = bytes(piece[PREFIX_LEN:])
        if None in chunks:
            return None
        del pending[key]
        return b"".join(chunks)  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Packets waiting for fragments."""
        return len(self._pending)


_reassemble = getattr(FAST, "reassemble", None)
"""The compiled :meth:`Reassembler.feed` (csrc/fast/frag.c), or None: the pure one."""
