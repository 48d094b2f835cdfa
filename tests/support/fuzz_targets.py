"""Fuzz targets shared by the hypothesis tests (tests/test_fuzz.py, short mode, in CI) and the
mutation fuzzer (bench/fuzz.py, long mode, >= 1,000,000 inputs per target).

A :class:`Target` is one parser or input path that a peer, a client, a browser or a store can
reach with bytes of its choosing, with valid seeds to mutate and a ``feed(data)`` that pushes one
input through the real code and returns what happened (a drop reason, ``"ok"``, ...). The
invariant every target shares: ``feed`` raises nothing but the documented error types listed in
``allowed`` (and the fuzzers treat anything else as a crash), and a target whose input is not
authenticated checks that nothing was answered.

Targets that need a network (the node core, the client core, the /ws hello) get a real one: a
chain made in a temporary SQLite store with an owner, a node authority, two member nodes and
access keys 1 (usable) and 2 (revoked), exactly as a node loads it from its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType

from atenet.chain import event as ev
from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.chain.sqlite_store import SqliteStore
from atenet.chain.state import NetworkState
from atenet.client.core import ClientCore
from atenet.errors import AtenetError, ChainInvalid, DecodeError, NotAllowed
from atenet.node.core import NodeCore, PortLimits
from atenet.offload import NO_OFFLOAD, OffloadError, VnetHeader, check, to_frames
from atenet.overlay.fragment import MAX_PACKET, Reassembler, fragment
from atenet.overlay.seal import (
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Opener,
    PacketKey,
    Sealer,
    SealError,
    parse_header,
)
from atenet.overlay.token import AccessToken, BadToken
from atenet.wire import (
    ArpRepr,
    EthernetRepr,
    IcmpRepr,
    Icmpv6Repr,
    Ipv4Repr,
    Ipv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    UdpRepr,
    arp_reply,
    arp_request,
    icmp_echo_request,
    icmpv6_echo_request,
    neighbor_advertisement,
    neighbor_solicitation,
    parse_mac,
)
from atenet.wire.ethernet import ethernet_frame
from tests.support.chains import World, make_world

CLIENT = ("127.0.0.1", 40001)
"""Where the fuzzing client's datagrams come from (never a real socket: the cores are sans-I/O)."""
OTHER_CLIENT = ("127.0.0.1", 40002)
NOW = 1_000_000.0
CLOCK = int(NOW * 1_000_000_000)
"""``NOW`` in ns: where senders' counters start (they follow the clock, docs/protocol.md)."""


class Crash(AssertionError):
    """An input broke an invariant: an undocumented exception, or an answer to junk."""


@dataclass
class Target:
    """One fuzz target: seeds to mutate and the real code path to push an input through."""

    name: str
    seeds: list[bytes]
    feed: Callable[[bytes], str]
    allowed: tuple[type[BaseException], ...] = ()
    """Exception types ``feed`` may raise by contract; anything else is a crash."""
    reasons: set[str] = field(default_factory=set)

    def run(self, data: bytes) -> str:
        """Feed ``data``; the outcome label, or :class:`Crash` for an invariant broken."""
        try:
            outcome = self.feed(data)
        except Crash:
            raise
        except self.allowed as exc:
            outcome = f"{type(exc).__name__}:{getattr(exc, 'reason', '')}".rstrip(":")
        except Exception as exc:
            raise Crash(f"{self.name}: {type(exc).__name__}: {exc!r} on {data[:80]!r}") from exc
        self.reasons.add(outcome)
        return outcome


# ---------------------------------------------------------------------------- the network


@dataclass
class Net:
    """A network as a node loads it from its store, plus the secrets a fuzzer needs."""

    world: World
    state: NetworkState
    secrets: dict[int, bytes]

    @property
    def network_id(self) -> bytes:
        return self.world.chain.network_id

    def token(self, key_id: int = 1) -> AccessToken:
        return AccessToken(self.network_id, key_id, self.secrets[key_id], ("127.0.0.1:4799",))


async def make_net(directory: Path) -> Net:
    """A chain in a real SQLite store under ``directory``: keys 1 (usable) and 2 (revoked),
    node A and node B members; returns it replayed by a fresh reader (the node's view)."""
    store = SqliteStore(f"sqlite://{directory / 'fuzz.sqlite'}")
    await store.connect()
    try:
        world = await make_world(store)
        secrets = {}
        for key_id in (1, 2):
            secrets[key_id] = os.urandom(32)
            body = {"key_id": key_id, "label": "", "secret": b64(secrets[key_id]), "expires": None}
            await world.chain.append(Kind.KEY_ADD, body, world.owner_signer)
        await world.chain.append(Kind.KEY_REVOKE, {"key_id": 2}, world.owner_signer)
        for i, signer in enumerate((world.node_a, world.node_b)):
            node_id = short_id(signer.key.public_key().public_bytes_raw())
            body = {"node_id": node_id, "endpoints": [f"127.0.0.{i + 1}:4799"]}
            await world.chain.append(Kind.MEMBER_JOIN, body, signer)
        view = world.reader()
        await view.load()
        return Net(world, view.state, secrets)
    finally:
        await store.close()


def node_id_of(world: World) -> str:
    return short_id(world.node_a.key.public_key().public_bytes_raw())


def frame(src: int = 1, size: int = 60, dst: bytes = b"\xff" * 6) -> bytes:
    return ethernet_frame(dst, bytes([2, 0, 0, 0, 0, src]), 0x88B5, bytes(size - 14))


# ---------------------------------------------------------------------------- byte-level seeds


