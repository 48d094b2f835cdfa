"""`tok monitor`: watch a network's frames as a passive port, as text lines or a pcap file.

The switch learns where MACs live and sends unicast frames to their one port, so the monitor
says ``"mirror": 1`` in its hello and pings: the node then hands its port every frame the switch
handles (docs/learning.md). It joins exactly like `tok connect` does (:class:`ClientCore`:
hello/welcome, pings, fail-over) but has no TAP device and never seals a frame: it only sends
control packets, so it cannot disturb the network it watches and needs no root.

Three parts, the first two sans-I/O so they are tested frame by frame:

- :func:`summarize` decodes a frame with :mod:`atenet.wire` into a :class:`Summary` (one text
  line, or one JSON object);
- :class:`PcapWriter` writes the classic libpcap format (LINKTYPE_ETHERNET, microsecond
  timestamps) and flushes every record, so a monitor that dies leaves a readable file;
- :class:`Monitor` is the asyncio shell: one UDP socket, read until empty on every wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from atenet.client.core import HELLO_TIMEOUT, ClientCore, no_answer
from atenet.errors import AtenetError, DecodeError, NotAllowed, NotFound
from atenet.overlay.token import AccessToken
from atenet.paths import write_private
from atenet.transport.udp import UdpSocket
from atenet.wire.arp import ARP_REPLY, ARP_REQUEST, ArpRepr
from atenet.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetRepr
from atenet.wire.icmp import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IcmpRepr
from atenet.wire.icmpv6 import (
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    Icmpv6Repr,
)
from atenet.wire.ipv4 import PROTO_ICMP, PROTO_IGMP, PROTO_TCP, PROTO_UDP, Ipv4Repr
from atenet.wire.ipv6 import NEXT_HEADER_FRAGMENT, NEXT_HEADER_ICMPV6, NEXT_HEADER_NONE, Ipv6Repr
from atenet.wire.udp import UdpRepr

if TYPE_CHECKING:
    from atenet.chain.log import Chain
    from atenet.owner import Owner

MONITOR_LABEL = "monitor"
"""Label of the access key `tok monitor` exports for its owner (shown by `tok key list`)."""

READ_BATCH = 256

# --------------------------------------------------------------------------- frame summary

ETHERTYPE_NAMES = {
    ETHERTYPE_IPV4: "IPv4",
    ETHERTYPE_ARP: "ARP",
    ETHERTYPE_IPV6: "IPv6",
    0x8035: "RARP",
    0x8847: "MPLS",
    0x8848: "MPLS",
    0x888E: "EAPOL",
    0x88CC: "LLDP",
    0x88F7: "PTP",
    0x9000: "LOOP",
}

UDP_SERVICES = {
    53: "DNS",
    67: "DHCP",
    68: "DHCP",
    123: "NTP",
    546: "DHCPv6",
    547: "DHCPv6",
    5353: "mDNS",
    5355: "LLMNR",
}

ICMP_NAMES = {
    ICMP_ECHO_REPLY: "echo reply",
    3: "destination unreachable",
    5: "redirect",
    ICMP_ECHO_REQUEST: "echo request",
    11: "time exceeded",
}

ICMPV6_NAMES = {
    1: "destination unreachable",
    2: "packet too big",
    3: "time exceeded",
    ICMPV6_ECHO_REQUEST: "echo request",
    ICMPV6_ECHO_REPLY: "echo reply",
    130: "multicast listener query",
    131: "multicast listener report",
    133: "router solicitation",
    134: "router advertisement",
    ICMPV6_NEIGHBOR_SOLICIT: "neighbor solicitation",
    ICMPV6_NEIGHBOR_ADVERT: "neighbor advertisement",
    143: "multicast listener report v2",
}

_TCP_FLAGS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x20, "U"), (0x40, "E"),
              (0x80, "W"))  # fmt: skip


def ethertype_name(etype: int) -> str:
    """A short name for an ethertype; values below 0x0600 are an 802.3 length field."""
    if etype < 0x0600:
        return "802.3"
    return ETHERTYPE_NAMES.get(etype, f"0x{etype:04x}")


@dataclass(slots=True)
class TcpHeader:
    """The few TCP header fields a trace line shows (the stack owns real TCP parsing)."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    payload_len: int

    @classmethod
    def parse(cls, buf: bytes) -> TcpHeader:
        """Decode the fixed header; raises :class:`DecodeError` when truncated."""
        if len(buf) < 20:
            raise DecodeError(f"TCP segment too short: {len(buf)} bytes, header needs 20")
        sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", buf)
        header_len = (offset >> 4) * 4
        if header_len < 20 or header_len > len(buf):
            raise DecodeError(f"TCP data offset {header_len} out of range ({len(buf)} bytes)")
        return cls(sport, dport, seq, ack, flags, len(buf) - header_len)

    @property
    def flag_text(self) -> str:
        """tcpdump's notation: ``S``, ``S.`` (SYN+ACK), ``P.``, ``.`` (ACK alone), ``R``..."""
        text = "".join(letter for bit, letter in _TCP_FLAGS if self.flags & bit)
        return text + "." if self.flags & 0x10 else text or "none"


