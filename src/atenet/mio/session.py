"""The node's side of one mio bus session, sans-I/O: bus messages ↔ stack sockets.

A :class:`Session` owns one stack :class:`~atenet.stack.Interface` (with its
:class:`~atenet.stack.tcp.Tcp`) and the program's sockets on it. The shell (node/mio.py) feeds
it three things — bus messages from the WebSocket (:meth:`Session.bus_in`), frames from the
switch port (:meth:`Session.frame_in`) and ``now`` — and after each batch calls
:meth:`Session.poll`, which returns the frames for the switch and the bus messages for the
program; :meth:`Session.poll_at` says when to call it again without new input. Nothing here
reads a clock, so every rule below is tested frame by frame (tests/test_mio_session.py).

Why credits and not just buffers: the node serves many programs, so it must never hold more for a
program than a fixed bound, however slow the program is. Per TCP socket and direction:

* node → program: the node reads from the TCP connection's receive buffer only while it holds
  the program's credit (the welcome's ``window`` to start, ``CREDIT`` for more). A program that
  stops reading stops granting; the receive buffer fills, the advertised TCP window closes and the
  remote sender waits — nothing else grows. Bytes handed to the shell but not yet written to the
  WebSocket count too (:attr:`Session.unsent`): above ``max_unsent`` no socket is read at all.
* program → node: the node grants ``window`` bytes in ``CONNECTED``/``ACCEPT`` and grants again
  only what the TCP send buffer took, so what waits at the node (``pending``) plus the credit
  outstanding never exceeds ``window``. ``DATA`` beyond the credit breaks the protocol: the socket
  is reset and closed with EPROTO.

Malformed or misdirected messages are dropped and counted (:attr:`Session.counters`); the
program is told with ``ERROR``/EPROTO, and after ``max_bad`` of them :attr:`Session.failed` says
why the shell should end the session. Nothing a program sends raises out of this module.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address
from typing import Any, ClassVar

from atenet.errors import DecodeError
from atenet.mio import bus, dns
from atenet.mio.bus import ACCEPTED_ID_BIT, Endpoint
from atenet.offload import VNET_HDR_LEN
from atenet.overlay.fragment import MAX_SUPERFRAME
from atenet.stack.iface import AddressEvent, EchoReply, Interface, UdpSocket
from atenet.stack.tcp import CLOSED, SYN_RECEIVED, SYN_SENT, TIME_WAIT, Connection, Listener, Tcp

__all__ = ["Limits", "Session"]

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-session bounds; each has a counter in :attr:`Session.counters` when it bites.

    Memory a session can hold is bounded by its connections × (``tcp_buffer`` receive +
    ``tcp_buffer`` send + ``window`` pending) plus ``max_unsent``; new sockets are refused
    once it holds ``max_buffered``, so only connections made before that can add to it
    (see docs/mio.md).
    """

    max_sockets: int = 1024
    """TCP connections, listeners and UDP sockets together (EMFILE beyond)."""
    window: int = 256 * 1024
    """Per-socket credit each way (the welcome says it; CONNECTED/ACCEPT grant it)."""
    tcp_buffer: int = 256 * 1024
    """The stack's TCP receive and send buffer per connection."""
    max_buffered: int = 64 * 1024 * 1024
    """Bytes the session may hold (:attr:`Session.buffered`) before it refuses new sockets
    (ENOBUFS; accepted connections are reset): the sockets it has keep their own bounds."""
    max_unsent: int = 4 * 1024 * 1024
    """Bytes of bus messages handed to the shell but not yet on the WebSocket."""
    unsent_slack: int = 1024 * 1024
    """Bytes of answers (BOUND, PONG, ERROR…) allowed beyond ``max_unsent`` before the
    session is ended: a program that keeps asking but reads nothing."""
    max_pings: int = 32
    """Echo requests waiting for answers (ENOBUFS beyond)."""
    connect_timeout: float = 30.0
    """CONNECT's default timeout (the message may ask for less or more, up to 120 s)."""
    max_bad: int = 64
    """Malformed or misdirected messages before the session is ended."""
    max_lookups: int = 16
    """RESOLVE requests waiting for the network's DNS server (ENOBUFS beyond)."""
    dns_timeout: float = 2.0
    """Seconds before a DNS query is sent again (to the next server); three tries in all."""