def tcp_superframe(payload: int = 4000, mss: int = 1400, v6: bool = False) -> bytes:
    """A virtio-net header + TCP super-frame as a TAP with TSO would hand it over."""
    l4 = 14 + (40 if v6 else 20)
    tcp = bytearray(20)
    tcp[12] = 5 << 4
    tcp[13] = 0x18
    data = bytes(range(256)) * (payload // 256 + 1)
    if v6:
        ip = bytearray(40)
        ip[0] = 0x60
        ip[4:6] = (20 + payload).to_bytes(2, "big")
        ip[6] = 6
        ip[7] = 64
        ethertype = 0x86DD
    else:
        ip = bytearray(20)
        ip[0] = 0x45
        ip[2:4] = (20 + 20 + payload).to_bytes(2, "big")
        ip[8] = 64
        ip[9] = 6
        ethertype = 0x0800
    eth = ethernet_frame(b"\x02" * 6, b"\x02\x00\x00\x00\x00\x01", ethertype, b"")
    vnet = VnetHeader(0x01, 4 if v6 else 1, l4 + 20, mss, l4, 16).pack()
    return vnet + eth + bytes(ip) + bytes(tcp) + data[:payload]


def udp_superframe(payload: int = 3000, size: int = 1200) -> bytes:
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = (28 + payload).to_bytes(2, "big")
    ip[9] = 17
    udp = (1234).to_bytes(2, "big") + (5678).to_bytes(2, "big") + bytes(4)
    eth = ethernet_frame(b"\x02" * 6, b"\x02\x00\x00\x00\x00\x01", 0x0800, b"")
    vnet = VnetHeader(0x01, 5, 42, size, 34, 6).pack()
    return vnet + eth + bytes(ip) + udp + bytes(payload)


def offload_seeds() -> list[bytes]:
    partial = bytearray(tcp_superframe(200))
    partial[1] = 0  # GSO_NONE, partial checksum only
    return [
        tcp_superframe(),
        tcp_superframe(3000, 1000, v6=True),
        udp_superframe(),
        bytes(partial),
        NO_OFFLOAD + frame(),
    ]


# ---------------------------------------------------------------------------- targets


def seal_targets() -> list[Target]:
    """The clear header and an Opener holding windows: what any on-path attacker can send."""
    net_id = os.urandom(16)
    key = PacketKey(os.urandom(32), 7)
    sealer = Sealer(net_id, key, 99, 1000)
    seeds = [
        sealer.seal(frame()),
        sealer.seal(b'{"op":"hello"}', TYPE_CONTROL),
        sealer.seal(tcp_superframe(), TYPE_SUPERFRAME),
    ]
    opener = Opener(key, max_senders=16)
    for seed in seeds:
        opener.open(seed, *parse_header(seed)[3:])

    def header(data: bytes) -> str:
        network_id, ptype, _key_id, _sender, counter = parse_header(data)
        if len(network_id) != 16 or ptype not in (1, 2, 3) or not 0 <= counter < 1 << 64:
            raise Crash(f"parse_header returned nonsense for {data[:40]!r}")
        return "ok"

    def open_(data: bytes) -> str:
        _net, _ptype, _key, sender, counter = parse_header(data)
        opener.open(data, sender, counter)
        # Every seed was opened already, and any change to header, ciphertext or tag fails auth.
        raise Crash(f"Opener.open accepted a replayed or altered packet: {data[:40]!r}")

    def open_memoryview(data: bytes) -> str:
        _net, _ptype, _key, sender, counter = parse_header(memoryview(data))
        opener.open(memoryview(data), sender, counter)
        raise Crash("Opener.open accepted a replayed or altered packet (memoryview)")

    return [
        Target("seal.parse_header", seeds, header, (SealError,)),
        Target("seal.Opener.open", seeds, open_, (SealError,)),
        Target("seal.Opener.open(memoryview)", seeds, open_memoryview, (SealError,)),
    ]


def fragment_target() -> Target:
    """Reassembler.feed: the first two input bytes are the GRO segment size, the rest the data
    one recvmsg returned; stray and forged fragments must stay bounded and never raise."""
    sealer = Sealer(os.urandom(16), PacketKey(os.urandom(32), 1), 5, 1)
    big = sealer.seal(tcp_superframe(20000), TYPE_SUPERFRAME)
    run = fragment(big)
    seeds = [
        (1464).to_bytes(2, "big") + run,
        (0).to_bytes(2, "big") + run[:1464],
        (0).to_bytes(2, "big") + run[1464 * 3 : 1464 * 4],
        (1464).to_bytes(2, "big") + run[1464:],
        (0).to_bytes(2, "big") + sealer.seal(frame()),
    ]
    reassembler = Reassembler(max_pending=8)

    def feed(data: bytes) -> str:
        segment = int.from_bytes(data[:2], "big")
        out = reassembler.feed(data[2:], segment, CLIENT)
        if len(reassembler) > reassembler.max_pending:
            raise Crash(f"Reassembler holds {len(reassembler)} > {reassembler.max_pending}")
        if any(len(packet) > max(MAX_PACKET, len(data)) for packet in out):
            raise Crash("Reassembler produced a packet larger than any it may")
        return f"packets={min(len(out), 2)}"

    return Target("fragment.Reassembler", seeds, feed)


def offload_targets() -> list[Target]:
    seeds = offload_seeds()

    def check_(data: bytes) -> str:
        check(data)
        return "ok"

    def segment(data: bytes) -> str:
        frames = to_frames(data)
        if not frames:
            raise Crash("to_frames returned nothing for a packet it accepted")
        # Each segment repeats the headers, so the output outgrows the input; by how much is
        # what a key holder can make every non-offload port (and the node's CPU) pay for one
        # packet. Bounded by check(): a few times the input, even at Linux's smallest TCP MSS
        # (48) with the largest TCP header.
        out = sum(map(len, frames))
        if out > 4 * len(data) + 4096:
            raise Crash(f"to_frames amplified {len(data)} bytes into {len(frames)} frames, {out}")
        return "ok"

    return [
        Target("offload.check", seeds, check_, (OffloadError,)),
        Target("offload.to_frames", seeds, segment, (OffloadError,)),
    ]


def token_target() -> Target:
    good = AccessToken(os.urandom(16), 3, os.urandom(32), ("127.0.0.1:4799", "[::1]:4799"))
    seeds = [good.encode().encode()]

    def feed(data: bytes) -> str:
        AccessToken.decode(data.decode("utf-8", "surrogateescape"))
        return "ok"

    return Target("overlay.token", seeds, feed, (BadToken,))


def wire_targets() -> list[Target]:
    """Every wire parser: DecodeError and nothing else, on any bytes."""
    from ipaddress import IPv4Address, IPv6Address

    mac = b"\x02\x00\x00\x00\x00\x01"
    a6, b6 = IPv6Address("fe80::1"), IPv6Address("fe80::2")
    ping4 = icmp_echo_request(
        mac, b"\x02" * 6, IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 7, 1, b"hello"
    )
    ping6 = icmpv6_echo_request(mac, b"\x02" * 6, a6, b6, 7, 1, b"hello")
    ns = neighbor_solicitation(mac, a6, b6)
    na = neighbor_advertisement(mac, b6, b"\x02" * 6, a6)
    arp = arp_request(mac, IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
    frames = [ping4, ping6, ns, na, arp]

    def ethernet(data: bytes) -> str:
        EthernetRepr.parse(data)
        return "ok"

    def stack(data: bytes) -> str:
        """Parse as deep as the bytes go: Ethernet, then IPv4/IPv6/ARP, then ICMP/UDP/ND."""
        eth = EthernetRepr.parse(data)
        if eth.ethertype == 0x0806:
            ArpRepr.parse(eth.payload)
        elif eth.ethertype == 0x0800:
            ip = Ipv4Repr.parse(eth.payload, verify_checksum=False)
            if ip.protocol == 1:
                IcmpRepr.parse(ip.payload, verify_checksum=False)
            elif ip.protocol == 17:
                UdpRepr.parse(ip.payload, ip.src, ip.dst)
        elif eth.ethertype == 0x86DD:
            ip6 = Ipv6Repr.parse(eth.payload)
            nh, payload = ip6.upper_layer()
            if nh == 58:
                icmp = Icmpv6Repr.parse(payload, ip6.src, ip6.dst, verify_checksum=False)
                if icmp.type == 135:
                    NeighborSolicit.from_icmp(icmp)
                elif icmp.type == 136:
                    NeighborAdvert.from_icmp(icmp)
            elif nh == 17:
                UdpRepr.parse(payload, ip6.src, ip6.dst)
        return "ok"

    def mac_text(data: bytes) -> str:
        parse_mac(data.decode("utf-8", "surrogateescape"))
        return "ok"

    return [
        Target("wire.ethernet", frames, ethernet, (DecodeError,)),
        Target("wire.stack", frames, stack, (DecodeError,)),
        Target(
            "wire.parse_mac", [b"02:00:00:00:00:01", b"02-00-00-00-00-01"], mac_text, (DecodeError,)
        ),
    ]


def chain_targets(net: Net) -> list[Target]:
    """Event decoding, and NetworkState.apply of a chain whose events were altered in the store
    (a tampered or broken store: refused with ChainInvalid naming the event, nothing else)."""
    world = net.world
    blobs: list[bytes] = []

    async def read() -> None:
        async for _seq, blob in world.store.read(net.network_id):
            blobs.append(blob)

    async def reopen() -> None:
        await world.store.connect()
        try:
            await read()
        finally:
            await world.store.close()

    asyncio.run(reopen())

    def decode(data: bytes) -> str:
        ev.decode(data)
        return "ok"

    def replay(data: bytes) -> str:
        """The input replaces one event of the chain: the first byte says which (mod length)."""
        if not data:
            return "empty"
        at = data[0] % len(blobs)
        stream = [*blobs[:at], data[1:], *blobs[at + 1 :]]
        state = NetworkState(net.network_id, readers=[world.authority.box])
        for blob in stream:
            state.apply(ev.decode(blob))
        # Whatever was accepted must be usable by a node: these run on every state change.
        state.active_keys(NOW)
        state.summary()
        return "accepted"

    seeds = [bytes([i]) + blob for i, blob in enumerate(blobs)]
    return [
        Target("chain.event.decode", blobs, decode, (DecodeError,)),
        Target("chain.NetworkState.apply", seeds, replay, (DecodeError, ChainInvalid, NotAllowed)),
    ]


def owner_body_target(net: Net) -> Target:
    """Owner-signed events whose bodies are fuzzed: the owner is not trusted by a shared node
    (issue 9.12). The first byte picks the kind, the rest is the body's plaintext, encrypted
    and signed as it is (so not only what json.dumps would write: any bytes an owner's own
    code could put there)."""
    world = net.world
    kinds = [Kind.SETTINGS, Kind.KEY_ADD, Kind.KEY_REVOKE, Kind.ROUTE_ADD, Kind.ROUTE_REMOVE]
    seeds = [
        bytes([0]) + b'{"name":"lab","cidr":"10.0.0.0/24","mtu":1400}',
        bytes([1])
        + b'{"key_id":5,"label":"x","secret":"'
        + b64(os.urandom(32)).encode()
        + b'","expires":null}',
        bytes([2]) + b'{"key_id":1}',
        bytes([3]) + b'{"to":"00","name":"n","key_id":1,"token":"atn1.x"}',
        bytes([4]) + b'{"to":"00"}',
    ]
    base = net.state

    def feed(data: bytes) -> str:
        if not data:
            return "empty"
        kind = kinds[data[0] % len(kinds)]
        state = NetworkState(net.network_id, readers=[world.authority.box])
        state.__dict__.update(
            {k: v for k, v in base.__dict__.items() if k not in ("keys", "members", "routes")}
        )
        state.keys = {k: _copy_key(v) for k, v in base.keys.items()}
        state.members = dict(base.members)
        state.routes = dict(base.routes)
        state.apply(ev.decode(_sign_raw(state, kind, data[1:], world)))
        state.active_keys(NOW)
        state.summary()
        json.dumps(state.summary())
        return "accepted"

    return Target("chain.owner_bodies", seeds, feed, (ChainInvalid,))


def _sign_raw(state: NetworkState, kind: Kind, plain: bytes, world: World) -> bytes:
    """``plain`` encrypted and signed by the owner as the next event, exactly as
    NetworkState.build does after its json.dumps."""
    from atenet.chain.keys import raw_public

    signer = world.owner.sign
    author = raw_public(signer.public_key())
    header = ev.encode_unsigned(
        kind, state.network_id, state.seq + 1, state.head, 1_000_000, author, b""
    )
    nonce = os.urandom(12)
    aead = state._aead
    assert aead is not None
    body = nonce + aead.encrypt(nonce, plain, ev.aad_for(header, 12 + len(plain) + 16))
    return ev.assemble(header, body, signer.sign)


def _copy_key(key: Any) -> Any:
    from dataclasses import replace

    return replace(key)


class NodeFixture:
    """A NodeCore serving the network, with one client port attached (so frames and floods have
    somewhere to go) and a record of every datagram it sends, by destination."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        # Counters follow the clock in ns (docs/protocol.md): the node started a second ago.
        # No rate limit: every input of the fuzzer arrives at the same ``NOW``.
        limits = PortLimits(rate=1e12, burst=1e12)
        self.core = NodeCore(node_id_of(net.world), self._send, CLOCK - 10**9, limits=limits)
        self.runtime = self.core.add_network(net.network_id)
        self.runtime.apply_state(net.state, NOW)
        self.client = Sealer(net.network_id, PacketKey(net.secrets[1], 1), 4242, CLOCK)
        other = Sealer(net.network_id, PacketKey(net.secrets[1], 1), 4343, CLOCK)
        self.core.datagram(other.seal(self.hello(offload=1), TYPE_CONTROL), OTHER_CLIENT, NOW)
        self.core.datagram(self.client.seal(self.hello(), TYPE_CONTROL), CLIENT, NOW)
        if len(self.runtime.switch) != 2:
            raise AssertionError(f"fixture clients got no port: {self.counts()}")
        self.revoked = Sealer(net.network_id, PacketKey(net.secrets[2], 2), 4444, CLOCK)
        self.node_b = Sealer(net.network_id, self.runtime.openers[0].key, 5555, CLOCK)
        self.sent.clear()

    def hello(self, op: str = "hello", **fields: Any) -> bytes:
        """A control message bound to this node instance (what opens a port)."""
        return json.dumps({"op": op, "instance": self.core.instance, **fields}).encode()

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((bytes(packet), addr))

    def drops(self) -> int:
        return sum(self.core.drops.values()) + sum(self.runtime.drops.values())

    def reason(self, before: dict[str, int]) -> str:
        now = {**self.core.drops, **{f"net.{k}": v for k, v in self.runtime.drops.items()}}
        changed = [k for k, v in now.items() if v != before.get(k, 0)]
        return ",".join(sorted(changed)) or "accepted"

    def counts(self) -> dict[str, int]:
        return {**self.core.drops, **{f"net.{k}": v for k, v in self.runtime.drops.items()}}


def node_targets(net: Net) -> list[Target]:
    """NodeCore.datagram end to end, with the network loaded from its chain."""
    fx = NodeFixture(net)
    seeds = [
        fx.client.seal(frame()),
        fx.client.seal(fx.hello("ping"), TYPE_CONTROL),
        fx.client.seal(tcp_superframe(), TYPE_SUPERFRAME),
        fx.revoked.seal(frame()),
        fx.node_b.seal(frame()),
    ]
    for seed in seeds:  # seen once: every later copy is a replay
        fx.core.datagram(seed, CLIENT, NOW)
    fx.sent.clear()

    def unauthenticated(data: bytes) -> str:
        """Bytes from anyone: must be dropped, counted once, and never answered."""
        before = fx.counts()
        total = fx.drops()
        fx.core.datagram(data, CLIENT, NOW)
        if fx.sent:
            raise Crash(f"node sent {len(fx.sent)} datagrams for junk {data[:60]!r}")
        if fx.drops() != total + 1:
            raise Crash(f"junk not counted as exactly one drop: {data[:60]!r}")
        fx.core.take_events()
        return fx.reason(before)

    def authenticated(ptype: int) -> Callable[[bytes], str]:
        """A key holder's packet whose decrypted payload is anything: dropped and counted, or
        forwarded; answered only with a welcome/pong to a well-formed hello/ping."""

        def feed(data: bytes) -> str:
            before = fx.counts()
            fx.core.datagram(fx.client.seal(data, ptype), CLIENT, NOW)
            answers = [p for p, addr in fx.sent if addr == CLIENT]
            fx.sent.clear()
            fx.core.take_events()
            if answers:
                try:
                    op = json.loads(data)["op"] if ptype == TYPE_CONTROL else None
                except Exception:
                    op = None
                if op not in ("hello", "ping") or len(answers) != 1:
                    raise Crash(f"node answered a type {ptype} payload {data[:60]!r}")
            if len(fx.runtime.switch) > 8:
                raise Crash("ports grew from one client's packets")
            return fx.reason(before)

        return feed

    frame_seeds = [frame(), frame(3, 1400, b"\x02\x00\x00\x00\x00\x09"), frame()[:14]]
    control_seeds = [
        fx.hello(),
        fx.hello("ping", offload=1),
        b'{"op":"bye"}',
        fx.hello(host="h", offload=1),
        b'{"op":"hello"}',
    ]
    return [
        Target("node.datagram(unauthenticated)", seeds, unauthenticated),
        Target("node.datagram(control JSON)", control_seeds, authenticated(TYPE_CONTROL)),
        Target("node.datagram(frame)", frame_seeds, authenticated(TYPE_FRAME)),
        Target("node.datagram(superframe)", offload_seeds(), authenticated(TYPE_SUPERFRAME)),
    ]


def client_targets(net: Net) -> list[Target]:
    """ClientCore.receive: what a node (or anyone spoofing one) sends a `tok connect` host."""
    token = net.token(1)
    client = ClientCore(token, counter_start=1, sender_id=1, offload=True)
    plain = ClientCore(token, counter_start=1, sender_id=2)
    node = Sealer(net.network_id, PacketKey(net.secrets[1], 1), 777, CLOCK)
    welcome = json.dumps(
        {
            "op": "welcome",
            "node": "n",
            "name": "x",
            "cidr": "10.0.0.0/24",
            "cidr6": "",
            "mtu": 1400,
            "offload": 1,
        }
    ).encode()
    seeds = [
        node.seal(frame()),
        node.seal(welcome, TYPE_CONTROL),
        node.seal(tcp_superframe(), TYPE_SUPERFRAME),
    ]
    for seed in seeds:
        client.receive(seed, NOW)
        plain.receive(seed, NOW)

    def unauthenticated(data: bytes) -> str:
        config = client.config
        before = sum(client.drops.values())
        got = client.receive(data, NOW)
        if got is not None or client.config is not config:
            raise Crash(f"client took unauthenticated bytes {data[:60]!r}")
        if sum(client.drops.values()) != before + 1:
            raise Crash("junk not counted as one drop by the client")
        if plain.datagram(data, NOW) is not None:
            raise Crash("plain client took unauthenticated bytes")
        return "dropped"

    def authenticated(ptype: int) -> Callable[[bytes], str]:
        def feed(data: bytes) -> str:
            packet = node.seal(data, ptype)
            got = client.receive(packet, NOW)
            client.tick(NOW)
            client.node_offload  # noqa: B018 - read as `tok connect` does after every packet
            plain.datagram(node.seal(data, ptype), NOW)
            return "none" if got is None else f"type{got[0]}"

        return feed

    return [
        Target("client.receive(unauthenticated)", seeds, unauthenticated),
        Target(
            "client.receive(control JSON)", [welcome, b'{"op":"pong"}'], authenticated(TYPE_CONTROL)
        ),
        Target("client.receive(frame)", [frame()], authenticated(TYPE_FRAME)),
    ]


# ---------------------------------------------------------------------------- /ws hello


class HelloFixture:
    """A real NodeDaemon (in-process, SQLite store, loopback UDP) and its WebSocketPorts, so
    ``_check_hello`` runs exactly as the /ws handler runs it, minus the socket."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        from tests.support.chains import serving_node

        self.daemon, self.world, self.secrets = self.loop.run_until_complete(
            self._stack.enter_async_context(serving_node(directory, (1, 2), revoked=(2,)))
        )
        from atenet.node.websocket import WebSocketPorts

        self.ports = WebSocketPorts(self.daemon)
        self.network_id = self.world.chain.network_id
        self.auth = {k: PacketKey(s, k).auth_key for k, s in self.secrets.items()}
        self.runtime = self.loop.run_until_complete(self.daemon.ensure_network(self.network_id))
        self.chain = self.daemon.chains[self.network_id]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def hello(self, signed_by: int = 1, **fields: Any) -> dict[str, Any]:
        """A valid hello for key ``signed_by``, with ``fields`` then replaced as given."""
        from atenet.overlay.token import hello_mac

        key_id = signed_by
        when = int(time.time() * 1000)
        nonce = os.urandom(8).hex()
        network = self.network_id.hex()
        message = {
            "op": "hello",
            "network": network,
            "key_id": key_id,
            "time": when,
            "nonce": nonce,
            "mac": hello_mac(self.auth[key_id], network, key_id, when, nonce),
        }
        message.update(fields)
        return message

    def check(self, text: str | bytes, kind: WSMsgType = WSMsgType.TEXT) -> Any:
        """What the /ws handler does with a first message: a non-text message or one that fails
        the schema is a SchemaError (the handler closes with 1008), else ``_check_hello``."""
        from atenet.node.schema import WS_HELLO, SchemaError, parse

        if kind != WSMsgType.TEXT:
            raise SchemaError("", "the hello must be a text message")
        hello = parse(text, WS_HELLO)
        return self.loop.run_until_complete(self.ports._check_hello(hello))

    def close(self) -> None:
        self.loop.run_until_complete(self._stack.aclose())
        self.loop.close()


def hello_target(fx: HelloFixture) -> Target:
    seeds = [json.dumps(fx.hello()).encode(), json.dumps(fx.hello(2)).encode()]

    def feed(data: bytes) -> str:
        # aiohttp refuses a TEXT message that is not UTF-8, so only valid text gets here.
        found = fx.check(data.decode("utf-8", "replace"))
        if found is not None:
            # Only a hello with a fresh nonce and a valid MAC for a usable key is accepted.
            hello = json.loads(data)
            if hello.get("key_id") != 1:
                raise Crash(f"/ws hello accepted for key {hello.get('key_id')!r}")
        return "refused" if found is None else "accepted"

    from atenet.node.schema import SchemaError

    return Target("node.websocket.hello", seeds, feed, (SchemaError,))


def heartbeat_targets(fx: HelloFixture) -> list[Target]:
    """What a store (any bytes) or another certified node (any signed JSON) puts among the
    network's latest records, read by the node's heartbeat loop: its ``_read_heartbeats`` must
    raise nothing but AtenetError (which the loop logs and survives) and keep peers sane."""
    from atenet.chain.log import now_ms

    world, chain, daemon, runtime = fx.world, fx.chain, fx.daemon, fx.runtime
    node_b = world.node_b
    node_b_id = node_id_of_signer(node_b)
    store = daemon.store

    def signed(payload: dict[str, Any]) -> bytes:
        return chain.state.build(Kind.DIAG, payload, node_b.key, now_ms(), node_b.cert, latest=True)

    beat = {
        "node": node_b_id,
        "endpoint": "127.0.0.2:4799",
        "interval": 10.0,
        "ports": 1,
        "frames_to_peers": 0,
        "frames_from_peers": 0,
        "drops": {},
    }

    def read(blob: bytes) -> str:
        chain.state.diagnostics.clear()
        runtime.alive_until.clear()
        fx.run(store.put_latest(fx.network_id, node_b_id, blob))
        fx.run(daemon._read_heartbeats(chain, runtime))
        for node_id, until in runtime.alive_until.items():
            if not until < NOW * 10_000:  # a finite time, not inf or nan
                raise Crash(f"peer {node_id} alive until {until!r}")
        return "read" if chain.state.diagnostics else "ignored"

    def from_store(data: bytes) -> str:
        return read(data)

    def from_node(data: bytes) -> str:
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return "not_json"
        if not isinstance(payload, dict):
            return "not_object"
        return read(signed(payload))

    return [
        Target("node.latest_records(store bytes)", [signed(beat)], from_store, (AtenetError,)),
        Target(
            "node.heartbeats(node-signed JSON)",
            [json.dumps(beat).encode()],
            from_node,
            (AtenetError,),
        ),
    ]


def meta_nodes_target(fx: HelloFixture) -> Target:
    """The store's "nodes" record (any bytes: a damaged or foreign store), read by a starting
    node (``_publish_node``) and by `tok key export` (``default_endpoints`` then its endpoint
    check): a one-line AtenetError at most, never a traceback."""
    from atenet.cli.tok import _check_endpoint, default_endpoints

    store, chain, daemon = fx.daemon.store, fx.chain, fx.daemon
    now = time.time()  # entries older than NODE_RECORD_MAX_AGE are ignored
    seed = json.dumps(
        {
            "n1": {"endpoints": ["127.0.0.1:4799"], "time": now},
            "n2": {"endpoints": ["[::1]:4799"], "time": now - 1},
        }
    ).encode()

    def feed(data: bytes) -> str:
        fx.run(store.put_meta("nodes", data))
        endpoints = fx.run(default_endpoints(store, chain))
        for endpoint in endpoints:
            _check_endpoint(endpoint)
        fx.run(daemon._publish_node())
        return f"endpoints={min(len(endpoints), 3)}"

    return Target("store.meta_nodes", [seed], feed, (AtenetError,))


def node_id_of_signer(signer: Any) -> str:
    return short_id(signer.key.public_key().public_bytes_raw())


# ---------------------------------------------------------------------------- all of them


def deployment_target() -> Target:
    """The deployment record a remote `tok` reads from the store's meta table."""
    from atenet.deployment import Deployment

    seed = Deployment(os.urandom(32), os.urandom(32), "nats://127.0.0.1:4222").encode()

    def feed(data: bytes) -> str:
        record = Deployment.decode(data, "the store")
        record.id  # noqa: B018 - printed by every command that reads the record
        return "ok"

    return Target("deployment.decode", [seed], feed, (AtenetError,))


def router_targets() -> list[Target]:
    """The router's inputs: a gateway with routes (Gateway.frame), the other network's
    neighbour cache (Neighbours.learn, with addresses being resolved) and the DHCP server
    (DhcpServer.frame), each fed any frame a host can send. Junk must count as ``malformed``
    and get no answer, no forwarded packet and no released one; whatever does come out must
    be well-formed and come from the gateway; the cache stays within its bounds."""
    from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

    from atenet.router.dhcp import DhcpServer, Send
    from atenet.router.gateway import Gateway
    from atenet.router.neighbours import Neighbours
    from atenet.wire import dhcp as d

    host_mac, peer_mac = b"\x02\xaa\x00\x00\x00\x01", b"\x02\xbb\x00\x00\x00\x01"
    host, peer = IPv4Address("10.1.0.10"), IPv4Address("10.2.0.20")
    host6, peer6 = IPv6Address("fd00:1::10"), IPv6Address("fd00:2::20")
    a = Gateway(b"\x01" * 16, "10.1.0.0/24", "fd00:1::/64", 1400, rng=random.Random(1))
    b = Gateway(b"\x02" * 16, "10.2.0.0/24", "fd00:2::/64", 1400, rng=random.Random(2))
    assert a.ipv6 is not None and b.ipv6 is not None
    forwarded: list[bytes] = []
    a.add_route(IPv4Network("10.2.0.0/24"), lambda p, dst, now: forwarded.append(p), 1280)
    a.add_route(IPv6Network("fd00:2::/64"), lambda p, dst, now: forwarded.append(p), 1280)
    clock = [NOW]

    def udp4(size: int, df: bool) -> bytes:
        body = UdpRepr(4000, 4000, bytes(size)).emit(host, peer)
        ip = Ipv4Repr(host, peer, 17, body, dont_fragment=df, ident=5).emit()
        return ethernet_frame(a.mac, host_mac, 0x0800, ip)

    gateway_seeds = [
        icmp_echo_request(host_mac, a.mac, host, peer, 7, 1, b"hello"),
        icmp_echo_request(host_mac, a.mac, host, peer, 7, 1, b"hello", ttl=1),
        icmp_echo_request(host_mac, a.mac, host, IPv4Address("10.9.0.1"), 7, 1),
        icmp_echo_request(host_mac, a.mac, host, a.ipv4, 7, 1),
        icmpv6_echo_request(host_mac, a.mac, host6, peer6, 7, 1, b"hello"),
        icmpv6_echo_request(host_mac, a.mac, host6, peer6, 7, 1, bytes(1300)),
        udp4(1400 - 28, df=True),
        udp4(1400 - 28, df=False),
        arp_request(host_mac, host, a.ipv4),
        neighbor_solicitation(host_mac, host6, a.ipv6),
    ]

    def gateway(data: bytes) -> str:
        forwarded.clear()
        before = (a.drops["malformed"], sum(a.drops.values()), a.ignored)
        clock[0] += 0.01
        out = a.frame(data, clock[0])
        if a.drops["malformed"] > before[0]:
            if out or forwarded:
                raise Crash("gateway answered or forwarded a malformed frame")
            return "malformed"
        if len(out) > 1 or any(frame[6:12] != a.mac for frame in out):
            raise Crash(f"gateway sent {len(out)} frames, or not from its own MAC")
        for packet in forwarded:
            if len(packet) > 1280:
                raise Crash(f"forwarded {len(packet)} bytes over the route's MTU 1280")
            if packet[0] >> 4 == 4:
                Ipv4Repr.parse(packet)  # checksum patched right, or DecodeError: a Crash
            else:
                Ipv6Repr.parse(packet)
        if forwarded:
            return "routed"
        if out:
            return "answered"
        return "ignored" if a.ignored > before[2] else "dropped"

    cache = [Neighbours(b, max_entries=8, max_pending=8)]
    queued4 = Ipv4Repr(host, peer, 1, b"queued", ttl=63).emit()
    queued6 = Ipv6Repr(host6, peer6, 59, b"queued", 63).emit()
    learn_seeds = [
        arp_reply(peer_mac, peer, b.mac, b.ipv4),
        arp_request(peer_mac, peer, b.ipv4),
        arp_request(peer_mac, peer, IPv4Address("10.2.0.30")),
        neighbor_advertisement(peer_mac, peer6, b.mac, b.ipv6),
        neighbor_advertisement(peer_mac, peer6),
        neighbor_solicitation(peer_mac, peer6, b.ipv6),
        icmp_echo_request(peer_mac, b.mac, peer, host, 7, 1),
    ]

    def learn(data: bytes) -> str:
        nb = cache[0]
        if nb.lookup(peer) is not None or nb.lookup(peer6) is not None:
            nb = cache[0] = Neighbours(b, max_entries=8, max_pending=8)
        clock[0] += 0.05
        nb.send(queued4, peer, clock[0])
        nb.send(queued6, peer6, clock[0])
        before = (nb.drops["malformed"], nb.counters["ignored"])
        out = nb.learn(data, clock[0])
        if nb.drops["malformed"] > before[0]:
            if out:
                raise Crash("neighbour cache released packets on a malformed frame")
            return "malformed"
        for frame in out:
            if frame[6:12] != b.mac or frame[14:] not in (queued4, queued6):
                raise Crash("neighbour cache released something it never queued")
        if len(nb) > 8 or nb.queued > 8:
            raise Crash(f"neighbour cache over its bounds: {len(nb)} entries, {nb.queued} queued")
        if out:
            return "released"
        return "ignored" if nb.counters["ignored"] > before[1] else "learned"

    server = DhcpServer(b"\x01" * 16, "10.1.0.0/24", a.ipv4, a.mac, 1400, node_id="fuzz")

    def client(kind: int, **options: bytes) -> bytes:
        opts = {d.OPT_MESSAGE_TYPE: bytes([kind])}
        opts.update({int(k[1:]): v for k, v in options.items()})
        message = d.DhcpMessage(d.BOOTREQUEST, 0x1234, host_mac, options=opts).emit()
        return d.dhcp_frame(
            message,
            src_mac=host_mac,
            dst_mac=b"\xff" * 6,
            src_ip=IPv4Address(0),
            dst_ip=IPv4Address("255.255.255.255"),
            src_port=d.CLIENT_PORT,
            dst_port=d.SERVER_PORT,
        )

    requested = IPv4Address("10.1.0.9").packed
    dhcp_seeds = [
        client(d.DHCPDISCOVER, o12=b"fuzz"),
        client(d.DHCPREQUEST, o50=requested, o54=a.ipv4.packed),
        client(d.DHCPDECLINE, o50=requested),
        client(d.DHCPRELEASE),
        client(d.DHCPINFORM),
    ]

    def dhcp(data: bytes) -> str:
        before = server.counters["malformed"]
        clock[0] += 0.01
        actions = server.frame(data, clock[0], port="fuzz")
        if server.counters["malformed"] > before:
            if actions:
                raise Crash("DHCP server answered a malformed frame")
            return "malformed"
        sends = [action for action in actions if isinstance(action, Send)]
        for send in sends:
            eth = EthernetRepr.parse(send.frame)
            ip = Ipv4Repr.parse(eth.payload)
            UdpRepr.parse(ip.payload, ip.src, ip.dst)
            if eth.src != a.mac:
                raise Crash("DHCP reply not from the gateway's MAC")
        if sends:
            return "answered"
        return "bind" if actions else "ignored"

    return [
        Target("router.Gateway.frame", gateway_seeds, gateway),
        Target("router.Neighbours.learn", learn_seeds, learn),
        Target("router.DhcpServer.frame", dhcp_seeds, dhcp),
    ]


def stack_target() -> Target:
    """stack.Interface.receive: any frame at the userspace stack (mio ports). Junk is counted
    as malformed and never answered; neighbour, reassembly and event tables stay bounded."""
    from ipaddress import IPv4Address, IPv4Interface, IPv6Address

    from atenet.stack import Interface
    from atenet.wire.checksum import checksum
    from atenet.wire.udp import UdpRepr

    mac, peer = bytes.fromhex("02aa00000001"), bytes.fromhex("020000000002")
    me, them = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1")
    iface = Interface(mac, ipv4=IPv4Interface(f"{me}/24"), gateway4=them)
    iface.poll(0.0)  # the first router solicitation
    ll, peer6 = iface.ipv6[0].ip, IPv6Address("fe80::2")
    iface.udp_bind(5000)
    udp = UdpRepr(1234, 5000, b"data" * 100).emit(them, me)
    whole = Ipv4Repr(them, me, 17, udp, ident=9).emit()
    first = Ipv4Repr(them, me, 17, udp[:200], ident=9, more_fragments=True).emit()
    last = Ipv4Repr(them, me, 17, udp[200:], ident=9, fragment_offset=25).emit()
    igmp = bytearray(bytes.fromhex("1164000000000000"))
    igmp[2:4] = checksum(igmp).to_bytes(2, "big")
    query = Ipv4Repr(them, IPv4Address("224.0.0.1"), 2, bytes(igmp), ttl=1).emit()
    seeds = [
        icmp_echo_request(peer, mac, them, me, 7, 1, b"hello"),
        icmpv6_echo_request(peer, mac, peer6, ll, 7, 1, b"hello"),
        neighbor_solicitation(peer, peer6, ll),
        neighbor_advertisement(peer, peer6, mac, ll),
        arp_request(peer, them, me),
        b"".join((mac, peer, b"\x08\x00", whole)),
        b"".join((mac, peer, b"\x08\x00", first)),
        b"".join((mac, peer, b"\x08\x00", last)),
        b"".join((b"\x01\x00\x5e\x00\x00\x01", peer, b"\x08\x00", query)),
    ]

    def feed(data: bytes) -> str:
        before = iface.counters["rx_malformed"]
        iface.receive(data, 1.0)
        out = iface.poll(1.0)
        iface.events()
        if iface.counters["rx_malformed"] > before and out:
            raise Crash(f"the stack answered a malformed frame with {len(out)} frame(s)")
        if len(iface.arp.entries) > iface.arp.capacity or len(iface.nd.entries) > iface.nd.capacity:
            raise Crash("neighbour cache grew past its capacity")
        if len(iface.reassembly.partial) > iface.reassembly.max_datagrams:
            raise Crash("reassembly holds more datagrams than its bound")
        if iface.reassembly.held > iface.reassembly.max_bytes:
            raise Crash("reassembly holds more bytes than its bound")
        return "malformed" if iface.counters["rx_malformed"] > before else f"out={min(len(out), 2)}"

    return Target("stack.Interface", seeds, feed)


def mio_targets() -> list[Target]:
    """What a program sends the node's mio session (any binary WebSocket message), and the DNS
    answers a session reads for RESOLVE. A session never raises, everything it says decodes,
    its sockets and bytes stay within its limits; the DNS parser raises only DecodeError."""
    from ipaddress import IPv4Address, IPv4Interface

    from atenet.errors import DecodeError
    from atenet.mio import bus, dns
    from atenet.mio.bus import Endpoint
    from atenet.mio.session import Limits, Session

    peer = IPv4Address("10.0.0.9")
    limits = Limits(max_sockets=16, max_bad=1 << 30)
    session = Session(
        bytes.fromhex("02aa00000002"), 1500, NOW, ipv4=IPv4Interface("10.0.0.2/24"),
        dns=[peer], limits=limits, seed=1,
    )  # fmt: skip
    for message in (bus.Listen(1, Endpoint(None, 80)), bus.Bind(2, Endpoint(None, 53))):
        session.bus_in(message.encode(), NOW)
    seeds = [
        m.encode()
        for m in (
            bus.Connect(3, Endpoint(peer, 80), 0, 1000),
            bus.Listen(4, Endpoint(None, 0), 8),
            bus.Bind(5, Endpoint(None, 0)),
            bus.Data(3, b"data"),
            bus.Credit(3, 4096),
            bus.Shutdown(3),
            bus.Close(2),
            bus.Close(3, abort=True),
            bus.Datagram(2, Endpoint(peer, 53), b"query"),
            bus.Ping(6, peer, 56, 100),
            bus.Resolve(7, "host.lan"),
        )
    ]
    clock = [NOW]

    def feed(data: bytes) -> str:
        clock[0] += 0.25
        session.bus_in(data, clock[0])
        _frames, out = session.poll(clock[0])
        for raw in out:
            session.written(len(raw))
            bus.decode(raw)  # DecodeError here is a Crash: the node must speak the bus
        if session.sockets > limits.max_sockets:
            raise Crash(f"the session holds {session.sockets} sockets")
        if session.buffered > limits.max_buffered:
            raise Crash(f"the session holds {session.buffered} bytes")
        return type(bus.decode(out[-1])).__name__ if out else "silent"

    def feed_dns(data: bytes) -> str:
        rcode, found = dns.answer_addresses(data, int.from_bytes(data[:2], "big"))
        return f"rcode={rcode} found={min(len(found), 2)}"

    answer = bytes.fromhex(
        "12348180000100010000000004686f7374036c616e0000010001c00c000100010000003c00040a000032"
    )  # an answer for host.lan: A 10.0.0.50
    return [
        Target("mio.Session.bus_in", seeds, feed),
        Target(
            "mio.dns.answer",
            [answer, dns.query(0x1234, dns.encode_name("a.b"), 28)],
            feed_dns,
            allowed=(DecodeError,),
        ),
    ]


def dhcp_client_target() -> Target:
    """The DHCP client of `tok connect` (client/dhcp.py), waiting for its ACK, fed any frame the
    node can hand it. Junk counts as ``malformed`` or ``foreign`` and sends nothing; whatever
    binds must be a usable unicast address with a sane prefix and times."""
    from ipaddress import IPv4Address, IPv4Network

    from atenet.client.dhcp import REQUESTING, DhcpClient, Event, Send
    from atenet.wire import dhcp as d

    mac, gw_mac, gw = (
        b"\x02\x00\x00\x00\x00\x07",
        b"\x02\xfe\x00\x00\x00\x01",
        IPv4Address("10.1.0.1"),
    )

    def fresh() -> DhcpClient:
        return DhcpClient(mac, rng=random.Random(1), jitter=0.0)

    probe = fresh()  # the same rng every time: the same xid
    probe.start(NOW)
    xid = probe.xid

    def reply(kind: int, yiaddr: str = "10.1.0.9", **options: bytes) -> bytes:
        opts = {d.OPT_MESSAGE_TYPE: bytes([kind]), d.OPT_SERVER_ID: gw.packed}
        opts.update({int(k[1:]): v for k, v in options.items()})
        message = d.DhcpMessage(d.BOOTREPLY, xid, mac, yiaddr=IPv4Address(yiaddr), options=opts)
        return d.dhcp_frame(
            message.emit(), src_mac=gw_mac, dst_mac=mac, src_ip=gw, dst_ip=IPv4Address(yiaddr)
        )

    offer = reply(d.DHCPOFFER)
    routes = d.opt_classless_routes([(IPv4Network("10.2.0.0/24"), gw)])
    seeds = [
        reply(d.DHCPACK, o1=bytes([255, 255, 255, 0]), o51=d.opt_u32(3600), o3=gw.packed,
              o6=bytes([8, 8, 8, 8]), o26=(1400).to_bytes(2, "big"), o121=routes),
        reply(d.DHCPACK, o51=d.opt_u32(60), o58=d.opt_u32(30), o59=d.opt_u32(50)),
        reply(d.DHCPNAK, "0.0.0.0", o56=b"address was bound elsewhere"),
        offer,
    ]  # fmt: skip

    def feed(data: bytes) -> str:
        client = fresh()
        client.start(NOW)
        client.frame(offer, NOW)
        assert client.state == REQUESTING
        before = client.counters["malformed"] + client.counters["foreign"]
        actions = client.frame(data, NOW + 0.5)
        if client.counters["malformed"] + client.counters["foreign"] > before:
            if actions:
                raise Crash("the DHCP client acted on a malformed or foreign frame")
            return "dropped"
        events = [a for a in actions if isinstance(a, Event)]
        lease = client.lease
        if lease is not None:
            addr = lease.address
            if addr.is_multicast or addr.is_loopback or addr.is_unspecified:
                raise Crash(f"the DHCP client bound {addr}")
            if not (0 <= lease.prefixlen <= 32 and 0 < lease.t1 <= lease.t2 <= lease.lease_time):
                raise Crash(f"the DHCP client took a lease with bad times or prefix: {lease}")
            return "bound"
        if any(isinstance(a, Send) for a in actions):
            return "restarted" if not events else "lost"
        return "ignored"

    return Target("client.DhcpClient.frame", seeds, feed)


def byte_targets() -> list[Target]:
    """Targets that need no network."""
    return [
        *seal_targets(),
        fragment_target(),
        *offload_targets(),
        token_target(),
        *wire_targets(),
        deployment_target(),
        *router_targets(),
        dhcp_client_target(),
        stack_target(),
        *mio_targets(),
    ]


def network_targets(net: Net) -> list[Target]:
    return [*node_targets(net), *client_targets(net), *chain_targets(net), owner_body_target(net)]


# ---------------------------------------------------------------------------- mutation


def mutate(rng: random.Random, seed: bytes, extras: tuple[bytes, ...] = ()) -> bytes:
    """1-4 random edits of ``seed``: bit flips, byte sets, truncation, extension, insertion,
    deletion, duplicated slices and interesting values (0, 0xff, 0x7f, 0x80, JSON tokens)."""
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        n = len(data)
        op = rng.randrange(9)
        if op == 0 and n:
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            data[rng.randrange(n)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and n:
            del data[rng.randrange(n) :]
        elif op == 3:
            data += rng.randbytes(rng.choice((1, 2, 4, 16, 100)))
        elif op == 4:
            at = rng.randrange(n + 1)
            data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8)))
        elif op == 5 and n:
            at = rng.randrange(n)
            del data[at : at + rng.choice((1, 2, 4, 8, 32))]
        elif op == 6 and n:
            at = rng.randrange(n)
            piece = data[at : at + rng.choice((2, 8, 64))]
            to = rng.randrange(n + 1)
            data[to:to] = piece
        elif op == 7 and n >= 2:
            at = rng.randrange(n - 1)
            data[at : at + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"\x80\x00", b"\x00\x01"))
        else:
            token = rng.choice(
                (
                    b"1e999",
                    b"-1",
                    b"null",
                    b"[]",
                    b"{}",
                    b'"\xc3\xa9"',
                    b"NaN",
                    b"[" * 64,
                    b"[" * 5000,
                    b"18446744073709551616",
                    b'"',
                    b"\\u0000",
                    *extras,
                )
            )
            at = rng.randrange(n + 1)
            data[at : at + rng.choice((0, 1, 4))] = token
    return bytes(data)


def inputs(rng: random.Random, seeds: list[bytes]) -> Iterator[bytes]:
    """Endless inputs: mostly mutated seeds, sometimes the seed itself or pure random bytes."""
    while True:
        pick = rng.random()
        if pick < 0.9:
            yield mutate(rng, rng.choice(seeds))
        elif pick < 0.95:
            yield rng.choice(seeds)
        else:
            yield rng.randbytes(rng.choice((0, 1, 13, 33, 34, 50, 51, 200, 1500)))
