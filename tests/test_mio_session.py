"""The mio session core frame by frame: two Sessions wired back to back, injected ``now``.

Each test plays both programs by hand with bus messages and checks what the node would send:
the handshakes and their errors, credits both ways (a program that stops granting closes the
TCP window; DATA beyond the node's credit resets the socket with EPROTO), half-close and close,
the limits, UDP and ping, the session's end, and a hypothesis fuzz of the bus input.
"""

from __future__ import annotations

import errno
import hashlib
import os
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atenet.mio import bus
from atenet.mio.bus import Endpoint
from atenet.mio.session import Limits, Session
from atenet.stack.tcp import parse_segment

MAC_A = bytes.fromhex("020000000a0a")
MAC_B = bytes.fromhex("020000000b0b")
A4, B4 = IPv4Address("10.9.0.2"), IPv4Address("10.9.0.3")
A6, B6 = IPv6Address("fd09::2"), IPv6Address("fd09::3")
WINDOW = 64 * 1024


def session(mac: bytes, v4: IPv4Address, v6: IPv6Address, limits: Limits | None = None) -> Session:
    return Session(
        mac,
        1500,
        100.0,
        ipv4=IPv4Interface(f"{v4}/24"),
        ipv6=IPv6Interface(f"{v6}/64"),
        limits=limits or Limits(window=WINDOW, tcp_buffer=WINDOW),
        seed=7,
    )


class Wire:
    """Two sessions on one link; the test is both programs."""

    def __init__(self, limits: Limits | None = None, drop: set[str] | None = None) -> None:
        self.now = 100.0
        self.a = session(MAC_A, A4, A6, limits)
        self.b = session(MAC_B, B4, B6, limits)
        self.got: dict[Session, list[bus.Message]] = {self.a: [], self.b: []}
        self.frames = 0
        self.cut = False  # True: frames are lost (nobody at the other end)

    def send(self, s: Session, *messages: bus.Message) -> None:
        for m in messages:
            s.bus_in(m.encode(), self.now)

    def run(self, rounds: int = 10_000) -> None:
        """Poll both sides until the wire is quiet (no frames, no messages)."""
        for _ in range(rounds):
            busy = False
            for me, other in ((self.a, self.b), (self.b, self.a)):
                frames, messages = me.poll(self.now)
                for raw in messages:
                    me.written(len(raw))
                    self.got[me].append(bus.decode(raw))
                self.frames += len(frames)
                if not self.cut:
                    for f in frames:
                        other.frame_in(f, self.now)
                busy = busy or bool(frames or messages)
            if not busy:
                return
        raise AssertionError("the wire never went quiet")

    def advance(self, seconds: float) -> None:
        """Let time pass, waking the sessions at their poll_at like the shell does."""
        end = self.now + seconds
        while True:
            due = [t for t in (self.a.poll_at(), self.b.poll_at()) if t is not None]
            nxt = min(due, default=end)
            if nxt > end:
                break
            self.now = max(self.now, nxt)
            self.run()
            if nxt >= end:
                break
        self.now = end
        self.run()

    def take(self, s: Session, kind: type[bus.Message] | None = None) -> list[bus.Message]:
        out = [m for m in self.got[s] if kind is None or isinstance(m, kind)]
        self.got[s] = [m for m in self.got[s] if m not in out]
        return out

    def data(self, s: Session, ident: int) -> bytes:
        return b"".join(
            m.payload
            for m in self.take(s, bus.Data)
            if m.id == ident  # type: ignore[attr-defined]
        )


def connected_pair(w: Wire, remote: IPv4Address | IPv6Address = B4) -> int:
    """a's socket 1 connected to b's listener 10 on port 80; returns b's connection id."""
    w.send(w.b, bus.Listen(10, Endpoint(None, 80)))
    w.run()
    assert w.take(w.b) == [bus.Listening(10, Endpoint(None, 80))]
    w.send(w.a, bus.Connect(1, Endpoint(remote, 80)))
    w.run()
    (conn,) = w.take(w.a)
    assert isinstance(conn, bus.Connected) and conn.credit == WINDOW
    assert conn.remote == Endpoint(remote, 80) and conn.local.address in (A4, A6)
    (acc,) = w.take(w.b)
    assert isinstance(acc, bus.Accept) and acc.id == 10 and acc.conn & bus.ACCEPTED_ID_BIT
    assert acc.remote == conn.local and acc.local == conn.remote
    return acc.conn