@dataclass(slots=True)
class Summary:
    """One frame, decoded as far as :mod:`atenet.wire` goes.

    ``text`` is the protocol part of the line (after the MACs and the ethertype name); ``fields``
    holds the same facts as values for ``--json`` (addresses, ports, ids) so scripts need not
    parse the text.
    """

    src: str
    dst: str
    ethertype: int
    kind: str
    text: str
    length: int
    vlan: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def line(self, ts: float) -> str:
        """``HH:MM:SS.ffffff SRC -> DST KIND TEXT, length N`` (local time, like tcpdump)."""
        when = dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")
        vlan = f"vlan {self.vlan} " if self.vlan is not None else ""
        text = f" {self.text}," if self.text else ""
        return f"{when} {self.src} -> {self.dst} {vlan}{self.kind}{text} length {self.length}"

    def to_json(self, ts: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": round(ts, 6),
            "src": self.src,
            "dst": self.dst,
            "ethertype": self.ethertype,
            "type": self.kind,
            "summary": self.text,
            "length": self.length,
        }
        if self.vlan is not None:
            out["vlan"] = self.vlan
        out.update(self.fields)
        return out


def summarize(frame: bytes) -> Summary:
    """Decode ``frame`` for a trace line. Never raises: a malformed layer is named in the text,
    because a monitor is precisely where broken frames must show up instead of vanishing."""
    try:
        eth = EthernetRepr.parse(frame)
    except DecodeError as exc:
        return Summary("?", "?", 0, "runt", str(exc), len(frame))
    summary = Summary(
        eth.src.hex(":"),
        eth.dst.hex(":"),
        eth.ethertype,
        ethertype_name(eth.ethertype),
        "",
        len(frame),
        eth.vlan_id,
    )
    try:
        if eth.ethertype == ETHERTYPE_ARP:
            summary.text = _arp(eth.payload, summary.fields)
        elif eth.ethertype == ETHERTYPE_IPV4:
            summary.text = _ipv4(eth.payload, summary.fields)
        elif eth.ethertype == ETHERTYPE_IPV6:
            summary.text = _ipv6(eth.payload, summary.fields)
    except DecodeError as exc:
        summary.text = f"{summary.text} malformed: {exc}".strip()
        summary.fields["error"] = str(exc)
    return summary


def _arp(payload: bytes, fields: dict[str, Any]) -> str:
    arp = ArpRepr.parse(payload)
    fields.update(sender_ip=str(arp.sender_ip), target_ip=str(arp.target_ip))
    if arp.operation == ARP_REQUEST:
        if arp.sender_ip == arp.target_ip:
            fields["op"] = "announce"
            return f"announce {arp.sender_ip} is-at {arp.sender_mac.hex(':')}"
        fields["op"] = "who-has"
        return f"who-has {arp.target_ip} tell {arp.sender_ip}"
    if arp.operation == ARP_REPLY:
        fields.update(op="is-at", sender_mac=arp.sender_mac.hex(":"))
        return f"{arp.sender_ip} is-at {arp.sender_mac.hex(':')}"
    fields["op"] = arp.operation
    return f"operation {arp.operation} {arp.sender_ip} -> {arp.target_ip}"


def _ipv4(payload: bytes, fields: dict[str, Any]) -> str:
    ip = Ipv4Repr.parse(payload, verify_checksum=False)
    fields.update(src_ip=str(ip.src), dst_ip=str(ip.dst), proto=ip.protocol, ttl=ip.ttl)
    return _upper(f"{ip.src} -> {ip.dst}", _ipv4_upper, ip, fields)


def _ipv4_upper(ip: Ipv4Repr, fields: dict[str, Any]) -> str:
    if ip.fragment_offset:
        fields["fragment_offset"] = ip.fragment_offset * 8
        return f"fragment offset {ip.fragment_offset * 8} proto {ip.protocol}"
    if ip.protocol == PROTO_ICMP:
        icmp = IcmpRepr.parse(ip.payload, verify_checksum=False)
        return _icmp_text("ICMP", ICMP_NAMES, icmp.type, icmp.code, icmp.rest, fields)
    if ip.protocol == PROTO_IGMP:
        return "IGMP"
    return _transport(ip.protocol, ip.payload, fields)


