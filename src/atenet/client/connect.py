"""`tok connect`: join this Linux host to a network through a TAP device.

The asyncio shell around :class:`~atenet.client.core.ClientCore`: one UDP socket to the node,
one TAP device, both read until empty on every wake-up. Addresses are derived by hash (see
docs/addressing.md) from the network id and this host's MAC, so every node and client agrees on
them without coordination.

With offloads (the default; ``tok connect --no-offload`` turns them off) the TAP has a
virtio-net header: the kernel hands over TCP super-frames of up to :data:`GSO_MAX_SIZE` bytes
with checksums left partial, and takes them back the same way, so one read, one seal and one
datagram carry what would otherwise be ~45 frames. See docs/protocol.md, "Offloaded packets".

While connected it says what happens to the link (docs/connect.md): a warning when the node stops
answering, the other endpoints of the token tried in turn, and after ``give_up`` seconds without
any answer an error (:class:`ConnectionLost`, exit code 4) instead of a silent TAP that leads
nowhere; ``give_up=None`` (``--persist``) retries forever. Each change is also an event for
``--json``, and a state file in the runtime dir (:mod:`atenet.client.runtime`) tells
`tok status`, `tok ping` and `tok disconnect` about this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from atenet.addressing import host_identity, ipv4_for, ipv6_for, stable_mac
from atenet.client import runtime
from atenet.client.core import (
    HELLO_TIMEOUT,
    ClientCore,
    LinkEvent,
    Liveness,
    endpoint_text,
    no_answer,
)
from atenet.client.dhcp import SELECTING, ClientLease, DhcpClient
from atenet.client.dhcp import Event as DhcpEvent
from atenet.client.dhcp import Send as DhcpSend
from atenet.errors import AtenetError
from atenet.fast import FAST, EngineHold
from atenet.offload import VNET_HDR_LEN
from atenet.overlay.fragment import MAX_SUPERFRAME
from atenet.overlay.seal import TYPE_FRAME, TYPE_SUPERFRAME
from atenet.overlay.token import AccessToken
from atenet.transport.tap import TapDevice, TapGone, configure_link, update_addresses
from atenet.transport.udp import UdpSocket
from atenet.wire.arp import gratuitous_arp
from atenet.wire.dhcp import is_dhcp_reply_frame

log = logging.getLogger(__name__)

GIVE_UP = 30.0
"""Default seconds without an answer from any endpoint after which a connected host exits."""

EXIT_NO_ANSWER = 3
"""Exit code: no node answered when connecting (``--wait``)."""

EXIT_LOST = 4
"""Exit code: connected, then no node answered for the give-up time (``--give-up``)."""

STATE_EVERY = 5.0
"""Seconds between refreshes of the state file while nothing else changes."""

PERSIST_REMINDER = 60.0
"""With --persist, seconds between the "still retrying" log lines while no node answers."""

ADDRESS_MODES = ("dhcp", "static", "none")
"""How `tok connect` gets its IPv4 address (``--address``): from the gateway by DHCP (falling
back to the hashed address), the hashed address, or none (for an external DHCP client)."""

DHCP_WAIT = 7.0
"""Seconds without a DHCP OFFER before falling back to the hashed address (DISCOVERs at 0, 1
and 3 s): ``--dhcp-wait``."""

ACK_WAIT = 10.0
"""Seconds past ``--dhcp-wait`` to wait for the ACK once an offer came (the gateway writes the
binding to the chain first; the server forgets a request it could not commit in 10 s)."""

MAX_ROUTES = 64
"""Most routes to routed networks installed on the TAP (option 121 and the welcome's)."""

ROUTE_KEYS = ("routes", "gateway", "gateway6")
"""The welcome's fields the routes depend on (followed on every pong)."""

ENGINE_ENV = "ATENET_ENGINE"
"""``ATENET_ENGINE=0`` turns the GIL-free engine off (and only it: the compiled fast path still
runs from the event loop), for A/B comparisons and to rule it out (docs/connect.md, "Fast
path")."""

EventSink = Callable[[str, dict[str, Any]], None]
"""Called with an event's kind (connected, node_lost, failover, reconnected) and its fields."""


class NoAnswer(AtenetError):
    """No node answered the hellos within ``--wait`` seconds."""

    exit_code = EXIT_NO_ANSWER


class ConnectionLost(AtenetError):
    """Connected, then no endpoint answered for the give-up time."""

    exit_code = EXIT_LOST


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
    network_id: str = ""
    key_id: int = 0
    address_source: str = "static"
    """Where ``ipv4`` came from: ``dhcp``, ``static`` (hashed) or ``none``."""
    lease: dict[str, Any] | None = None
    """With DHCP: the lease (:meth:`ClientLease.fields`: server, router, expiry, routes)."""
    address_note: str = ""
    """Why the address is not what ``--address`` asked for (the fallback's reason)."""


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

    def __init__(
        self,
        token: AccessToken,
        dev: str = "atenet0",
        *,
        offload: bool = True,
        give_up: float | None = GIVE_UP,
        on_event: EventSink | None = None,
        state_dir: Path | None = None,
        address: str = "dhcp",
        dhcp_wait: float = DHCP_WAIT,
        release: bool = False,
    ) -> None:
        """``offload``: open the TAP with a virtio-net header (TSO and checksum offload).
        ``give_up``: seconds without any answer before :class:`ConnectionLost` (None: never).
        ``on_event``: told of every link event. ``state_dir``: where to keep ``DEV.json``
        (None: no state file). ``address``: one of :data:`ADDRESS_MODES`. ``dhcp_wait``:
        seconds without a DHCP offer before the hashed address is used instead. ``release``:
        give the lease back on a clean stop (one more chain event; see docs/connect.md)."""
        if address not in ADDRESS_MODES:
            raise AtenetError(f"--address must be one of {', '.join(ADDRESS_MODES)}")
        self.token = token
        self.dev = dev
        self.offload = offload
        self.give_up = give_up
        self.on_event = on_event
        self.core = ClientCore(token, time.time_ns(), offload=offload)
        self.liveness = Liveness(self.core, give_up)
        self.sock: socket.socket | None = None
        self.tap: TapDevice | None = None
        self.info: Connected | None = None
        self.mac = stable_mac(token.network_id, host_key(dev))
        self._stop = asyncio.Event()
        self.udp: UdpSocket | None = None
        self.state_dir = state_dir
        self.state_file: Path | None = None
        self.started = time.time()
        self.connected_at = 0.0
        self._state_written = 0.0
        self._rtt_written = 0.0
        self.address = address
        self.dhcp_wait = dhcp_wait
        self.release = release
        self.dhcp: DhcpClient | None = None
        """The DHCP client while it runs (None: not using DHCP, or it gave up)."""
        self.lease: ClientLease | None = None
        self._dhcp_events: list[DhcpEvent] = []
        self.ip4: IPv4Interface | None = None
        """The IPv4 address configured on the TAP (None: none)."""
        self.routes: list[tuple[str, str]] = []
        """Routes to routed networks installed on the TAP: (destination, gateway)."""
        self.address_note = ""
        """Why the address is what it is, when that is not what was asked (the fallback)."""
        self._config: dict[str, Any] = {}
        self.fast = FAST
        """The compiled fast path for the two hops (None: pure Python; see "Fast path" in
        docs/connect.md)."""
        self._fast_node: tuple[str, int] | None = None
        self._fast_sockaddr: bytes | None = None
        """``_fast_node`` converted once for the C sender (None: not IPv4, the pure path)."""
        self._engine: Any = None
        """The GIL-free engine (``_fast.TokEngine``) while it watches the TAP and the socket in
        its own thread (None: the event loop's readers do; see :meth:`_engine_start`)."""
        self._engine_for: tuple[Any, ...] = ()
        """What the engine was set up with: (node, node_offload, sealer, opener)."""
        self._engine_wanted = False
        """Connected with a TAP: the engine runs whenever it can (an IPv4 node)."""
        self._engine_totals: dict[str, Any] | None = None
        """The counters of the last engine stopped (for the state file)."""
        self._engine_holds: tuple[EngineHold, EngineHold] | None = None
        """(TAP, socket): each keeps its fd on the loop while bulk flows after a hand-over."""

    @property
    def send_errors(self) -> int:
        return self.udp.send_errors if self.udp is not None else 0

    def _send(self, packet: bytes) -> None:
        self.udp.send(packet, self.core.node)  # type: ignore[union-attr]

    def _on_udp(self) -> None:
        """Frames from the node to the TAP; then, if any was written, the TAP at once.

        The kernel answers what it was handed (a ping's echo reply, a TCP ACK) inside the TAP
        write, so the answer is usually waiting by the time the write returns: reading it now
        saves the event loop's round trip (an epoll wake-up and a callback) on every
        request/response. Measured on the bench (1 node, 200 idle pings 50 ms apart, 4
        interleaved rounds): ping RTT p50 0.851 → 0.800 ms. When nothing is waiting it costs
        one TAP read that finds the queue empty.
        """
        udp = self.udp
        tap = self.tap
        if udp is None:
            return
        written = tap.counters.tx_frames if tap is not None else 0
        if self.fast is not None and tap is not None:
            self._on_udp_fast(udp, tap)
        else:
            self._on_udp_pure(udp)
        tap = self.tap
        if tap is not None and tap.counters.tx_frames != written:
            self._on_tap()

    def _on_udp_pure(self, udp: UdpSocket) -> None:
        now = time.time()
        receive = self.core.receive

        def to_tap(data: bytes, _addr: object) -> None:
            got = receive(data, now)
            tap = self.tap
            if got is not None and tap is not None:
                if got[0] == TYPE_SUPERFRAME:  # only sent to us because we said offload
                    tap.write_packet(got[1])
                elif self.dhcp is not None and is_dhcp_reply_frame(got[1]):
                    self._dhcp_run(self.dhcp.frame(bytes(got[1]), now))  # not the kernel's
                else:
                    tap.write(got[1])

        udp.receive(to_tap, READ_BATCH)

    def _on_tap(self) -> None:
        tap = self.tap
        if tap is None:
            return
        if self.fast is not None and self.udp is not None:
            node = self.core.node
            if node is not self._fast_node:
                self._fast_node = node
                self._fast_sockaddr = self.fast.tok_sockaddr(node)
            if self._fast_sockaddr is not None:
                self._on_tap_fast(tap, self.udp, self._fast_sockaddr)
                return
        send = self._send
        frames = tap.read_batch(READ_BATCH)
        udp = self.udp
        holding = udp is not None and len(frames) > 1 and udp.hold()  # one frame: sent at once
        try:
            if tap.vnet_hdr:
                seal_packet = self.core.seal_packet
                for packet in frames:
                    for sealed in seal_packet(packet):
                        send(sealed)
            else:
                seal = self.core.seal_frame
                for frame in frames:
                    send(seal(frame))
        finally:
            if holding:
                udp.release()  # type: ignore[union-attr]

    def _on_udp_fast(self, udp: UdpSocket, tap: TapDevice) -> None:
        """:meth:`_on_udp` in one C call per wake-up (``atenet._fast.tok_udp_to_tap``): it reads
        the socket until empty, opens each frame and writes it to the TAP, counting as the pure
        path does. What it hands back — a fragment and the rest of its GRO run, a control
        message, a sender's first packet — runs the pure path here, then C goes on; DHCP replies
        it opened come back in a list for the DHCP client."""
        fast = self.fast
        core = self.core
        now = time.time()
        dhcp_frames: list[bytes] | None = [] if self.dhcp is not None else None
        reads = 0
        try:
            while reads < READ_BATCH:
                n, back = fast.tok_udp_to_tap(  # type: ignore[union-attr]
                    udp.fileno(), tap.fileno(), tap.vnet_hdr, tap.counters, core,
                    dhcp_frames, now, READ_BATCH - reads,
                )  # fmt: skip
                reads += n
                if back is None:
                    break
                data, segment, addr = back
                for packet in udp.reassembler.feed(data, segment, addr):
                    self._deliver(core.receive(packet, now), now)
        except OSError as err:
            if err.errno == errno.EBADFD:
                raise TapGone(tap.name) from None
            raise
        finally:
            for frame in dhcp_frames or ():
                if self.dhcp is not None:
                    self._dhcp_run(self.dhcp.frame(frame, now))

    def _deliver(self, got: tuple[int, bytes] | None, now: float) -> None:
        """What :meth:`_on_udp`'s ``to_tap`` does with a :meth:`ClientCore.receive` result."""
        tap = self.tap
        if got is not None and tap is not None:
            if got[0] == TYPE_SUPERFRAME:
                tap.write_packet(got[1])
            elif self.dhcp is not None and is_dhcp_reply_frame(got[1]):
                self._dhcp_run(self.dhcp.frame(bytes(got[1]), now))
            else:
                tap.write(got[1])

    def _on_tap_fast(self, tap: TapDevice, udp: UdpSocket, sockaddr: bytes) -> None:
        """:meth:`_on_tap` in one C call per wake-up (``atenet._fast.tok_tap_to_udp``): it reads
        the TAP until empty, seals each frame and sends it to the node (a lone frame at once,
        several as UDP GSO runs). An offloaded packet it cannot send as one datagram comes back
        after everything before it left; :meth:`ClientCore.seal_packet` takes it here and C
        goes on, so the order on the wire is kept."""
        fast = self.fast
        core = self.core
        budget = READ_BATCH
        first = True
        try:
            while budget > 0:
                n, packet = fast.tok_tap_to_udp(  # type: ignore[union-attr]
                    tap.fileno(), tap.vnet_hdr, tap.counters, core.sealer, udp, udp.fileno(),
                    sockaddr, core.node_offload, budget, first,
                )  # fmt: skip
                if packet is None:
                    return
                budget -= n
                first = False
                holding = udp.hold()  # the frames of a segmented super-frame go as runs
                try:
                    for sealed in core.seal_packet(packet):
                        self._send(sealed)
                finally:
                    if holding:
                        udp.release()
        except OSError as err:
            if err.errno == errno.EBADFD:
                raise TapGone(tap.name) from None
            raise

    # ------------------------------------------------------------------ the GIL-free engine

    def _engine_start(self) -> bool:
        """Hand both hops' common case to a C thread (``_fast.TokEngine``) that never takes the
        GIL: the loop's readers on the TAP and the socket are replaced by one on the engine's
        hand-over eventfd (:meth:`_on_engine`). Only with the compiled fast path, not with
        ``ATENET_ENGINE=0``, and for an IPv4 node (the engine's sockaddr). True: it runs."""
        fast, tap, udp, core = self.fast, self.tap, self.udp, self.core
        if (
            fast is None
            or tap is None
            or udp is None
            or self._engine is not None
            or os.environ.get(ENGINE_ENV, "") == "0"
            or not hasattr(fast, "TokEngine")
        ):
            return False
        sealer, opener = core.sealer, core.opener
        cell = getattr(sealer, "_cell", None)
        sockaddr = fast.tok_sockaddr(core.node)
        if cell is None or sockaddr is None or sealer.key.fast is None or opener.key.fast is None:
            return False
        engine = fast.TokEngine(
            tap_fd=tap.fileno(),
            sock_fd=udp.fileno(),
            vnet=tap.vnet_hdr,
            offload=core.offload,
            network_id=self.token.network_id,
            key_id=self.token.key_id,
            seal_key=sealer.key.fast,
            counter=cell,
            prefix_frame=sealer._prefixes[TYPE_FRAME],
            prefix_super=sealer._prefixes[TYPE_SUPERFRAME],
            sender_id=sealer.sender_id,
            open_key=opener.key.fast,
            sockaddr=sockaddr,
            node_offload=core.node_offload,
            gso=udp.gso,
        )
        engine.set_windows(opener._windows)
        engine.start()  # first: if it cannot, the loop's readers stay (no callback runs meanwhile)
        loop = asyncio.get_running_loop()
        loop.remove_reader(tap.fileno())
        loop.remove_reader(udp.fileno())
        self._engine = engine
        self._engine_for = (core.node, core.node_offload, sealer, opener)
        loop.add_reader(engine.fileno(), self._on_engine)
        counters = tap.counters

        def resume_udp() -> None:
            engine.set_windows(self.core.opener._windows)
            engine.resume_udp()

        # Bulk: 64 KiB moved through the fd since the last check keeps it on the loop.
        self._engine_holds = (
            EngineHold(
                tap.fileno(), self._on_tap, engine.resume_tap, lambda: counters.rx_bytes >> 16
            ),
            EngineHold(
                udp.fileno(), self._on_udp_held, resume_udp, lambda: counters.tx_bytes >> 16
            ),
        )
        return True

    def _on_udp_held(self) -> None:
        """The socket while the engine lent it to the loop (a hand-over's drain, then bulk):
        today's read, without the TAP read after it (the TAP may be the engine's)."""
        if self.udp is not None and self.tap is not None:
            self._on_udp_fast(self.udp, self.tap)

    def _engine_stop(self, fallback: bool) -> None:
        """Stop and join the engine's thread (idempotent); fold its counters in. ``fallback``:
        the connection goes on, so what it handed over is handled and the loop's readers come
        back on the TAP and the socket."""
        engine = self._engine
        if engine is None:
            return
        self._engine = None
        for hold in self._engine_holds or ():
            hold.cancel()
        self._engine_holds = None
        loop = asyncio.get_running_loop()
        loop.remove_reader(engine.fileno())
        engine.stop()
        self._engine_fold(engine)
        self._engine_totals = engine.counters
        if not fallback:
            return
        tap_item, udp_item = engine.take()
        now = time.time()
        if udp_item is not None:
            self._engine_udp_item(udp_item, now)
        if tap_item is not None:
            self._engine_tap_item(tap_item)
        if self.tap is not None:
            loop.add_reader(self.tap.fileno(), self._on_tap)
        if self.sock is not None:
            loop.add_reader(self.sock.fileno(), self._on_udp)

    def _engine_fold(self, engine: Any) -> None:
        """Add what the engine counted since the last fold to the Python objects' counters (the
        TAP's, the socket's send errors, the core's drops and last answer)."""
        d = engine.sync()
        tap = self.tap
        if tap is not None:
            c = tap.counters
            c.rx_frames += d["rx_frames"]
            c.rx_bytes += d["rx_bytes"]
            c.rx_batches += d["rx_batches"]
            c.tx_frames += d["tx_frames"]
            c.tx_bytes += d["tx_bytes"]
            c.tx_dropped += d["tx_dropped"]
            c.tx_errors += d["tx_errors"]
        if self.udp is not None:
            self.udp.send_errors += d["send_errors"]
            if d["gso_off"]:  # the kernel refused UDP GSO to the engine: no runs here either
                self.udp.gso = False
        core = self.core
        for reason, n in d["drops"].items():
            core.drops[reason] += n
        if d["last_heard"] > core.last_heard:
            core.last_heard = d["last_heard"]

    def _engine_sync(self) -> None:
        """Fold the engine's counters in and keep it in step with the core: a new node (fail-
        over) or a node that now takes offloaded packets is told to it; a node it cannot send
        to (not IPv4) stops it, and the loop's readers take over until an IPv4 node is back."""
        engine = self._engine
        if engine is None:
            if self._engine_wanted:
                self._engine_start()
            return
        self._engine_fold(engine)
        core = self.core
        now_for = (core.node, core.node_offload, core.sealer, core.opener)
        if now_for == self._engine_for:
            return
        if now_for[2:] != self._engine_for[2:]:  # new keys: a new engine
            self._engine_stop(fallback=True)
            self._engine_start()
            return
        sockaddr = self.fast.tok_sockaddr(core.node)  # type: ignore[union-attr]
        if sockaddr is None:
            self._engine_stop(fallback=True)
            return
        engine.set_node(sockaddr, core.node_offload)
        self._engine_for = now_for

    def _on_engine(self) -> None:
        """The engine handed an fd over: run today's path on what it read, drain that fd with
        today's code until it is empty, then give the fd back to the engine — so the order per
        fd is kept and bulk traffic (super-frames, GRO runs) runs as it always did."""
        engine = self._engine
        if engine is None:
            return
        tap_item, udp_item = engine.take()
        try:
            if udp_item is not None:
                try:
                    now = time.time()
                    self._engine_udp_item(udp_item, now)
                    self._on_udp_held()
                finally:
                    if self._engine is engine and self._engine_holds is not None:
                        self._engine_holds[1].hold()  # resume_udp once quiet
        finally:
            try:
                if tap_item is not None:
                    try:
                        self._engine_tap_item(tap_item)
                        self._on_tap()
                    finally:
                        if self._engine is engine and self._engine_holds is not None:
                            self._engine_holds[0].hold()  # resume_tap once quiet
            finally:
                if self._engine is engine:
                    self._engine_sync()

    def _engine_udp_item(self, item: tuple[Any, ...], now: float) -> None:
        """What the engine read from the socket and left to Python: a datagram, or what is left
        of a GRO run from one on, for the reassembler and :meth:`ClientCore.receive` (fed as a
        fresh read would be); or a DHCP reply it opened, or an error writing a frame it opened
        to the TAP, each with the rest of its GRO run (unopened, handled after it: nothing is
        lost and nothing opened twice, which would count as a replay)."""
        udp = self.udp
        if udp is None:
            return
        kind = item[0]
        if kind == "raw":
            self._engine_feed(item[1:], now)
        elif kind == "frame":
            self._deliver((TYPE_FRAME, item[1]), now)
            self._engine_feed(item[2], now)
        else:
            self._engine_feed(item[2], now)  # the one refused is lost, as on the GIL-held path
            self._raise_tap_error(item[1])

    def _engine_feed(self, run: tuple[bytes, int, Any] | None, now: float) -> None:
        """Datagrams the engine read and did not open, ``(data, segment, addr)`` (``segment``
        0: one datagram), through the reassembler to :meth:`ClientCore.receive`."""
        udp = self.udp
        if run is None or udp is None:
            return
        data, segment, addr = run
        core = self.core
        for packet in udp.reassembler.feed(data, segment, addr):
            self._deliver(core.receive(packet, now), now)

    def _engine_tap_item(self, item: tuple[Any, ...]) -> None:
        """What the engine read from the TAP and left to Python (a packet that needs fragments
        or segmenting, ...): sealed and sent as :meth:`_on_tap` would have."""
        if item[0] == "error":
            self._raise_tap_error(item[1])
        packet = item[1]
        tap, udp = self.tap, self.udp
        if tap is None or udp is None:
            return
        if not tap.vnet_hdr:
            self._send(self.core.seal_frame(packet))
            return
        holding = udp.hold()  # the frames of a segmented super-frame go as runs
        try:
            for sealed in self.core.seal_packet(packet):
                self._send(sealed)
        finally:
            if holding:
                udp.release()

    def _raise_tap_error(self, code: int) -> None:
        """The error TapDevice raises for ``code`` on a read or write (EBADFD: the TAP is gone)."""
        if code == errno.EBADFD:
            raise TapGone(self.tap.name if self.tap is not None else self.dev)
        raise OSError(code, os.strerror(code))

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # cancellation-safe, unlike wait_for on 3.11
                await self._stop.wait()

    async def handshake(self, wait: float) -> dict[str, object] | None:
        """Say hello to the token's nodes in turn until one welcomes us, for ``wait`` seconds
        (forever, saying so once, with no give-up time). None when stopped meanwhile."""
        deadline = time.monotonic() + wait
        warned = False
        while self.core.config is None:
            if self._stop.is_set():
                return None
            for packet in self.core.tick(time.time()):
                self._send(packet)
            if time.monotonic() > deadline and not warned:
                if self.give_up is not None:
                    raise NoAnswer(str(no_answer(self.core, f"no node answered for {wait:g} s")))
                log.warning(
                    "no node answered for %g s (tried %s); retrying until one answers (--persist)",
                    wait,
                    self._endpoints(),
                )
                warned = True
            await self._wait_stop(0.05)
        return self.core.config

    def _endpoints(self) -> str:
        return ", ".join(endpoint_text(e) for e in self.core.endpoints)

    async def run(self, wait: float = 10.0, on_connected: object = None) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp = UdpSocket(sock)
        self.sock = sock
        loop.add_reader(sock.fileno(), self._on_udp)
        try:
            config = await self.handshake(max(wait, HELLO_TIMEOUT))
            if config is None:
                return
            mtu = int(config.get("mtu") or 1380)  # type: ignore[call-overload]
            cidr, cidr6 = str(config["cidr"]), str(config["cidr6"])
            self._config = dict(config)
            static4 = ipv4_for(self.token.network_id, self.mac, cidr)
            ip6 = ipv6_for(self.token.network_id, self.mac, cidr6)
            self.tap = TapDevice.open(self.dev, mtu=mtu, mac=self.mac, vnet_hdr=self.offload)
            await asyncio.to_thread(
                configure_link,
                self.tap.name,
                self.mac,
                mtu,
                [],
                [str(ip6)],
                gso_max_size=GSO_MAX_SIZE if self.offload else None,
                txqlen=TAP_QUEUE,
            )
            loop.add_reader(self.tap.fileno(), self._on_tap)
            self._engine_wanted = True
            self._engine_start()
            source = await self._first_address(static4)
            if source is None:  # stopped meanwhile
                return
            self.info = Connected(
                str(config.get("name", "")),
                endpoint_text(self.core.node),
                self.tap.name,
                self.mac.hex(":"),
                str(self.ip4) if self.ip4 is not None else "",
                str(ip6),
                mtu,
                self.token.network_id.hex(),
                self.token.key_id,
                source,
                self.lease.fields() if self.lease is not None else None,
                self.address_note,
            )
            self.connected_at = time.time()
            if self.state_dir is not None:
                self.state_file = runtime.state_path(self.tap.name, self.state_dir)
                self._write_state(self.connected_at)
            if on_connected is not None:
                on_connected(self.info)  # type: ignore[operator]
            self._emit("connected", asdict(self.info))
            await self._keepalive()
        finally:
            await self.close()

    # ------------------------------------------------------------------ IPv4 by DHCP

    async def _first_address(self, static4: IPv4Interface) -> str | None:
        """Configure the TAP's IPv4 as ``--address`` says; returns where it came from
        (None: stopped meanwhile).

        DHCP runs only when the node's welcome says its gateway answers (``"dhcp": 1``): an
        older node, or a network without a gateway, would only make us wait. Without an offer
        within ``dhcp_wait`` seconds the hashed address is used, and one line says why.
        """
        config = self._config
        if self.address == "none":
            await self._set_routes(None)
            return "none"
        if self.address == "dhcp" and config.get("dhcp") == 1:
            lease = await self._acquire(static4.network)
            if self._stop.is_set():
                return None
            if lease is not None:
                await self._apply_lease(lease)
                return "dhcp"
            log.warning(
                "%s from the gateway %s: using the hashed static address %s (--dhcp-wait "
                "SECONDS to wait longer, --static to skip DHCP)",
                self.address_note,
                config.get("gateway") or "?",
                static4,
            )
        elif self.address == "dhcp":
            self.address_note = "the node offers no DHCP"
            log.info(
                "node %s offers no DHCP (an older node, or a network without a gateway): using "
                "the hashed static address %s",
                endpoint_text(self.core.node),
                static4,
            )
        await self._set_ipv4(static4)
        await self._set_routes(None)
        return "static"

    async def _acquire(self, network: IPv4Network) -> ClientLease | None:
        """Run the DHCP client until it is bound; None (and :attr:`address_note` says why)
        when no offer came in ``dhcp_wait`` s, or an offer came but no ACK within
        :data:`ACK_WAIT` s more (the gateway may refuse to commit a binding: its per-host
        rate limit)."""
        client = DhcpClient(self.mac, host=self.core.host, network=network)
        self.dhcp = client
        start = time.time()
        self._dhcp_run(client.start(start))
        while not self._stop.is_set():
            now = time.time()
            self._dhcp_run(client.tick(now))
            self._engine_sync()
            for packet in self.core.tick(now):
                self._send(packet)
            self._engine_sync()
            events, self._dhcp_events = self._dhcp_events, []
            for event in events:
                if event.kind == "bound" and event.lease is not None:
                    log.info(
                        "DHCP: %s from %s in %.2f s (lease %.0f s)",
                        event.lease.interface,
                        event.lease.server,
                        now - start,
                        event.lease.lease_time,
                    )
                    return event.lease
            waited = now - start
            if client.state == SELECTING and waited >= self.dhcp_wait:
                offered = client.counters["offers"]
                self.address_note = (
                    f"no DHCP offer in {self.dhcp_wait:g} s"
                    if not offered
                    else f"no DHCP ACK in {waited:.0f} s"
                )
                break
            if waited >= self.dhcp_wait + ACK_WAIT:
                self.address_note = f"DHCP offer, but no ACK in {waited:.0f} s"
                break
            await self._wait_stop(0.05)
        client.stop()
        self.dhcp = None
        return None

    def _dhcp_run(self, actions: list[DhcpSend | DhcpEvent]) -> None:
        """Send the client's frames (sealed as if from the TAP); keep its events for the loop."""
        for action in actions:
            if isinstance(action, DhcpSend):
                self._send(self.core.seal_frame(action.frame))
            else:
                self._dhcp_events.append(action)

    async def _apply_lease(self, lease: ClientLease) -> None:
        self.lease = lease
        await self._set_ipv4(lease.interface)
        await self._set_routes(lease)

    async def _on_dhcp_events(self) -> bool:
        """Act on what the DHCP client said since the last call; True: the address changed."""
        events, self._dhcp_events = self._dhcp_events, []
        changed = False
        for event in events:
            lease = event.lease
            if event.kind in ("bound", "renewed") and lease is not None:
                changed |= event.kind == "bound"
                if event.kind == "bound":
                    was = f" (was {self.ip4})" if self.ip4 is not None else ""
                    log.warning("DHCP: address %s from %s%s", lease.interface, lease.server, was)
                await self._apply_lease(lease)
                if self.info is not None:
                    self.info.ipv4 = str(lease.interface)
                    self.info.lease = lease.fields()
                self._emit("dhcp", {"state": event.kind, **lease.fields()})
            elif event.kind == "lost":
                changed = True
                old = self.ip4
                self.lease = None
                await self._set_ipv4(None)
                await self._set_routes(None)
                if self.info is not None:
                    self.info.ipv4 = ""
                    self.info.lease = None
                if event.reason != "released":
                    log.warning(
                        "DHCP: lease of %s lost (%s): no IPv4 address until the gateway answers",
                        old,
                        event.reason,
                    )
                self._emit("dhcp", {"state": "lost", "ipv4": str(old or ""), "why": event.reason})
            elif event.kind == "no_answer":
                log.debug("DHCP: %s", event.reason)
        return changed

    async def _follow_routes(self) -> bool:
        """Every pong repeats the welcome: when the routed networks (or the gateway) changed
        — a route added or removed, or its other network loaded by the node only after we
        connected — install the new set. True: the routes changed."""
        config = self.core.config
        if config is None:
            return False
        fresh = {k: config.get(k) for k in ROUTE_KEYS}
        if fresh == {k: self._config.get(k) for k in ROUTE_KEYS}:
            return False
        self._config.update(fresh)
        before = self.routes
        await self._set_routes(self.lease)
        return self.routes != before

    async def _set_ipv4(self, iface: IPv4Interface | None) -> None:
        """Make ``iface`` the TAP's only IPv4 address (None: no IPv4), and its routes with it."""
        if iface == self.ip4 or self.tap is None:
            return
        old = self.ip4
        v4 = [r for r in self.routes if "." in r[0]]  # they go with the address they need
        try:
            await asyncio.to_thread(
                update_addresses,
                self.tap.name,
                remove=[str(old)] if old is not None else [],
                add=[str(iface)] if iface is not None else [],
                routes_remove=v4,
            )
        except AtenetError as exc:
            log.warning("cannot set %s's IPv4 address to %s: %s", self.tap.name, iface, exc)
            return
        self.ip4 = iface
        self.routes = [r for r in self.routes if r not in v4]

    async def _set_routes(self, lease: ClientLease | None) -> None:
        """Install routes to the routed networks, and the default route when the lease offers
        one (:func:`routes_for`); a renewal without it takes it away."""
        if self.tap is None:
            return
        want = routes_for(self._config, self.ip4, lease)
        if want == self.routes:
            return
        old = [r for r in self.routes if r not in want]
        try:
            await asyncio.to_thread(
                update_addresses, self.tap.name, routes_remove=old, routes_add=want
            )
        except AtenetError as exc:
            log.warning("cannot install the routes %s on %s: %s", want, self.tap.name, exc)
            return
        self.routes = want

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)

    async def _keepalive(self) -> None:
        """Gratuitous ARP every 15 s (stays subscribed), control pings, fail-over, liveness,
        DHCP renewals."""
        last_arp = 0.0
        last_reminder = 0.0
        while not self._stop.is_set():
            now = time.time()
            self._engine_sync()  # its last answers count before the core's tick looks
            if self.dhcp is not None:
                self._dhcp_run(self.dhcp.tick(now))
            if self._dhcp_events and await self._on_dhcp_events():
                last_arp = 0.0  # a new address: tell the LAN at once
                self._write_state(now)
            if await self._follow_routes():
                self._write_state(now)
            if now - last_arp >= KEEPALIVE:
                # Without an IPv4 address (none, or a lost lease) the announcement says 0.0.0.0,
                # which no neighbour takes as a claim; the node's switch still learns our MAC.
                ip4 = self.ip4.ip if self.ip4 is not None else IPv4Address(0)
                self._send(self.core.seal_frame(gratuitous_arp(self.mac, ip4)))
                last_arp = now
            for packet in self.core.tick(now):
                self._send(packet)
            self._engine_sync()  # a fail-over changed the node: tell the engine
            events = self.liveness.check(now)
            for event in events:
                self._on_link_event(event, now)
                if event.kind == "reconnected":
                    last_arp = 0.0  # tell the new node (and the LAN) where we are, now
                elif event.kind == "node_lost":
                    last_reminder = now
            persisting = not self.liveness.answering and self.give_up is None
            if persisting and now - last_reminder >= PERSIST_REMINDER:
                last_reminder = now
                log.warning(
                    "still no answer from any node for %.0f s (tried %s); retrying (--persist)",
                    now - self.core.last_heard,
                    self._endpoints(),
                )
            if (
                events
                or self.core.rtt_at != self._rtt_written
                or now - self._state_written >= STATE_EVERY
            ):
                self._write_state(now)
            await self._wait_stop(0.5)

    def _on_link_event(self, event: LinkEvent, now: float) -> None:
        """Log an event (one line on stderr), hand it to ``on_event``; raise on ``gave_up``."""
        f = event.fields
        if event.kind == "gave_up":
            name = self.info.network if self.info is not None else ""
            what = f"lost network {name}" if name else "lost the network"
            silent = f"{what}: no node answered for {f['silent']:.0f} s"
            raise ConnectionLost(str(no_answer(self.core, silent)))
        if event.kind == "node_lost":
            again = f["next"] == f["node"]
            trying = "trying it again" if again else f"trying {f['next']}"
            if self.give_up is None:
                then = "and retrying every endpoint until one answers (--persist)"
            else:
                then = (
                    f"giving up after {self.give_up:g} s without an answer (--give-up SECONDS, "
                    "or --persist to retry forever)"
                )
            log.warning(
                "node %s stopped answering (no answer for %.0f s); %s, %s",
                f["node"],
                f["silent"],
                trying,
                then,
            )
            f = {**f, "give_up": self.give_up}
        elif event.kind == "failover":
            log.info("trying node %s", f["to"])
        elif event.kind == "reconnected":
            log.warning("node %s answers: reconnected after %.0f s", f["node"], f["after"])
            if self.info is not None:
                self.info.node = f["node"]
        self._emit(event.kind, f)

    def state(self, now: float) -> dict[str, Any]:
        """What the state file holds (docs/connect.md, "Files")."""
        core = self.core
        engine = self._engine
        if engine is not None:
            self._engine_fold(engine)
        info = asdict(self.info) if self.info is not None else {}
        return {
            **info,
            "pid": os.getpid(),
            "netns": runtime.netns_id(),
            "node": endpoint_text(core.node),
            "endpoints": [endpoint_text(e) for e in core.endpoints],
            "state": "answering" if self.liveness.answering else "lost",
            "last_answer": round(core.last_heard, 3) if core.last_heard else None,
            "rtt_ms": round(core.rtt * 1000, 3) if core.rtt is not None else None,
            "rtt_at": round(core.rtt_at, 3) if core.rtt_at else None,
            "give_up": self.give_up,
            "routes": [f"{dst} via {via}" for dst, via in self.routes],
            "dhcp": dict(self.dhcp.counters) if self.dhcp is not None else None,
            "failovers": core.failovers,
            "drops": dict(core.drops),
            "tap": asdict(self.tap.counters) if self.tap is not None else None,
            "engine": "on" if engine is not None else "off",
            "engine_counters": engine.counters if engine is not None else self._engine_totals,
            "started": round(self.started, 3),
            "connected": round(self.connected_at, 3),
            "updated": round(now, 3),
        }

    def _write_state(self, now: float) -> None:
        self._state_written = now
        self._rtt_written = self.core.rtt_at
        if self.state_file is None:
            return
        try:
            runtime.write_state(self.state_file, self.state(now))
        except OSError as exc:  # a full /run must not take the link down
            log.debug("cannot write %s: %s", self.state_file, exc)

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        self._engine_wanted = False
        self._engine_stop(fallback=False)  # its thread is gone before the fds it reads close
        if self.state_file is not None:
            with contextlib.suppress(OSError):
                runtime.remove_state(self.state_file, os.getpid())
            self.state_file = None
        if self.sock is not None:
            with contextlib.suppress(Exception):
                if self.dhcp is not None and self.release:  # give it back (RFC 2131 §4.4.6)
                    self._dhcp_run(self.dhcp.release(time.time()))
                self.dhcp = None
                if self.core.config is not None:
                    self._send(self.core.control("bye", time.time()))
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.tap is not None:
            loop.remove_reader(self.tap.fileno())
            self.tap.close()  # a non-persistent TAP device disappears with its fd
            self.tap = None