def test_connect_accept_and_data_both_ways_v4_and_v6() -> None:
    for remote in (B4, B6):
        w = Wire()
        cid = connected_pair(w, remote)
        w.send(w.a, bus.Data(1, b"hello from a"))
        w.send(w.b, bus.Data(cid, b"hello from b"))
        w.run()
        assert w.data(w.b, cid) == b"hello from a"
        assert w.data(w.a, 1) == b"hello from b"


def test_credits_move_a_large_transfer_and_the_window_closes_without_them() -> None:
    """The node sends a program at most what it granted; with no CREDIT, b's TCP receive buffer
    fills, the window closes and a's node stops granting a's program: nothing grows."""
    w = Wire()
    cid = connected_pair(w)
    blob = os.urandom(WINDOW * 6)
    credit = WINDOW
    sent = 0

    def pour() -> None:
        nonlocal credit, sent
        while credit and sent < len(blob):
            n = min(credit, bus.MAX_DATA, len(blob) - sent)
            w.send(w.a, bus.Data(1, blob[sent : sent + n]))
            credit -= n
            sent += n

    pour()
    w.advance(1.0)
    got = w.data(w.b, cid)
    assert len(got) == WINDOW  # exactly b's grant (the welcome's window), no more
    for _ in range(10):  # b's program reads nothing more: a's credit stops coming back
        credit += sum(m.amount for m in w.take(w.a, bus.Credit))  # type: ignore[attr-defined]
        pour()
        w.advance(1.0)
    held_a, held_b = w.a.buffered, w.b.buffered
    assert sent < len(blob), "a's program must be blocked"
    assert held_b <= WINDOW + 1024 and held_a <= 2 * WINDOW + 1024, (held_a, held_b)
    assert w.data(w.b, cid) == b""
    # b's program catches up, granting as it goes: everything arrives in order.
    while len(got) < len(blob):
        w.send(w.b, bus.Credit(cid, WINDOW))
        credit += sum(m.amount for m in w.take(w.a, bus.Credit))  # type: ignore[attr-defined]
        pour()
        w.advance(0.5)
        got += w.data(w.b, cid)
        credit += sum(m.amount for m in w.take(w.a, bus.Credit))  # type: ignore[attr-defined]
        pour()
    assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()


def test_data_beyond_credit_resets_the_socket_with_eproto() -> None:
    w = Wire()
    cid = connected_pair(w)
    w.send(w.a, bus.Data(1, b"x" * bus.MAX_DATA), bus.Data(1, b"y" * bus.MAX_DATA))
    w.send(w.a, *[bus.Data(1, b"z" * bus.MAX_DATA) for _ in range(3)])  # 5 × 64 KiB > window
    w.run()
    (close,) = w.take(w.a, bus.Close)
    assert close == bus.Close(1, False, errno.EPROTO, close.reason) and "credit" in close.reason
    assert w.a.counters["credit_exceeded"] == 1
    (reset,) = w.take(w.b, bus.Close)
    assert reset.id == cid and reset.errno == errno.ECONNRESET


def test_half_close_both_ways_then_an_orderly_close() -> None:
    w = Wire()
    cid = connected_pair(w)
    w.send(w.a, bus.Data(1, b"request"), bus.Shutdown(1))
    w.run()
    assert w.data(w.b, cid) == b"request"
    assert w.take(w.b, bus.Shutdown) == [bus.Shutdown(cid)]
    w.send(w.b, bus.Data(cid, b"answer"), bus.Shutdown(cid))  # b still sends after a's FIN
    w.run()
    assert w.data(w.a, 1) == b"answer"
    w.take(w.a, bus.Credit)
    w.take(w.b, bus.Credit)
    assert w.take(w.a) == [bus.Shutdown(1), bus.Close(1)]  # a's FIN acked, b's FIN seen
    assert w.take(w.b) == [bus.Close(cid)]
    assert w.a.sockets == 1 - 1 and w.b.sockets == 1  # only b's listener is left