def _ipv6(payload: bytes, fields: dict[str, Any]) -> str:
    ip = Ipv6Repr.parse(payload)
    fields.update(src_ip=str(ip.src), dst_ip=str(ip.dst), hop_limit=ip.hop_limit)
    return _upper(f"{ip.src} -> {ip.dst}", _ipv6_upper, ip, fields)


def _ipv6_upper(ip: Ipv6Repr, fields: dict[str, Any]) -> str:
    proto, upper = ip.upper_layer()
    fields["proto"] = proto
    if proto == NEXT_HEADER_ICMPV6:
        icmp = Icmpv6Repr.parse(upper, ip.src, ip.dst, verify_checksum=False)
        text = _icmp_text("ICMPv6", ICMPV6_NAMES, icmp.type, icmp.code, icmp.rest, fields)
        if (
            icmp.type in (ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_NEIGHBOR_ADVERT)
            and len(icmp.payload) >= 16
        ):
            target = IPv6Address(icmp.payload[:16])
            fields["target"] = str(target)
            text += f" who-has {target}" if icmp.type == ICMPV6_NEIGHBOR_SOLICIT else f" {target}"
        return text
    if proto == NEXT_HEADER_FRAGMENT:
        return "fragment"
    if proto == NEXT_HEADER_NONE:
        return "no next header"
    return _transport(proto, upper, fields)


def _upper(
    head: str, decode: Callable[[Any, dict[str, Any]], str], ip: Any, fields: dict[str, Any]
) -> str:
    """``head`` and the upper layer's text; a broken upper layer keeps the addresses shown."""
    try:
        return f"{head} {decode(ip, fields)}"
    except DecodeError as exc:
        fields["error"] = str(exc)
        return f"{head} malformed: {exc}"


