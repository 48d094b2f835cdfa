"""Offloads: software segmentation and checksum completion against scapy, and the real kernel.

The unit tests build super-frames the way a Linux TAP hands them out (headers once, a partial
checksum holding the pseudo-header sum, a virtio-net header) and compare every segment
:func:`atenet.offload.to_frames` makes, byte for byte, with the packet scapy builds from the
fields Linux's software GSO would give that segment (scapy computes lengths and checksums
itself). The namespace tests then let a real kernel produce super-frames through a vnet TAP and
check that segmented copies are accepted by another kernel (which verifies every checksum) and
that a hashed TCP transfer arrives intact.
"""

from __future__ import annotations

import os
import select
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from atenet.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VNET_HDR_LEN,
    OffloadError,
    VnetHeader,
    check,
    is_offloaded,
    to_frames,
)
from atenet.transport.tap import TapDevice, configure_link
from atenet.wire.checksum import ones_sum
from tests.conftest import needs_root
from tests.support.netns import Host, Lab

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
V4 = ("10.9.0.1", "10.9.0.2")
V6 = ("fd09::1", "fd09::2")
TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def pseudo_partial(pkt: Packet, l4: Packet, proto: int) -> int:
    """What Linux leaves in a partial checksum field: the folded pseudo-header sum, not inverted."""
    length = len(bytes(l4))
    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    addrs = bytes(ip)[12:20] if isinstance(ip, IP) else bytes(ip)[8:40]
    total = ones_sum(addrs) + proto + length
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def offloaded(pkt: Packet, gso_type: int, gso_size: int) -> bytes:
    """``pkt`` as a vnet TAP would hand it out: partial L4 checksum, virtio-net header first."""
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    proto = 6 if isinstance(l4, TCP) else 17
    csum_offset = 16 if proto == 6 else 6
    raw = bytearray(bytes(pkt))
    csum_start = len(raw) - len(bytes(l4))
    raw[csum_start + csum_offset : csum_start + csum_offset + 2] = pseudo_partial(
        pkt, l4, proto
    ).to_bytes(2, "big")
    l4_hlen = (raw[csum_start + 12] >> 4) * 4 if proto == 6 else 8
    header = VnetHeader(
        F_NEEDS_CSUM, gso_type, csum_start + l4_hlen, gso_size, csum_start, csum_offset
    )
    return header.pack() + bytes(raw)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def expected_tcp(
    make: Callable[..., Packet], payload: bytes, mss: int, seq0: int, flags: str, ip_id0: int
) -> list[bytes]:
    """What Linux's tcp_gso_segment makes: FIN/PSH on the last segment, CWR on the first."""
    out = []
    parts = chunks(payload, mss)
    for i, part in enumerate(parts):
        seg_flags = flags
        if i != len(parts) - 1:
            seg_flags = seg_flags.replace("F", "").replace("P", "")
        if i:
            seg_flags = seg_flags.replace("C", "")
        seq, ip_id = (seq0 + i * mss) & 0xFFFFFFFF, (ip_id0 + i) & 0xFFFF
        out.append(bytes(make(seq=seq, flags=seg_flags, ip_id=ip_id, data=part)))
    return out


def v4_tcp(seq: int, flags: str, ip_id: int, data: bytes) -> Packet:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src=V4[0], dst=V4[1], id=ip_id, flags="DF", ttl=64, tos=0x02)
        / TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags, window=501, options=TS_OPTIONS)
        / Raw(data)
    )


def v6_tcp(seq: int, flags: str, ip_id: int, data: bytes) -> Packet:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src=V6[0], dst=V6[1], hlim=64, fl=0x12345)
        / TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags, window=501, options=TS_OPTIONS)
        / Raw(data)
    )


# ---------------------------------------------------------------------------- segmentation