def test_program_close_flushes_then_closes_and_abort_resets() -> None:
    w = Wire()
    cid = connected_pair(w)
    w.send(w.a, bus.Data(1, b"last words"), bus.Close(1))
    w.run()
    assert w.data(w.b, cid) == b"last words"
    assert w.take(w.b, bus.Shutdown) == [bus.Shutdown(cid)]
    assert w.a.sockets == 0
    w.send(w.a, bus.Connect(2, Endpoint(B4, 80)))
    w.run()
    (acc,) = w.take(w.b, bus.Accept)
    w.send(w.a, bus.Close(2, abort=True))
    w.run()
    (reset,) = w.take(w.b, bus.Close)
    assert reset.id == acc.conn and reset.errno == errno.ECONNRESET  # type: ignore[attr-defined]


def test_connect_errors() -> None:
    w = Wire()
    w.send(w.a, bus.Connect(1, Endpoint(B4, 81)))  # nobody listens: RST
    w.run()
    assert w.take(w.a) == [bus.Error(1, errno.ECONNREFUSED, "connection refused")]
    w.send(w.a, bus.Connect(2, Endpoint(IPv4Address("192.0.2.1"), 80)))  # no gateway
    w.send(w.a, bus.Connect(3, Endpoint(IPv4Address("10.9.0.99"), 80), timeout_ms=3000))
    w.run()
    (err,) = w.take(w.a)
    assert err.id == 2 and err.errno == errno.ENETUNREACH  # type: ignore[attr-defined]
    w.advance(2.9)
    assert w.take(w.a) == []
    w.advance(0.2)  # the CONNECT's own 3 s timeout, not the stack's minute of SYN retries
    assert w.take(w.a) == [bus.Error(3, errno.ETIMEDOUT, "connection timed out")]
    assert w.a.sockets == 0


def test_limits_and_misdirected_messages() -> None:
    w = Wire(Limits(window=WINDOW, tcp_buffer=WINDOW, max_sockets=2, max_bad=3))
    w.send(w.a, bus.Bind(1, Endpoint(None, 0)), bus.Listen(2, Endpoint(None, 22)))
    w.send(w.a, bus.Bind(3, Endpoint(None, 0)))
    w.run()
    assert isinstance(w.take(w.a, bus.Bound)[0], bus.Bound)
    (err,) = w.take(w.a, bus.Error)
    assert err.id == 3 and err.errno == errno.EMFILE  # type: ignore[attr-defined]
    assert w.a.counters["socket_limit"] == 1
    # Misdirected: a node→program op, an id already in use, a node-side id, junk.
    w.send(w.a, bus.Pong(4, 1), bus.Listen(2, Endpoint(None, 23)))
    w.a.bus_in(b"\x06\x00", w.now)
    w.run()
    errors = w.take(w.a, bus.Error)
    assert [e.errno for e in errors] == [errno.EPROTO] * 3  # type: ignore[attr-defined]
    assert w.a.failed is None
    w.a.bus_in(bus.Bind(0x80000001, Endpoint(None, 0)).encode(), w.now)
    assert w.a.failed is not None and w.a.counters["bad_messages"] == 4


def test_udp_both_ways_and_ping() -> None:
    w = Wire()
    w.send(w.a, bus.Bind(1, Endpoint(None, 0)))
    w.send(w.b, bus.Bind(2, Endpoint(None, 53)))
    w.run()
    (bound,) = w.take(w.a)
    assert isinstance(bound, bus.Bound) and bound.local.port >= 49152
    assert w.take(w.b) == [bus.Bound(2, Endpoint(None, 53))]
    w.send(w.a, bus.Bind(9, Endpoint(B4, 0)))  # b's address is not a's to bind
    w.run()
    assert w.take(w.a) == [bus.Error(9, errno.EADDRNOTAVAIL, f"{B4} is not ours")]
    w.send(w.a, bus.Datagram(1, Endpoint(B4, 53), b"query"))
    w.run()
    assert w.take(w.b) == [bus.Datagram(2, Endpoint(A4, bound.local.port), b"query")]
    w.send(w.b, bus.Datagram(2, Endpoint(A6, bound.local.port), b"x" * 3000))  # fragments
    w.run()
    assert w.take(w.a) == [bus.Datagram(1, Endpoint(B6, 53), b"x" * 3000)]
    w.send(w.a, bus.Ping(5, B4, 56, 1000), bus.Ping(6, B6, 1000, 1000))
    w.run()
    pongs = w.take(w.a)
    assert sorted(p.id for p in pongs) == [5, 6] and all(isinstance(p, bus.Pong) for p in pongs)
    w.cut = True
    w.send(w.a, bus.Ping(7, B4, 56, 1500))
    w.advance(1.4)
    assert w.take(w.a) == []
    w.advance(0.2)
    assert w.take(w.a) == [bus.Error(7, errno.ETIMEDOUT, "no echo reply")]


