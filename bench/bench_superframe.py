"""Micro-benchmark: one AES-GCM call per TSO super-frame, against one per segment.

    python bench/bench_superframe.py

A TCP super-frame as a vnet TAP hands it out (~62 KB of payload, MSS 1448) is carried either

- whole (atenet's default): seal it once as a type-2 packet, cut the sealed packet into
  fragments for one UDP GSO send; on the far side join the fragments and open once; or
- per segment: segment it in Python into standard frames (what a receiver without offloads
  needs anyway), seal each as a type-1 packet; on the far side open each.

Prints microseconds per super-frame for each half and what that means in Gbit/s of payload for
one core doing nothing else. Each number is the best of a few rounds (a busy machine inflates it
less); run it on an idle machine for absolute figures, the ratio is steadier.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from atenet.offload import F_NEEDS_CSUM, GSO_TCPV4, VnetHeader, to_frames
from atenet.overlay.fragment import FRAGMENT_SIZE, Reassembler, fragment, fragment_parts
from atenet.overlay.seal import TYPE_FRAME, TYPE_SUPERFRAME, PacketKey, Sealer, open_packet

MSS = 1448
PAYLOAD = 43 * MSS  # 62,264 bytes: what a TAP capped at gso_max_size 62,944 hands out
ROUNDS = 7


def super_frame() -> bytes:
    """A TCPv4 super-frame with a partial checksum, virtio-net header first."""
    tcp_len = 32 + PAYLOAD
    eth = bytes.fromhex("02000000000b02000000000a0800")
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 1, 0x4000, 64, 6, 0,
                     bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]))  # fmt: skip
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x18, 501, 0, 0) + bytes(12)
    header = VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 14 + 20 + 32, MSS, 34, 16)
    return header.pack() + eth + ip + tcp + os.urandom(PAYLOAD)


def best(run: Callable[[], object], repeat: int = 200) -> float:
    """Seconds per call: best of ROUNDS rounds of ``repeat`` calls."""
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(repeat):
            run()
        times.append((time.perf_counter() - start) / repeat)
    return min(times)


def main() -> None:
    key = PacketKey(os.urandom(32), 1)
    sealer = Sealer(os.urandom(16), key, 7, 1)
    packet = super_frame()
    sealed = sealer.seal(packet, TYPE_SUPERFRAME)
    run = fragment(sealed)
    frames = to_frames(packet)
    sealed_frames = [sealer.seal(f, TYPE_FRAME) for f in frames]
    reassembler = Reassembler()

    whole_send = best(lambda: fragment_parts(sealer.seal(packet, TYPE_SUPERFRAME)))
    whole_recv = best(lambda: open_packet(key, reassembler.feed(run, FRAGMENT_SIZE, None)[0]))
    segment_only = best(lambda: to_frames(packet), 50)
    per_seg_send = best(lambda: [sealer.seal(f, TYPE_FRAME) for f in to_frames(packet)], 50)
    per_seg_recv = best(lambda: [open_packet(key, p) for p in sealed_frames], 50)

    def row(name: str, seconds: float) -> str:
        gbps = PAYLOAD * 8 / seconds / 1e9
        return f"| {name} | {seconds * 1e6:,.1f} | {gbps:.1f} |"

    print(f"super-frame: {PAYLOAD:,} bytes of TCP payload, {len(frames)} segments of MSS {MSS}")
    print("| per super-frame | µs | Gbit/s per core |")
    print("|---|--:|--:|")
    print(row("whole: seal once + cut into fragments", whole_send))
    print(row("whole: join fragments + open once", whole_recv))
    print(row("per segment: segment in Python (alone)", segment_only))
    print(row("per segment: segment + seal each", per_seg_send))
    print(row("per segment: open each", per_seg_recv))


if __name__ == "__main__":
    main()