def test_tcpv4_super_frame_segments_match_scapy_field_by_field() -> None:
    payload = os.urandom(10_000)
    mss = 1448
    seq0 = 0xFFFFF000  # wraps around 2**32 in the middle of the super-frame
    packet = offloaded(v4_tcp(seq0, "PA", 0xFFFE, payload), GSO_TCPV4, mss)
    frames = to_frames(packet)
    assert frames == expected_tcp(v4_tcp, payload, mss, seq0, "PA", 0xFFFE)
    assert len(frames) == 7
    for i, frame in enumerate(frames):  # and scapy, parsing them, agrees on the fields
        ip = Ether(frame)[IP]
        assert ip.id == (0xFFFE + i) & 0xFFFF
        assert ip[TCP].seq == (seq0 + i * mss) & 0xFFFFFFFF


def test_tcpv6_super_frame_segments_match_scapy() -> None:
    payload = os.urandom(5000)
    packet = offloaded(v6_tcp(1000, "FPA", 0, payload), GSO_TCPV6, 1200)
    assert to_frames(packet) == expected_tcp(v6_tcp, payload, 1200, 1000, "FPA", 0)


def test_tcpv6_with_extension_header_keeps_it_on_every_segment() -> None:
    def make(seq: int, flags: str, ip_id: int, data: bytes) -> Packet:
        return (
            Ether(src=MAC_A, dst=MAC_B)
            / IPv6(src=V6[0], dst=V6[1])
            / IPv6ExtHdrHopByHop()
            / TCP(sport=1, dport=2, seq=seq, flags=flags)
            / Raw(data)
        )

    payload = os.urandom(3000)
    packet = offloaded(make(5, "A", 0, payload), GSO_TCPV6, 1000)
    assert to_frames(packet) == expected_tcp(make, payload, 1000, 5, "A", 0)


def test_fin_and_psh_only_on_last_segment_cwr_only_on_first() -> None:
    payload = os.urandom(3 * 500)
    packet = offloaded(v4_tcp(1, "FPAC", 10, payload), GSO_TCPV4 | GSO_ECN, 500)
    flags = [str(Ether(f)[TCP].flags) for f in to_frames(packet)]
    assert flags == ["AC", "A", "FPA"]


def test_payload_not_a_multiple_of_mss_gives_a_short_last_segment() -> None:
    payload = os.urandom(1448 * 2 + 1)  # odd length: the checksum pads the last byte
    packet = offloaded(v4_tcp(9, "A", 1, payload), GSO_TCPV4, 1448)
    frames = to_frames(packet)
    assert [len(Ether(f)[Raw].load) for f in frames] == [1448, 1448, 1]
    assert frames == expected_tcp(v4_tcp, payload, 1448, 9, "A", 1)


def test_vlan_tagged_super_frame_is_segmented_behind_the_tag() -> None:
    def make(seq: int, flags: str, ip_id: int, data: bytes) -> Packet:
        return (
            Ether(src=MAC_A, dst=MAC_B)
            / Dot1Q(vlan=7)
            / IP(src=V4[0], dst=V4[1], id=ip_id)
            / TCP(sport=1, dport=2, seq=seq, flags=flags)
            / Raw(data)
        )

    payload = os.urandom(2500)
    packet = offloaded(make(0, "A", 3, payload), GSO_TCPV4, 1000)
    assert to_frames(packet) == expected_tcp(make, payload, 1000, 0, "A", 3)


@pytest.mark.parametrize("v6", [False, True])
def test_udp_l4_super_datagram_segments_match_scapy(v6: bool) -> None:
    def make(ip_id: int, data: bytes) -> Packet:
        ip = IPv6(src=V6[0], dst=V6[1]) if v6 else IP(src=V4[0], dst=V4[1], id=ip_id)
        return Ether(src=MAC_A, dst=MAC_B) / ip / UDP(sport=53000, dport=4433) / Raw(data)

    payload = os.urandom(4000)
    packet = offloaded(make(100, payload), GSO_UDP_L4, 1200)
    expected = [bytes(make(100 + i, part)) for i, part in enumerate(chunks(payload, 1200))]
    assert to_frames(packet) == expected


# ---------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_partial_checksum_is_completed_like_scapy_computes_it(v6: bool, proto: str) -> None:
    ip = IPv6(src=V6[0], dst=V6[1]) if v6 else IP(src=V4[0], dst=V4[1])
    l4 = TCP(sport=5, dport=6, flags="A") if proto == "tcp" else UDP(sport=5, dport=6)
    pkt = Ether(src=MAC_A, dst=MAC_B) / ip / l4 / Raw(os.urandom(333))
    packet = offloaded(pkt, GSO_NONE, 0)
    assert is_offloaded(packet)
    assert to_frames(packet) == [bytes(pkt)]