def test_session_close_resets_every_connection() -> None:
    w = Wire()
    cid = connected_pair(w)
    frames = w.a.close(w.now)
    resets = [parse_segment(f[34:]) for f in frames if f[12:14] == b"\x08\x00"]
    assert resets and all(s is not None and s.flags & 0x04 for s in resets)
    for f in frames:
        w.b.frame_in(f, w.now)
    w.run()
    (reset,) = w.take(w.b, bus.Close)
    assert reset.id == cid and reset.errno == errno.ECONNRESET
    assert w.a.sockets == 0 and w.a.buffered == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda op, ident, body: bytes([op]) + ident.to_bytes(4, "big") + body,
                st.integers(1, 17),
                st.sampled_from([1, 2, 10, 0x80000001, 0]),
                st.binary(max_size=30),
            ),
        ),
        max_size=30,
    )
)
def test_fuzzed_bus_input_never_raises(messages: list[bytes]) -> None:
    s = session(MAC_A, A4, A6, Limits(window=WINDOW, tcp_buffer=WINDOW, max_bad=10_000))
    now = 100.0
    for raw in messages:
        s.bus_in(raw, now)
        _frames, out = s.poll(now)
        for m in out:
            s.written(len(m))
            bus.decode(m)  # everything the node says decodes
        now += 0.5
    assert s.sockets <= s.limits.max_sockets and s.buffered <= 2 * bus.MAX_DATA * 30


def dns_answer(
    question: bytes, addresses: list[IPv4Address | IPv6Address], rcode: int = 0
) -> bytes:
    """A response to ``question`` (a query the session sent) carrying ``addresses`` that fit
    its type, each record's name a compression pointer to the question's name."""
    qtype = int.from_bytes(question[-4:-2], "big")
    fit = [a for a in addresses if (a.version == 4) == (qtype == 1)]
    header = question[:2] + (0x8180 | rcode).to_bytes(2, "big") + b"\x00\x01"
    header += len(fit).to_bytes(2, "big") + b"\x00\x00\x00\x00"
    records = b"".join(
        b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x3c"
        + len(a.packed).to_bytes(2, "big") + a.packed
        for a in fit
    )  # fmt: skip
    return header + question[12:] + records