# errno → the one-line reason the program sees in CLOSE/ERROR
TSO_BYTES = MAX_SUPERFRAME - VNET_HDR_LEN - 4 - 14 - 40 - 60
"""TCP payload per super-segment of a session (62,830 bytes): the packet (virtio-net header,
Ethernet with room for a VLAN tag, IPv6, the largest TCP header) must still fit one sealed
overlay packet, so a switch can hand it whole to a `tok connect` host or a peer node."""

_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "no route to host",
}


class _Tcp:
    """One TCP socket of the program (an active open, or a connection a listener accepted)."""

    __slots__ = (
        "closing",
        "conn",
        "credit_in",
        "credit_out",
        "deadline",
        "eof_sent",
        "established",
        "id",
        "owed_in",
        "pending",
        "shut_done",
        "shut_wanted",
    )

    def __init__(self, ident: int, conn: Connection, window: int) -> None:
        self.id = ident
        self.conn = conn
        self.credit_out = window  # bytes the program lets us send it (its grant)
        self.credit_in = 0  # bytes we let the program send (our grant, set when established)
        self.owed_in = 0  # bytes the send buffer took since our last CREDIT
        self.pending = bytearray()  # program DATA the send buffer had no room for yet
        self.deadline: float | None = None  # connect timeout
        self.established = False
        self.eof_sent = False
        self.shut_wanted = False  # program SHUTDOWN (or CLOSE): FIN once pending is out
        self.shut_done = False
        self.closing = False  # program CLOSE: close the connection once pending is out


class _Lookup:
    """One RESOLVE: A and AAAA questions from a UDP socket of the session's own."""

    __slots__ = ("deadline", "found", "id", "server", "sock", "tries", "txids", "wire")

    def __init__(self, ident: int, wire: bytes, sock: UdpSocket) -> None:
        self.id = ident
        self.wire = wire
        self.sock = sock
        self.txids: dict[int, int] = {}  # transaction id → qtype still unanswered
        self.found: list[IPAddress] = []
        self.deadline = 0.0
        self.tries = 0
        self.server = 0