def test_udp_checksum_that_sums_to_zero_is_sent_as_ffff() -> None:
    def make(word: int) -> Packet:
        ip = IP(src=V4[0], dst=V4[1])
        return Ether() / ip / UDP(sport=1, dport=2) / Raw(word.to_bytes(2, "big"))

    # With a zero payload word the checksum is c; a payload word of c makes the sum all ones,
    # i.e. a computed checksum of 0, which UDP must send as 0xFFFF.
    word = Ether(bytes(make(0)))[UDP].chksum
    (frame,) = to_frames(offloaded(make(word), GSO_NONE, 0))
    assert frame[14 + 20 + 6 : 14 + 20 + 8] == b"\xff\xff"
    assert Ether(frame)[UDP].chksum == Ether(bytes(make(word)))[UDP].chksum == 0xFFFF


def test_plain_and_data_valid_frames_pass_unchanged() -> None:
    frame = bytes(Ether() / IP() / TCP() / Raw(b"x" * 40))
    for flags in (0, F_DATA_VALID):
        packet = VnetHeader(flags).pack() + frame
        assert not is_offloaded(packet)
        assert to_frames(packet) == [frame]
    assert VnetHeader().pack() == NO_OFFLOAD and len(NO_OFFLOAD) == VNET_HDR_LEN


# ---------------------------------------------------------------------------- refusals


def test_header_round_trips() -> None:
    header = VnetHeader(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 86, 1428, 54, 16)
    assert VnetHeader.parse(header.pack() + b"rest") == header


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (VnetHeader(F_NEEDS_CSUM, GSO_UDP, 54, 1400, 34, 6), "gso_type"),
        (VnetHeader(F_NEEDS_CSUM, 9, 54, 1400, 34, 16), "gso_type"),
        (VnetHeader(0, GSO_TCPV4, 54, 1400, 0, 0), "gso_header"),
        (VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16), "gso_header"),
        (VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 60_000), "csum_range"),
        (VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 4, 16), "csum_range"),
    ],
)
def test_impossible_headers_are_refused_by_reason(header: VnetHeader, reason: str) -> None:
    packet = header.pack() + bytes(v4_tcp(0, "A", 0, b"x" * 3000))
    with pytest.raises(OffloadError) as err:
        check(packet)
    assert err.value.reason == reason
    with pytest.raises(OffloadError):
        to_frames(packet)


def test_headers_that_contradict_the_offload_header_are_refused() -> None:
    v6_packet = offloaded(v6_tcp(0, "A", 0, b"y" * 3000), GSO_TCPV4, 1000)  # TCPV4 on IPv6
    with pytest.raises(OffloadError, match="ethertype"):
        to_frames(v6_packet)
    good = bytearray(offloaded(v4_tcp(0, "A", 0, b"y" * 3000), GSO_TCPV4, 1000))
    good[VNET_HDR_LEN + 14 + 20 + 12] = 0x10  # TCP data offset of 4 bytes: not a TCP header
    with pytest.raises(OffloadError, match="tcp_header"):
        to_frames(bytes(good))
    with pytest.raises(OffloadError, match="short"):
        check(b"\0" * 12)


# ---------------------------------------------------------------------------- real kernel

RECEIVER = textwrap.dedent(
    """
    import hashlib, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.create_server((sys.argv[1], 5201), family=family)
    print("ready", flush=True)
    conn, _ = srv.accept()
    h = hashlib.sha256(); n = 0
    while chunk := conn.recv(1 << 16):
        h.update(chunk); n += len(chunk)
    print(n, h.hexdigest(), flush=True)
    """
)

SENDER = textwrap.dedent(
    """
    import hashlib, os, socket, sys
    size = int(sys.argv[2]); block = os.urandom(1 << 20); h = hashlib.sha256()
    s = socket.create_connection((sys.argv[1], 5201), timeout=20)
    sent = 0
    while sent < size:
        part = block[: min(len(block), size - sent)]
        s.sendall(part); h.update(part); sent += len(part)
    s.close()
    print(sent, h.hexdigest(), flush=True)
    """
)


