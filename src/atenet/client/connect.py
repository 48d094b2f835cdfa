"""`tok connect`: join this Linux host to a network through a TAP device.

The asyncio shell around :class:`~atenet.client.core.ClientCore`: one UDP socket to the node,
one TAP device, both read until empty on every wake-up. Addresses are derived by hash (see
docs/addressing.md) from the network id and this host's MAC, so every node and client agrees on
them without coordination.

With offloads (the default; ``tok connect --no-offload`` turns them off) the TAP has a
virtio-net header: the kernel hands over TCP super-frames of up to :data:`GSO_MAX_SIZE` bytes
with checksums left partial, and takes them back the same way, so one read, one seal and one
datagram carry what would otherwise be ~45 frames. See docs/protocol.md, "Offloaded packets".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from atenet.addressing import host_identity, ipv4_for, ipv6_for, stable_mac
from atenet.client.core import HELLO_TIMEOUT, ClientCore, no_answer
from atenet.offload import VNET_HDR_LEN
from atenet.overlay.fragment import MAX_SUPERFRAME
from atenet.overlay.seal import TYPE_SUPERFRAME
from atenet.overlay.token import AccessToken
from atenet.transport.tap import TapDevice, configure_link
from atenet.transport.udp import UdpSocket
from atenet.wire.arp import gratuitous_arp

log = logging.getLogger(__name__)

KEEPALIVE = 15.0
"""Seconds between gratuitous ARPs: they keep this host's port alive on the node (60 s idle)."""

READ_BATCH = 256

TAP_QUEUE = 64
"""Frames (or super-frames) the kernel queues on the TAP for us to read (its txqlen; 500-1000
by default). A TCP sender on this host fills whatever queue sits in front of the bottleneck;
keeping this one short keeps ping times under load low (the issue's measurement: 8-20 ms rtt
with a 1000-frame queue, 2.5-7 ms with a small one). On the bench the UDP socket buffers
(transport.udp) mattered more; this one is kept short so it never becomes the long queue."""

GSO_MAX_SIZE = MAX_SUPERFRAME - VNET_HDR_LEN - 4
"""Cap on the TAP's super-frames (the kernel's skb: the frame, Ethernet header included), so
that one sealed with its virtio-net header still fits one UDP GSO send of fragments (with room
for a VLAN tag): 62,944 bytes."""


@dataclass
class Connected:
    """What `tok connect` prints once the interface is up."""

    network: str
    node: str
    dev: str
    mac: str
    ipv4: str
    ipv6: str
    mtu: int


def host_key(dev: str) -> bytes:
    """What makes this host's MAC unique in a network: the machine id, the network namespace
    (containers and test namespaces share a machine id) and the device name (two connects on
    one host)."""
    try:
        netns = str(os.stat("/proc/self/ns/net").st_ino).encode()
    except OSError:
        netns = b""
    return host_identity() + b"/" + netns + b"/" + dev.encode()


class Connection:
    """A running `tok connect`."""

    def __init__(self, token: AccessToken, dev: str = "atenet0", *, offload: bool = True) -> None:
        """``offload``: open the TAP with a virtio-net header (TSO and checksum offload)."""
        self.token = token
        self.dev = dev
        self.offload = offload
        self.core = ClientCore(token, time.time_ns(), offload=offload)
        self.sock: socket.socket | None = None
        self.tap: TapDevice | None = None
        self.info: Connected | None = None
        self.mac = stable_mac(token.network_id, host_key(dev))
        self._stop = asyncio.Event()
        self.udp: UdpSocket | None = None

    @property
    def send_errors(self) -> int:
        return self.udp.send_errors if self.udp is not None else 0

    def _send(self, packet: bytes) -> None:
        self.udp.send(packet, self.core.node)  # type: ignore[union-attr]

    def _on_udp(self) -> None:
        udp = self.udp
        if udp is None:
            return
        now = time.time()
        receive = self.core.receive

        def to_tap(data: bytes, _addr: object) -> None:
            got = receive(data, now)
            tap = self.tap
            if got is not None and tap is not None:
                if got[0] == TYPE_SUPERFRAME:  # only sent to us because we said offload
                    tap.write_packet(got[1])
                else:
                    tap.write(got[1])

        udp.receive(to_tap, READ_BATCH)

    def _on_tap(self) -> None:
        tap = self.tap
        if tap is None:
            return
        send = self._send
        if tap.vnet_hdr:
            seal_packet = self.core.seal_packet
            for packet in tap.read_batch(READ_BATCH):
                for sealed in seal_packet(packet):
                    send(sealed)
        else:
            seal = self.core.seal_frame
            for frame in tap.read_batch(READ_BATCH):
                send(seal(frame))

    async def handshake(self, wait: float) -> dict[str, object]:
        """Say hello to the token's nodes in turn until one welcomes us, for ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while self.core.config is None:
            for packet in self.core.tick(time.time()):
                self._send(packet)
            if time.monotonic() > deadline:
                raise no_answer(self.core)
            await asyncio.sleep(0.05)
        return self.core.config

    async def run(self, wait: float = 10.0, on_connected: object = None) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp = UdpSocket(sock)
        self.sock = sock
        loop.add_reader(sock.fileno(), self._on_udp)
        try:
            config = await self.handshake(max(wait, HELLO_TIMEOUT))
            mtu = int(config.get("mtu") or 1380)
            cidr, cidr6 = str(config["cidr"]), str(config["cidr6"])
            ip4 = ipv4_for(self.token.network_id, self.mac, cidr)
            ip6 = ipv6_for(self.token.network_id, self.mac, cidr6)
            self.tap = TapDevice.open(self.dev, mtu=mtu, mac=self.mac, vnet_hdr=self.offload)
            await asyncio.to_thread(
                configure_link,
                self.tap.name,
                self.mac,
                mtu,
                [str(ip4)],
                [str(ip6)],
                gso_max_size=GSO_MAX_SIZE if self.offload else None,
                txqlen=TAP_QUEUE,
            )
            loop.add_reader(self.tap.fileno(), self._on_tap)
            host, port = self.core.node
            self.info = Connected(
                str(config.get("name", "")),
                f"{host}:{port}",
                self.tap.name,
                self.mac.hex(":"),
                str(ip4),
                str(ip6),
                mtu,
            )
            if on_connected is not None:
                on_connected(self.info)  # type: ignore[operator]
            await self._keepalive(ip4.ip)
        finally:
            await self.close()

    async def _keepalive(self, ip4: IPv4Address) -> None:
        """Gratuitous ARP every 15 s (stays subscribed), control pings, fail-over."""
        last_arp = 0.0
        node = self.core.node
        while not self._stop.is_set():
            now = time.time()
            if now - last_arp >= KEEPALIVE:
                self._send(self.core.seal_frame(gratuitous_arp(self.mac, ip4)))
                last_arp = now
            for packet in self.core.tick(now):
                self._send(packet)
            if self.core.node != node:
                log.warning("node %s:%d stopped answering; trying %s:%d", *node, *self.core.node)
                node = self.core.node
                last_arp = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # cancellation-safe, unlike wait_for on 3.11
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            with contextlib.suppress(Exception):
                if self.core.config is not None:
                    self._send(self.core.control("bye", time.time()))
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.tap is not None:
            loop.remove_reader(self.tap.fileno())
            self.tap.close()  # a non-persistent TAP device disappears with its fd
            self.tap = None