class Session:
    """One program's bus session on one stack interface (see the module docstring)."""

    def __init__(
        self,
        mac: bytes,
        mtu: int,
        now: float,
        *,
        ipv4: IPv4Interface | None = None,
        gateway4: IPv4Address | None = None,
        ipv6: IPv6Interface | None = None,
        gateway6: IPv6Address | None = None,
        dhcp: bool = False,
        dns: Sequence[IPAddress] = (),
        limits: Limits | None = None,
        seed: int | None = None,
        tso: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self.tso = tso
        """The port takes offloads: :meth:`poll` and :meth:`close` return virtio-net packets
        (TCP leaves as 64 KB super-segments, docs/stack.md "Offloads") and the shell hands
        offloaded packets to :meth:`packet_in`."""
        lim = self.limits
        mtu = max(1280, min(mtu or 1500, 65535))
        self.tcp = Tcp(
            mss=mtu - 60,
            recv_buffer=lim.tcp_buffer,
            send_buffer=lim.tcp_buffer,
            max_connections=lim.max_sockets + 512,  # + room for TIME-WAIT and closing ones
            seed=seed,
        )
        self.iface = Interface(
            mac, mtu, ipv4=ipv4, gateway4=gateway4, slaac=False, tcp=self.tcp,
            max_sockets=lim.max_sockets, tso=tso,
        )  # fmt: skip
        if tso:
            self.tcp.tso = TSO_BYTES
        if ipv6 is not None:
            self.iface.add_ipv6(ipv6)
            self.iface.gateway6 = gateway6
        if dhcp:
            self.iface.start_dhcp(now)
        self.counters: Counter[str] = Counter()
        self.failed: str | None = None
        """Set when the session must end (too many bad messages): the reason, for the log."""
        self.unsent = 0
        """Bytes of bus messages returned by :meth:`poll` that the shell has not yet written
        (it reports them with :meth:`written`)."""
        self._out: list[bytes] = []
        self._tcp: dict[int, _Tcp] = {}
        self._by_conn: dict[Connection, _Tcp] = {}
        self._closing: set[_Tcp] = set()  # closed by the program, still flushing pending
        self._listeners: dict[int, Listener] = {}
        self._udp: dict[int, UdpSocket] = {}
        self._pings: dict[tuple[int, int], tuple[int, float]] = {}  # (ident, seq) → (id, sent)
        self._ping_deadlines: dict[int, tuple[float, tuple[int, int]]] = {}
        self._starved: set[_Tcp] = set()  # held back by max_unsent
        self._connecting: set[_Tcp] = set()  # active opens waiting for the handshake
        self._next_accept = 1
        self._now = now
        self.dns: list[IPAddress] = list(dns)
        """The network's DNS servers, which RESOLVE asks (the shell may add the lease's)."""
        self._lookups: dict[int, _Lookup] = {}

    # ------------------------------------------------------------------ views

    @property
    def sockets(self) -> int:
        """Open sockets the program holds (TCP, listeners, UDP)."""
        return len(self._tcp) + len(self._listeners) + len(self._udp)

    @property
    def buffered(self) -> int:
        """Bytes this session holds for its program: TCP buffers (also of connections the
        program closed that are still sending), pending DATA, unsent bus messages, queued
        datagrams — what the limits bound."""
        total = self.unsent
        for conn in self.tcp.conns.values():
            total += len(conn.rbuf) + len(conn.sbuf)
        for sock in (*self._tcp.values(), *self._closing):
            total += len(sock.pending)
        for udp in self._udp.values():
            total += udp.queued_bytes
        return total

    def _over_budget(self) -> bool:
        if self.buffered < self.limits.max_buffered:
            return False
        self.counters["buffer_limit"] += 1
        return True

    def settings(self) -> dict[str, Any]:
        """Addresses and limits for the welcome."""
        iface = self.iface
        v6 = [a for a in iface.ipv6 if not a.ip.is_link_local]
        return {
            "address": str(iface.ipv4) if iface.ipv4 is not None else "",
            "gateway": str(iface.gateway4) if iface.gateway4 is not None else "",
            "address6": str(v6[0].ip) if v6 else "",
            "gateway6": str(iface.gateway6) if iface.gateway6 is not None else "",
            "link_local": str(iface.ipv6[0].ip) if iface.ipv6 else "",
            "mac": iface.mac.hex(":"),
            "mtu": iface.mtu,
            "window": self.limits.window,
            "max_sockets": self.limits.max_sockets,
            "max_data": bus.MAX_DATA,
        }

    def status(self) -> dict[str, Any]:
        """Counters for the node's /api/status."""
        return {
            "sockets": self.sockets,
            "tcp": len(self._tcp),
            "listeners": len(self._listeners),
            "udp": len(self._udp),
            "buffered": self.buffered,
            "counters": dict(self.counters),
            "stack": dict(self.iface.counters),
            "tcp_counters": dict(self.tcp.counters),
        }

    # ------------------------------------------------------------------ input

    def frame_in(self, frame: bytes, now: float) -> None:
        """One Ethernet frame from the switch port."""
        self._now = now
        self.iface.receive(frame, now)

    def packet_in(self, packet: bytes, now: float) -> None:
        """One virtio-net packet (header + frame, maybe a super-frame) from an offload port."""
        self._now = now
        self.iface.receive_packet(packet, now)

    def written(self, nbytes: int) -> None:
        """The shell wrote ``nbytes`` of what :meth:`poll` returned to the WebSocket."""
        self.unsent = max(0, self.unsent - nbytes)

    def bus_in(self, raw: bytes | bytearray | memoryview, now: float) -> None:
        """One binary WebSocket message from the program."""
        self._now = now
        self.counters["messages_in"] += 1
        try:
            message = bus.decode(raw)
        except DecodeError as exc:
            ident = int.from_bytes(bytes(raw[1:5]), "big") if len(raw) >= 5 else 0
            self._bad(ident, f"malformed bus message: {exc}")
            return
        handler = self._HANDLERS.get(type(message))
        if handler is None:
            self._bad(message.id, f"{message.op.name} is not for the node")
            return
        handler(self, message, now)

    def _bad(self, ident: int, reason: str) -> None:
        self.counters["bad_messages"] += 1
        if self.counters["bad_messages"] > self.limits.max_bad:
            self.failed = "too many malformed or misdirected bus messages"
            return
        self._send(bus.Error(ident, errno.EPROTO, reason))

    def _send(self, message: bus.Message) -> None:
        self._out_raw(message.encode())

    def _out_raw(self, raw: bytes) -> None:
        self._out.append(raw)
        self.unsent += len(raw)
        if self.unsent > self.limits.max_unsent + self.limits.unsent_slack and not self.failed:
            # DATA stops at max_unsent; only answers to the program's own requests (BOUND,
            # PONG, ERROR…) get here: it asks and asks but reads nothing.
            self.counters["unsent_overflow"] += 1
            self.failed = "the program reads none of the node's messages"

    def _new_id_ok(self, ident: int) -> bool:
        """A program-chosen id for a new socket: in range and not in use."""
        if ident == 0 or ident & ACCEPTED_ID_BIT:
            self._bad(ident, f"socket id {ident:#x} is not a program id (1 to 2**31-1)")
            return False
        if ident in self._tcp or ident in self._listeners or ident in self._udp:
            self._bad(ident, f"socket id {ident} is already in use")
            return False
        if self.sockets >= self.limits.max_sockets:
            self.counters["socket_limit"] += 1
            self._send(bus.Error(ident, errno.EMFILE, f"too many sockets ({self.sockets})"))
            return False
        if self._over_budget():
            self._send(bus.Error(ident, errno.ENOBUFS, "the session's buffers are full"))
            return False
        return True

    def _local_ip(self, remote: IPAddress) -> IPAddress | None:
        if isinstance(remote, IPv4Address):
            return self.iface.ipv4.ip if self.iface.ipv4 is not None else None
        return self.iface._source_v6(remote)

    def _on_connect(self, msg: bus.Connect, now: float) -> None:
        if not self._new_id_ok(msg.id):
            return
        remote = msg.remote.address
        assert remote is not None
        if msg.local_port:
            self._send(bus.Error(msg.id, errno.EOPNOTSUPP, "choosing the local port"))
            return
        local = self._local_ip(remote)
        if local is None or self.iface._next_hop(remote) is None:
            self._send(bus.Error(msg.id, errno.ENETUNREACH, f"no address to reach {remote}"))
            return
        if msg.remote.port == 0 or remote.is_multicast or remote.is_unspecified:
            self._send(bus.Error(msg.id, errno.EINVAL, f"cannot connect to {msg.remote}"))
            return
        try:
            conn = self.tcp.connect(local.packed, remote.packed, msg.remote.port, now)
        except OSError as exc:
            self._send(bus.Error(msg.id, exc.errno or errno.EIO, exc.strerror or str(exc)))
            return
        sock = _Tcp(msg.id, conn, self.limits.window)
        timeout = msg.timeout_ms / 1000 if msg.timeout_ms else self.limits.connect_timeout
        sock.deadline = now + min(timeout, 120.0)
        self._tcp[msg.id] = sock
        self._by_conn[conn] = sock
        self._connecting.add(sock)
        self.counters["connects"] += 1

    def _ours(self, ident: int, local: Endpoint) -> bool:
        """A LISTEN/BIND address must be "any" or one of the session's (else EADDRNOTAVAIL,
        as bind(2) says)."""
        address = local.address
        if address is None or address in self.iface.addresses:
            return True
        self._send(bus.Error(ident, errno.EADDRNOTAVAIL, f"{address} is not ours"))
        return False

    def _on_listen(self, msg: bus.Listen, now: float) -> None:
        if not self._new_id_ok(msg.id) or not self._ours(msg.id, msg.local):
            return
        address = msg.local.address
        port = msg.local.port
        if port == 0:
            used = {p for (_ip, p) in self.tcp.listeners}
            port = next((p for p in range(49152, 65536) if p not in used), 0)
        try:
            lst = self.tcp.listen(
                address.packed if address else None, port, min(max(msg.backlog, 1), 1024)
            )
        except (OSError, ValueError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            self._send(bus.Error(msg.id, code, str(exc.args[-1])))
            return
        self._listeners[msg.id] = lst
        self._send(bus.Listening(msg.id, Endpoint(address, port)))

    def _on_bind(self, msg: bus.Bind, now: float) -> None:
        if not self._new_id_ok(msg.id) or not self._ours(msg.id, msg.local):
            return
        try:
            sock = self.iface.udp_bind(msg.local.port)
        except OSError as exc:
            code = errno.EADDRINUSE if "already bound" in str(exc) else errno.EMFILE
            self._send(bus.Error(msg.id, code, str(exc)))
            return
        self._udp[msg.id] = sock
        self._send(bus.Bound(msg.id, Endpoint(msg.local.address, sock.port)))

    def _on_data(self, msg: bus.Data, now: float) -> None:
        sock = self._tcp.get(msg.id)
        if sock is None:  # closed at our end while the program was sending: not an error
            self.counters["data_unknown_socket"] += 1
            return
        n = len(msg.payload)
        if n > sock.credit_in or sock.shut_wanted:
            self.counters["credit_exceeded" if n > sock.credit_in else "data_after_shutdown"] += 1
            self._fail(sock, errno.EPROTO, "DATA beyond the node's credit or after SHUTDOWN")
            return
        sock.credit_in -= n
        sock.pending += msg.payload
        self._flush_in(sock)

    def _on_credit(self, msg: bus.Credit, now: float) -> None:
        sock = self._tcp.get(msg.id)
        if sock is None:
            return
        if sock.credit_out + msg.amount > 1 << 31:  # more than anyone could buffer
            self.counters["credit_overflow"] += 1
            self._fail(sock, errno.EPROTO, "CREDIT beyond 2 GiB")
            return
        sock.credit_out += msg.amount
        self._starved.add(sock)  # reading resumes in the next poll

    def _on_shutdown(self, msg: bus.Shutdown, now: float) -> None:
        sock = self._tcp.get(msg.id)
        if sock is not None:
            sock.shut_wanted = True
            self._flush_in(sock)

    def _on_close(self, msg: bus.Close, now: float) -> None:
        ident = msg.id
        if ident in self._tcp:
            sock = self._tcp.pop(ident)
            if msg.abort or not sock.established:
                self._forget(sock)
                sock.conn.abort()
                return
            sock.shut_wanted = sock.closing = True
            self._closing.add(sock)
            self._flush_in(sock)
        elif ident in self._listeners:
            self._listeners.pop(ident).close()
        elif ident in self._udp:
            self._udp.pop(ident).close()
        else:
            self.counters["close_unknown_socket"] += 1

    def _on_datagram(self, msg: bus.Datagram, now: float) -> None:
        sock = self._udp.get(msg.id)
        if sock is None:
            self.counters["datagram_unknown_socket"] += 1
            return
        assert msg.peer.address is not None
        if not sock.sendto(msg.payload, (msg.peer.address, msg.peer.port), now):
            self.counters["datagram_not_sent"] += 1

    def _on_ping(self, msg: bus.Ping, now: float) -> None:
        if msg.id in self._ping_deadlines:
            self._bad(msg.id, f"ping id {msg.id} is already waiting")
            return
        if len(self._ping_deadlines) >= self.limits.max_pings:
            self.counters["ping_limit"] += 1
            self._send(bus.Error(msg.id, errno.ENOBUFS, "too many pings waiting"))
            return
        payload = bytes(i & 0xFF for i in range(min(msg.size, 1400)))
        try:
            key = self.iface.ping(msg.address, now, payload)
        except OSError:
            self._send(bus.Error(msg.id, errno.EHOSTUNREACH, f"no route to {msg.address}"))
            return
        timeout = msg.timeout_ms / 1000 if msg.timeout_ms else 5.0
        self._pings[key] = (msg.id, now)
        self._ping_deadlines[msg.id] = (now + min(timeout, 60.0), key)

    def _on_resolve(self, msg: bus.Resolve, now: float) -> None:
        if msg.id in self._lookups:
            self._bad(msg.id, f"resolve id {msg.id} is already waiting")
            return
        try:
            literal = ip_address(msg.name)
        except ValueError:
            pass
        else:
            self._send(bus.Resolved(msg.id, (literal,)))
            return
        servers = [a for a in self.dns if self._local_ip(a) is not None]
        if not servers:
            self._send(bus.Error(msg.id, errno.EHOSTUNREACH, "this network has no DNS server"))
            return
        if len(self._lookups) >= self.limits.max_lookups:
            self.counters["lookup_limit"] += 1
            self._send(bus.Error(msg.id, errno.ENOBUFS, "too many names being resolved"))
            return
        try:
            wire = dns.encode_name(msg.name)
        except ValueError as exc:
            self._send(bus.Error(msg.id, errno.EINVAL, str(exc)))
            return
        try:
            sock = self.iface.udp_bind(0)
        except OSError as exc:
            self._send(bus.Error(msg.id, errno.EMFILE, str(exc)))
            return
        lookup = _Lookup(msg.id, wire, sock)
        self._lookups[msg.id] = lookup
        self.counters["lookups"] += 1
        self._ask_dns(lookup, now)

    def _ask_dns(self, lookup: _Lookup, now: float) -> None:
        servers = [a for a in self.dns if self._local_ip(a) is not None]
        server = servers[lookup.server % len(servers)]
        if not lookup.txids:
            lookup.txids = {
                int.from_bytes(os.urandom(2), "big"): qtype
                for qtype in (dns.QTYPE_A, dns.QTYPE_AAAA)
            }
        for txid, qtype in lookup.txids.items():
            lookup.sock.sendto(dns.query(txid, lookup.wire, qtype), (server, 53), now)
        lookup.tries += 1
        lookup.deadline = now + self.limits.dns_timeout

    def _lookup_work(self, lookup: _Lookup, now: float) -> None:
        while (got := lookup.sock.recvfrom()) is not None:
            data, (src, sport) = got
            if sport != 53 or src not in self.dns or len(data) < 2:
                self.counters["dns_foreign"] += 1  # not from a server we asked
                continue
            txid = int.from_bytes(data[:2], "big")
            if txid not in lookup.txids:
                continue
            try:
                _rcode, found = dns.answer_addresses(data, txid)
            except DecodeError:
                self.counters["dns_malformed"] += 1
                continue
            del lookup.txids[txid]
            lookup.found += [a for a in found if a not in lookup.found]
        if not lookup.txids:
            self._end_lookup(lookup)
            if lookup.found:
                self._send(bus.Resolved(lookup.id, tuple(lookup.found[:32])))
            else:
                self._send(bus.Error(lookup.id, errno.ENOENT, "name not found"))
        elif now >= lookup.deadline:
            if lookup.tries >= 3:
                self._end_lookup(lookup)
                self._send(bus.Error(lookup.id, errno.ETIMEDOUT, "the DNS server did not answer"))
            else:
                lookup.server += 1
                self._ask_dns(lookup, now)

    def _end_lookup(self, lookup: _Lookup) -> None:
        self._lookups.pop(lookup.id, None)
        lookup.sock.close()

    _HANDLERS: ClassVar[dict[type, Any]] = {
        bus.Connect: _on_connect,
        bus.Listen: _on_listen,
        bus.Bind: _on_bind,
        bus.Data: _on_data,
        bus.Credit: _on_credit,
        bus.Shutdown: _on_shutdown,
        bus.Close: _on_close,
        bus.Datagram: _on_datagram,
        bus.Ping: _on_ping,
        bus.Resolve: _on_resolve,
    }

    # ------------------------------------------------------------------ socket work

    def _flush_in(self, sock: _Tcp) -> None:
        """Move the program's pending bytes into the TCP send buffer; grant what it took."""
        conn = sock.conn
        if sock.pending and conn.error is None:
            try:
                taken = conn.send(sock.pending)
            except OSError:
                taken = 0
                sock.pending.clear()  # the connection failed: the close says so
            if taken:
                del sock.pending[:taken]
                sock.owed_in += taken
        if (
            sock.owed_in
            and sock.id in self._tcp
            and (sock.owed_in >= self.limits.window // 4 or not sock.pending)
        ):
            sock.credit_in += sock.owed_in
            self._out_raw(bus.credit_bytes(sock.id, sock.owed_in))
            sock.owed_in = 0
        if sock.shut_wanted and not sock.pending and not sock.shut_done:
            sock.shut_done = True
            if sock.closing:
                self._closing.discard(sock)
                self._by_conn.pop(conn, None)
                self._starved.discard(sock)
                conn.close()
            else:
                conn.shutdown()

    def _fail(self, sock: _Tcp, code: int, reason: str) -> None:
        """Reset ``sock`` and tell the program it is gone."""
        sock.conn.abort()
        self._forget(sock)
        self._send(bus.Close(sock.id, False, code, reason))

    def _forget(self, sock: _Tcp) -> None:
        if self._tcp.get(sock.id) is sock:
            del self._tcp[sock.id]
        self._by_conn.pop(sock.conn, None)
        self._starved.discard(sock)
        self._closing.discard(sock)
        self._connecting.discard(sock)

    def _service(self, sock: _Tcp, now: float) -> None:
        """Bring one TCP socket's bus side up to date with its connection."""
        conn = sock.conn
        if sock.closing:  # the program is gone from this socket: only flush what it sent
            if conn.error is not None or conn.state == CLOSED:
                self._forget(sock)
            else:
                self._flush_in(sock)
            return
        if not sock.established:
            if conn.error is not None or conn.state == CLOSED:
                code = conn.error or errno.ECONNREFUSED
                self._forget(sock)
                self._send(bus.Error(sock.id, code, _REASONS.get(code, "connect failed")))
                return
            if conn.state in (SYN_SENT, SYN_RECEIVED):
                return
            sock.established = True
            sock.deadline = None
            self._connecting.discard(sock)
            sock.credit_in = self.limits.window
            self._send(bus.Connected(sock.id, _local(conn), _remote(conn), self.limits.window))
        self._flush_in(sock)
        # Read only what the program granted, and only while the shell keeps up.
        while conn.rbuf and sock.credit_out > 0:
            if self.unsent >= self.limits.max_unsent:
                self._starved.add(sock)
                self.counters["unsent_full"] += 1
                break
            chunk = conn.recv(min(sock.credit_out, bus.MAX_DATA))
            sock.credit_out -= len(chunk)
            self._out_raw(bus.data_bytes(sock.id, chunk))
        if conn.eof and not sock.eof_sent:
            sock.eof_sent = True
            self._send(bus.Shutdown(sock.id))
        if conn.error is not None:
            self._forget(sock)
            code = conn.error
            self._send(bus.Close(sock.id, False, code, _REASONS.get(code, "connection failed")))
        elif conn.state in (CLOSED, TIME_WAIT) and not conn.rbuf:
            self._forget(sock)
            self._send(bus.Close(sock.id))

    def _accept(self, lid: int, lst: Listener) -> None:
        while (conn := lst.accept()) is not None:
            if self.sockets >= self.limits.max_sockets or self._over_budget():
                self.counters["accept_limit"] += 1
                conn.abort()
                continue
            ident = self._accept_id()
            sock = _Tcp(ident, conn, self.limits.window)
            sock.established = True
            sock.credit_in = self.limits.window
            self._tcp[ident] = sock
            self._by_conn[conn] = sock
            self.counters["accepted"] += 1
            self._send(bus.Accept(lid, ident, _local(conn), _remote(conn), self.limits.window))
            self._service(sock, self._now)

    def _accept_id(self) -> int:
        while True:
            n = self._next_accept
            self._next_accept = n + 1 if n < ACCEPTED_ID_BIT - 1 else 1
            ident = ACCEPTED_ID_BIT | n
            if ident not in self._tcp:
                return ident

    def _work(self, now: float) -> None:
        for event in self.iface.events():
            if isinstance(event, EchoReply):
                found = self._pings.pop((event.ident, event.seq), None)
                if found is not None:
                    ident, sent = found
                    self._ping_deadlines.pop(ident, None)
                    self._send(bus.Pong(ident, max(0, int((now - sent) * 1e6))))
            elif isinstance(event, AddressEvent):
                self.counters[f"address_{event.kind}"] += 1
        for ident, (deadline, key) in list(self._ping_deadlines.items()):
            if now >= deadline:
                del self._ping_deadlines[ident]
                self._pings.pop(key, None)
                self._send(bus.Error(ident, errno.ETIMEDOUT, "no echo reply"))
        for lid, lst in list(self._listeners.items()):
            if lst.pending:
                self._accept(lid, lst)
        todo = {self._by_conn[c] for c in self.tcp.take_changed() if c in self._by_conn}
        if self._starved and self.unsent < self.limits.max_unsent:
            todo |= self._starved
            self._starved = set()
        for sock in todo:
            if self._tcp.get(sock.id) is sock or sock in self._closing:
                self._service(sock, now)
        for lookup in list(self._lookups.values()):
            self._lookup_work(lookup, now)
        for ident, udp in self._udp.items():
            while udp.queue and self.unsent < self.limits.max_unsent:
                data, (addr, port) = udp.queue.popleft()
                udp.queued_bytes -= len(data)
                self._send(bus.Datagram(ident, Endpoint(addr, port), data))

    def _connect_deadlines(self, now: float) -> None:
        for sock in [s for s in self._connecting if now >= s.deadline]:  # type: ignore[operator]
            sock.conn.abort()
            self._forget(sock)
            self._send(bus.Error(sock.id, errno.ETIMEDOUT, "connection timed out"))

    def poll(self, now: float) -> tuple[list[bytes], list[bytes]]:
        """Run timers and move data: (frames for the switch, bus messages for the program).

        With ``tso`` every frame is a virtio-net packet (header + frame): a super-segment or a
        frame behind an all-zero header.
        """
        self._now = now
        self._connect_deadlines(now)
        self._work(now)
        out = self.iface.poll_packets if self.tso else self.iface.poll
        frames = out(now)
        self._work(now)  # what the timers and the sends just changed (failures, window)
        frames += out(now)
        out, self._out = self._out, []
        return frames, out

    def poll_at(self) -> float | None:
        """When :meth:`poll` next has work without new input (None: only input)."""
        times = [self.iface.poll_at()]
        times += [d for d, _ in self._ping_deadlines.values()]
        times += [lookup.deadline for lookup in self._lookups.values()]
        times += [s.deadline for s in self._connecting if s.deadline is not None]
        if self._out or (self._starved and self.unsent < self.limits.max_unsent):
            times.append(0.0)
        if any(u.queue for u in self._udp.values()) and self.unsent < self.limits.max_unsent:
            times.append(0.0)
        due = [t for t in times if t is not None]
        return min(due, default=None)

    def close(self, now: float) -> list[bytes]:
        """The program is gone: reset every connection, drop every socket; the last frames."""
        for sock in [*self._tcp.values(), *self._closing]:
            sock.conn.abort()
        for conn in list(self.tcp.conns.values()):
            conn.abort()
        for lst in self._listeners.values():
            lst.close()
        for udp in self._udp.values():
            udp.close()
        for lookup in self._lookups.values():
            lookup.sock.close()
        self._lookups.clear()
        self._tcp.clear()
        self._by_conn.clear()
        self._closing.clear()
        self._listeners.clear()
        self._udp.clear()
        self._starved.clear()
        self._connecting.clear()
        self._pings.clear()
        self._ping_deadlines.clear()
        self._out = []
        return self.iface.poll_packets(now) if self.tso else self.iface.poll(now)


def _endpoint(ip: bytes, port: int) -> Endpoint:
    return Endpoint(IPv4Address(ip) if len(ip) == 4 else IPv6Address(ip), port)


def _local(conn: Connection) -> Endpoint:
    return _endpoint(conn.local_ip, conn.local_port)


def _remote(conn: Connection) -> Endpoint:
    return _endpoint(conn.remote_ip, conn.remote_port)