def _icmp_text(
    name: str, names: dict[int, str], kind: int, code: int, rest: int, fields: dict[str, Any]
) -> str:
    fields.update(icmp_type=kind, icmp_code=code)
    text = f"{name} {names.get(kind, f'type {kind} code {code}')}"
    if name == "ICMP":
        echo = (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    else:
        echo = (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    if kind in echo:
        fields.update(id=rest >> 16, seq=rest & 0xFFFF)
        text += f" id {rest >> 16} seq {rest & 0xFFFF}"
    return text


def _transport(proto: int, payload: bytes, fields: dict[str, Any]) -> str:
    if proto == PROTO_UDP:
        udp = UdpRepr.parse(payload)  # no addresses given: the checksum is not checked
        fields.update(sport=udp.src_port, dport=udp.dst_port)
        service = UDP_SERVICES.get(udp.dst_port) or UDP_SERVICES.get(udp.src_port)
        label = f" {service}" if service else ""
        return f"UDP {udp.src_port} -> {udp.dst_port}{label} len {len(udp.payload)}"
    if proto == PROTO_TCP:
        tcp = TcpHeader.parse(payload)
        fields.update(sport=tcp.src_port, dport=tcp.dst_port, flags=tcp.flag_text)
        return (
            f"TCP {tcp.src_port} -> {tcp.dst_port} [{tcp.flag_text}] seq {tcp.seq} "
            f"ack {tcp.ack} len {tcp.payload_len}"
        )
    return f"proto {proto}"


# --------------------------------------------------------------------------- pcap

PCAP_MAGIC_US = 0xA1B2C3D4
"""Classic libpcap, microsecond timestamps (0xa1b23c4d would mean nanoseconds)."""
LINKTYPE_ETHERNET = 1
PCAP_SNAPLEN = 262144
"""What tcpdump uses; every overlay frame fits (at most 65535 bytes)."""

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """Writes frames to a stream in the classic libpcap format that tshark, tcpdump, scapy and
    Wireshark all read.

    The global header goes out (and is flushed) at once, and every record is flushed as it is
    written, so a monitor that is killed, or a reader following the file (``tail -f | tshark
    -r -``), never sees a half-written frame beyond the one in flight.
    """

    def __init__(self, stream: IO[bytes], snaplen: int = PCAP_SNAPLEN) -> None:
        self.stream = stream
        self.snaplen = snaplen
        self.frames = 0
        stream.write(_PCAP_HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        stream.flush()

    def write(self, frame: bytes, ts_ns: int) -> None:
        """Append one frame captured at ``ts_ns`` (nanoseconds since the epoch)."""
        seconds, micros = divmod(ts_ns // 1000, 1_000_000)
        data = frame[: self.snaplen]
        self.stream.write(_PCAP_RECORD.pack(seconds, micros, len(data), len(frame)) + data)
        self.stream.flush()
        self.frames += 1


# --------------------------------------------------------------------------- the owner's key


def monitor_token_path(network_id: bytes) -> Path:
    """Where tok keeps its monitor token for a network (0600, next to the owner key)."""
    from atenet.deployment import owner_key_path

    return owner_key_path().parent / f"monitor-token-{network_id.hex()}"


async def monitor_token(owner: Owner, chain: Chain, endpoints: list[str]) -> AccessToken:
    """The owner's monitor token for ``chain``: exported once (label ``monitor``) and kept
    0600 in tok's config dir, so running `tok monitor` again does not pile up keys.

    It is reused while its key is active and it names the same node endpoints as the network
    has now; otherwise a new key is exported and the old monitor key is revoked, so at most one
    monitor key per network stays usable (a replaced secret left active would be a key nobody
    holds any more but that still opens the network).
    """
    if not endpoints:
        raise AtenetError(
            f"no node serves network {chain.state.name!r} and none is published in the store: "
            "start one with `atenet run` (or monitor with --token-file FILE)"
        )
    path = monitor_token_path(chain.network_id)
    old: AccessToken | None = None
    if path.exists():
        with contextlib.suppress(AtenetError, OSError):
            old = AccessToken.decode(path.read_text())
    await chain.catch_up()
    if old is not None and old.network_id == chain.network_id:
        key = chain.state.keys.get(old.key_id)
        usable = key is not None and key.usable(time.time()) and key.secret == old.secret
        if usable and set(old.endpoints) == set(endpoints):
            return old
        if usable and key is not None and key.label == MONITOR_LABEL:
            await owner.revoke_key(chain, old.key_id)
    token = await owner.export_key(chain, MONITOR_LABEL, endpoints)
    write_private(path, token.encode().encode())
    return token


# --------------------------------------------------------------------------- the asyncio shell

FrameSink = Callable[[bytes, int], None]
"""Called with each frame and its arrival time in nanoseconds since the epoch."""


class Monitor:
    """A passive port: joins with ``token`` and hands every frame it receives to ``sink``.

    It never seals a frame (so it cannot inject anything into the network); it sends only the
    client's control packets: hello, a ping every few seconds (which also keeps the node's port
    for it alive), and bye on exit.
    """

    def __init__(self, token: AccessToken, sink: FrameSink, count: int | None = None) -> None:
        self.token = token
        self.sink = sink
        self.count = count
        self.core = ClientCore(token, time.time_ns(), mirror=True)
        self.udp: UdpSocket | None = None
        self.frames = 0
        self.error: BaseException | None = None
        self._stop = asyncio.Event()

    def _send(self, packet: bytes) -> None:
        self.udp.send(packet, self.core.node)  # type: ignore[union-attr]

    @property
    def send_errors(self) -> int:
        return self.udp.send_errors if self.udp is not None else 0

    def _on_udp(self) -> None:
        udp = self.udp
        if udp is None or self._stop.is_set():
            return
        udp.receive(self._datagram, READ_BATCH)

    def _datagram(self, data: bytes, _addr: object) -> None:
        if self._stop.is_set():
            return
        now_ns = time.time_ns()  # per datagram, not per wake-up: a trace's gaps must be real
        frame = self.core.datagram(data, now_ns / 1e9)
        if frame is None:
            return
        try:
            self.sink(frame, now_ns)
        except Exception as exc:  # e.g. the pcap disk filled or stdout's reader went away
            self.error = exc
            self.stop()
            return
        self.frames += 1
        if self.count is not None and self.frames >= self.count:
            self.stop()

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # cancellation-safe, unlike wait_for on 3.11
                await self._stop.wait()

    async def run(
        self, wait: float = 10.0, on_connected: Callable[[dict[str, Any]], None] | None = None
    ) -> int:
        """Monitor until :meth:`stop` (or ``count`` frames); return the number of frames seen.

        Raises :class:`AtenetError` when no node answers within ``wait`` seconds, at the start
        or after the node in use went silent (a revoked key looks exactly like that).
        """
        loop = asyncio.get_running_loop()
        self.udp = UdpSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        loop.add_reader(self.udp.fileno(), self._on_udp)
        wait = max(wait, HELLO_TIMEOUT)
        try:
            lost_since: float | None = time.monotonic()
            announced = False
            while not self._stop.is_set():
                for packet in self.core.tick(time.time()):
                    self._send(packet)
                if self.core.config is None:
                    if lost_since is None:
                        lost_since = time.monotonic()
                    elif time.monotonic() - lost_since > wait:
                        raise no_answer(
                            self.core,
                            f"no node answered for {wait:g} s"
                            if not announced
                            else f"lost the network: no node answered for {wait:g} s",
                        )
                else:
                    lost_since = None
                    if not announced:
                        announced = True
                        if on_connected is not None:
                            on_connected(self.core.config)
                await self._wait_stop(0.05 if self.core.config is None else 0.5)
            if self.error is not None:
                raise self.error
            return self.frames
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Say bye (the node drops our port now rather than after 60 s idle), close the socket."""
        if self.udp is None:
            return
        with contextlib.suppress(Exception):
            if self.core.config is not None:
                self._send(self.core.control("bye", time.time()))
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.udp.fileno())
        self.udp.close()
        self.udp = None


def check_network_name(wanted: str, token: AccessToken, config: dict[str, Any]) -> None:
    """With --token, NETWORK must name the token's network (its name or an id prefix), so a
    mixed-up token is noticed instead of silently watching another network."""
    name = str(config.get("name", ""))
    hexid = token.network_id.hex()
    if wanted and wanted != name and not (len(wanted) >= 4 and hexid.startswith(wanted.lower())):
        raise AtenetError(f"the token is for network {name or '?'} ({hexid[:12]}), not {wanted!r}")


async def run_command(
    network: str | None,
    token_text: str | None,
    owner_token: Callable[[], Awaitable[AccessToken]],
    pcap: str | None,
    count: int | None,
    wait: float,
    as_json: bool,
) -> int:
    """The body of `tok monitor`: get a token, then trace until Ctrl-C or ``count`` frames.

    Frames go to stdout (text lines, JSON lines, or pcap with ``--pcap -``) and everything
    else to stderr, so the output can be piped into ``tshark -r -`` or a script untouched.
    Returns the number of frames seen.
    """
    if token_text:
        token = AccessToken.decode(token_text)
    elif network:
        try:
            token = await owner_token()
        except (NotAllowed, NotFound) as exc:
            raise type(exc)(
                f"{exc}; to monitor a network you do not own, pass --token-file FILE "
                "(or set ATENET_TOKEN)"
            ) from None
    else:
        raise AtenetError(
            "give the NETWORK to monitor (yours), or --token-file FILE (or ATENET_TOKEN)"
        )

    pcap_file: IO[bytes] | None = None
    writer: PcapWriter | None = None
    if pcap == "-":
        writer = PcapWriter(sys.stdout.buffer)
    elif pcap:
        try:
            pcap_file = open(pcap, "wb")  # noqa: SIM115 (closed in finally, after the loop)
        except OSError as exc:
            raise AtenetError(f"cannot write the pcap file: {exc}") from None
        writer = PcapWriter(pcap_file)

    out = sys.stdout

    def sink(frame: bytes, ts_ns: int) -> None:
        if writer is not None:
            writer.write(frame, ts_ns)
            return
        ts = ts_ns / 1e9
        summary = summarize(frame)
        if as_json:
            out.write(json.dumps(summary.to_json(ts), sort_keys=True) + "\n")
        else:
            out.write(summary.line(ts) + "\n")
        out.flush()  # one line per frame as it comes, also into a pipe or a log file

    def connected(config: dict[str, Any]) -> None:
        if network and token_text:
            check_network_name(network, token, config)
        host, port = monitor.core.node
        where = f"writing {pcap}" if pcap and pcap != "-" else "Ctrl-C to stop"
        print(
            f"monitoring {config.get('name') or token.network_hex} via node {host}:{port} "
            f"(key {token.key_id}): {where}",
            file=sys.stderr,
            flush=True,
        )

    monitor = Monitor(token, sink, count)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, monitor.stop)
    try:
        frames = await monitor.run(wait, connected)
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return monitor.frames
    except OSError as exc:
        raise AtenetError(f"monitor stopped: cannot write: {exc}") from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if pcap_file is not None:
            pcap_file.close()
    noun = "frame" if frames == 1 else "frames"
    print(f"{frames} {noun}" + (f" written to {pcap}" if pcap_file else ""), file=sys.stderr)
    return frames


__all__ = [
    "LINKTYPE_ETHERNET",
    "MONITOR_LABEL",
    "Monitor",
    "PcapWriter",
    "Summary",
    "TcpHeader",
    "check_network_name",
    "ethertype_name",
    "monitor_token",
    "run_command",
    "summarize",
]