def routes_for(
    config: dict[str, Any], ip4: IPv4Interface | None, lease: ClientLease | None
) -> list[tuple[str, str]]:
    """The routes a host installs: to each routed network, via the gateway — the welcome's
    ``routes`` and, with DHCP, option 121's — and a default route only when the DHCP lease
    offers one (the network has internet access: option 3, or 0.0.0.0/0 in option 121, which
    RFC 3442 says replaces option 3), installed with a high metric (transport/tap.py
    ``DEFAULT_ROUTE_METRIC``) so a host's own uplink keeps winning. Nothing for the network's
    own CIDR (the address's prefix covers it), nothing whose gateway is not on the link. IPv4
    routes need an IPv4 address; IPv6 routes go via the welcome's ``gateway6`` (an IPv6
    default route comes from the gateway's router advertisements, installed by the kernel).
    At most :data:`MAX_ROUTES`."""
    via4: IPv4Address | None = None
    if lease is not None:
        via4 = lease.router or lease.server
    elif config.get("gateway"):
        with contextlib.suppress(ValueError):
            via4 = IPv4Address(str(config["gateway"]))
    via6 = str(config.get("gateway6") or "")
    candidates: list[tuple[IPv4Network | IPv6Network, str]] = []
    default: tuple[str, str] | None = None
    if lease is not None:
        candidates += [(net, str(via)) for net, via in lease.routes if net.prefixlen]
        offered = [str(via) for net, via in lease.routes if not net.prefixlen]
        if lease.routes:
            default = ("0.0.0.0/0", offered[0]) if offered else None
        elif lease.router is not None:
            default = ("0.0.0.0/0", str(lease.router))
    welcome = config.get("routes")
    for text in welcome if isinstance(welcome, list) else []:
        try:
            net = ip_network(str(text))
        except ValueError:
            continue
        via = str(via4) if net.version == 4 and via4 is not None else via6
        candidates.append((net, via))
    own6: IPv6Network | None = None
    with contextlib.suppress(ValueError):
        own6 = IPv6Network(str(config.get("cidr6") or ""))
    out: list[tuple[str, str]] = []
    for net, via in candidates:
        if net.prefixlen == 0 or not via:
            continue
        if net.version == 4:
            if ip4 is None or net.overlaps(ip4.network) or IPv4Address(via) not in ip4.network:
                continue
        else:
            if own6 is None or net.overlaps(own6) or ":" not in via:
                continue
            with contextlib.suppress(ValueError):
                if ip_network(via).network_address not in own6:
                    continue
        route = (str(net), via)
        if route not in out:
            out.append(route)
    if default is not None and ip4 is not None and IPv4Address(default[1]) in ip4.network:
        out.insert(0, default)
    return out[:MAX_ROUTES]