class Relay:
    """Moves packets between a vnet TAP in host a and a TAP in host b, in a thread.

    a -> b: whatever a's kernel hands out (super-frames, partial checksums) is turned into
    standard frames by :func:`to_frames` and written plain to b, whose kernel verifies every
    checksum (a plain TAP write carries no "checksum is fine" promise). With ``b_offloads`` the
    super-frames are instead written whole to b's vnet TAP.
    """

    def __init__(self, a: TapDevice, b: TapDevice, b_offloads: bool) -> None:
        self.a, self.b, self.b_offloads = a, b, b_offloads
        self.super_frames = 0
        self.segments: list[bytes] = []
        self.keep = 200  # segments kept for a field check after the transfer
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.a.fileno(), self.b.fileno()], [], [], 0.1)
                if self.a.fileno() in ready:
                    for packet in self.a.read_batch():
                        if packet[1]:
                            self.super_frames += 1
                        if self.b_offloads:
                            self.b.write_packet(packet)
                            continue
                        for frame in to_frames(packet):
                            if len(self.segments) < self.keep and len(frame) > 1000:
                                self.segments.append(frame)
                            self.b.write(frame)
                if self.b.fileno() in ready:
                    for packet in self.b.read_batch():
                        if self.b.vnet_hdr:
                            self.a.write_packet(packet)
                        else:
                            self.a.write(packet)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise self.error


def open_tap(host: Host, vnet: bool, mac: str, ip4: str, ip6: str) -> TapDevice:
    def body() -> TapDevice:
        tap = TapDevice.open("tap0", vnet_hdr=vnet)
        configure_link(
            tap.name, bytes.fromhex(mac.replace(":", "")), 1400, [f"{ip4}/24"], [f"{ip6}/64"],
            gso_max_size=65000 if vnet else None,
        )  # fmt: skip
        return tap

    return host.call(body)


def transfer(lab: Lab, a: Host, b: Host, addr: str, size: int) -> tuple[str, str]:
    rx = b.popen(["python3", "-c", RECEIVER, addr], stdout=-1, text=True)
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        sent = a.run(["python3", "-c", SENDER, addr, str(size)], timeout=120).stdout.split()
        out, _ = rx.communicate(timeout=60)
    finally:
        lab.stop_process(rx)
    received = out.split()
    assert int(received[0]) == int(sent[0]) == size
    return sent[1], received[1]


@needs_root
@pytest.mark.parametrize("b_offloads", [False, True], ids=["segmented", "super-frames"])
def test_real_kernel_super_frames_cross_intact(lab: Lab, b_offloads: bool) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    tap_a = open_tap(a, True, MAC_A, "10.9.0.1", "fd09::1")
    tap_b = open_tap(b, b_offloads, MAC_B, "10.9.0.2", "fd09::2")
    assert tap_a.offloads & 0x07 == 0x07  # checksum + TSO4 + TSO6 at least
    relay = Relay(tap_a, tap_b, b_offloads)
    try:
        assert a.ping("10.9.0.2", count=2, timeout=5)
        for addr in ("10.9.0.2", "fd09::2"):
            sent, received = transfer(lab, a, b, addr, 16 << 20)
            assert sent == received
        time.sleep(0.2)
    finally:
        relay.stop()
        tap_a.close()
        tap_b.close()
    assert relay.super_frames > 100  # the kernel did hand out super-frames
    assert tap_b.counters.tx_errors == 0
    for frame in relay.segments:  # every kept segment has checksums scapy agrees with
        pkt = Ether(frame)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        tcp = pkt[TCP]
        original = tcp.chksum
        del tcp.chksum
        if isinstance(ip, IP):
            ip_original = ip.chksum
            del ip.chksum
            assert Ether(bytes(pkt))[IP].chksum == ip_original
        assert Ether(bytes(pkt))[TCP].chksum == original
        assert len(frame) <= 14 + 1400
    if not b_offloads:
        assert relay.segments, "no data segments seen"