def test_resolve_through_the_networks_dns_server() -> None:
    """RESOLVE asks the network's DNS server (here b's program plays it on UDP 53) for A and
    AAAA from a's address, through the stack; answers, NXDOMAIN, silence and bad names."""
    w = Wire()
    w.send(w.a, bus.Resolve(1, "host.lan"))
    w.run()
    assert w.take(w.a) == [bus.Error(1, errno.EHOSTUNREACH, "this network has no DNS server")]
    w.a.dns = [B4]
    w.send(w.b, bus.Bind(53, Endpoint(None, 53)))
    w.send(w.a, bus.Resolve(2, "host.lan"), bus.Resolve(3, "10.1.2.3"), bus.Resolve(4, "a..b"))
    w.run()
    assert w.take(w.a) == [
        bus.Resolved(3, (IPv4Address("10.1.2.3"),)),
        bus.Error(4, errno.EINVAL, "'a..b' is not a valid host name"),
    ]
    queries = w.take(w.b, bus.Datagram)
    assert len(queries) == 2 and all(q.peer.address == A4 for q in queries)  # type: ignore[attr-defined]
    want = [IPv4Address("10.9.0.50"), IPv6Address("fd09::50")]
    for q in queries:
        w.send(w.b, bus.Datagram(53, q.peer, dns_answer(q.payload, want)))  # type: ignore[attr-defined]
    w.run()
    (resolved,) = w.take(w.a)
    assert isinstance(resolved, bus.Resolved) and sorted(map(str, resolved.addresses)) == sorted(
        map(str, want)
    )
    w.send(w.a, bus.Resolve(5, "nowhere.lan"))
    w.run()
    for q in w.take(w.b, bus.Datagram):
        w.send(w.b, bus.Datagram(53, q.peer, dns_answer(q.payload, [], rcode=3)))  # type: ignore[attr-defined]
    w.run()
    assert w.take(w.a) == [bus.Error(5, errno.ENOENT, "name not found")]
    w.send(w.a, bus.Resolve(6, "slow.lan"))  # the server never answers: three tries, 2 s apart
    w.advance(5.9)
    assert w.take(w.a) == [] and len(w.take(w.b, bus.Datagram)) == 6
    w.advance(0.2)
    assert w.take(w.a) == [bus.Error(6, errno.ETIMEDOUT, "the DNS server did not answer")]
    assert w.a.iface._udp == {}  # the lookups' sockets are gone


def test_a_program_that_asks_but_never_reads_is_ended() -> None:
    """DATA stops at max_unsent; answers to requests (here BOUND after BIND/CLOSE pairs) are
    bounded too: past the slack the session fails instead of queueing without end."""
    limits = Limits(window=WINDOW, tcp_buffer=WINDOW, max_unsent=4096, unsent_slack=8192)
    s = session(MAC_A, A4, A6, limits)
    i = 0
    while s.failed is None and i < 200_000:
        i += 1
        s.bus_in(bus.Bind(1, Endpoint(None, 0)).encode(), 100.0)
        s.bus_in(bus.Close(1).encode(), 100.0)
        s.poll(100.0)  # the shell takes the messages but never manages to write them
    assert s.failed is not None and s.counters["unsent_overflow"] == 1
    assert 4096 + 8192 < s.unsent <= 4096 + 8192 + 64


def test_a_session_holding_its_byte_budget_refuses_new_sockets() -> None:
    """b's program reads nothing: b holds a full receive buffer, a a full send buffer; both
    refuse new sockets with ENOBUFS (their existing sockets keep their own bounds) until the
    bytes drain."""
    w = Wire(Limits(window=WINDOW, tcp_buffer=WINDOW, max_buffered=WINDOW))
    cid = connected_pair(w)
    for _ in range(4):
        w.send(w.a, bus.Data(1, b"x" * (WINDOW // 4)))
    w.advance(1.0)
    got = len(w.data(w.b, cid))
    for fill in b"yz":  # a's program spends the credit it gets back: b's window closes
        assert sum(m.amount for m in w.take(w.a, bus.Credit)) == WINDOW  # type: ignore[attr-defined]
        for _ in range(4):
            w.send(w.a, bus.Data(1, bytes([fill]) * (WINDOW // 4)))
        w.advance(1.0)
    assert got == WINDOW and w.b.buffered >= WINDOW and w.a.buffered >= WINDOW
    w.send(w.a, bus.Connect(2, Endpoint(B4, 80)))
    w.send(w.b, bus.Bind(20, Endpoint(None, 0)))
    w.run()
    assert w.take(w.a, bus.Error) == [bus.Error(2, errno.ENOBUFS, "the session's buffers are full")]
    assert w.take(w.b, bus.Error) == [
        bus.Error(20, errno.ENOBUFS, "the session's buffers are full")
    ]
    for _ in range(4):  # b's program reads again: everything drains
        w.send(w.b, bus.Credit(cid, WINDOW))
        w.advance(1.0)
    w.send(w.b, bus.Bind(21, Endpoint(None, 0)))
    w.run()
    assert isinstance(w.take(w.b, bus.Bound)[-1], bus.Bound)
    assert w.b.counters["buffer_limit"] == 1
