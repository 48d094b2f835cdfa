"""The node's packet core: sealed datagrams in, frames switched, sealed datagrams out.

Sans-I/O: :class:`NodeCore` is fed datagrams with the time (``datagram(data, addr, now)``) and
sends through a ``send(packet, addr)`` callable the shell gives it. Things the shell must act on
asynchronously (load a network's chain, join or leave its member collection) come out of
:meth:`NodeCore.take_events`. Chain state comes in through :meth:`NetworkRuntime.apply_state`.

Per datagram: parse the clear header → find the network by id → pick the key by key id
(0 = the node-to-node key, else an access key) → authenticate and check the replay window →
switch. Every failure is dropped and counted by reason, never answered.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from atenet.chain.state import NetworkState
from atenet.offload import OffloadError, check
from atenet.overlay.seal import (
    NODE_KEY_ID,
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    Opener,
    PacketKey,
    Sealer,
    SealError,
    derive_node_secret,
    parse_header,
)
from atenet.switch.core import Port, Switch

UDP_IDLE = 60.0
"""A UDP client port lives this long after its last packet (tok keeps it alive every 15 s)."""

PEER_GRACE = 45.0
"""A member with no heartbeat record yet is flooded to this long after it joined."""

ETH_MIN = 14

Addr = tuple[str, int]
Send = Callable[[bytes, Addr], None]


def sender_id_for(node_id: str) -> int:
    """A node's sender id: 32 bits of SHA-256 of its id (unique per node with high odds)."""
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "big")


def parse_endpoint(endpoint: str) -> Addr:
    """``host:port`` or ``[v6]:port`` -> a sendto address (names resolved once, here)."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = socket.gethostbyname(host)
    return host, int(port)


class UdpClientPort(Port):
    """A `tok connect` client: frames to it are sealed with its own access key."""

    __slots__ = ("addr", "seal", "send", "sender_id")

    def __init__(
        self, addr: Addr, key_id: int, sender_id: int, sealer: Sealer, send: Send, now: float
    ) -> None:
        super().__init__(f"udp:{addr[0]}:{addr[1]}/k{key_id}", "udp", now, key_id)
        self.addr = addr
        self.sender_id = sender_id
        self.seal = sealer.seal
        self.send = send

    def deliver(self, frame: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(frame)
        self.send(self.seal(frame), self.addr)

    def deliver_packet(self, packet: bytes) -> None:
        """An offloaded packet, sealed whole (the client said ``offload`` in its hello)."""
        self.frames_out += 1
        self.bytes_out += len(packet)
        self.send(self.seal(packet, TYPE_SUPERFRAME), self.addr)

    def control(self, message: dict[str, Any]) -> None:
        self.send(self.seal(json.dumps(message).encode(), TYPE_CONTROL), self.addr)


class NetworkRuntime:
    """One network served by this node: keys from the chain, the switch, client ports."""

    def __init__(
        self,
        network_id: bytes,
        node_id: str,
        send: Send,
        counter_start: int,
        emit: Callable[[str, bytes], None],
    ) -> None:
        self.network_id = network_id
        self.node_id = node_id
        self.sender_id = sender_id_for(node_id)
        self.send = send
        self.counter_start = counter_start
        self.emit = emit
        self.state: NetworkState | None = None
        self.switch = Switch(self._to_peers, self._to_peers_packet)
        self.openers: dict[int, Opener] = {}
        self.sealers: dict[int, Sealer] = {}
        self.revoked: set[int] = set()
        self.clients: dict[tuple[int, int], UdpClientPort] = {}
        self.peers: tuple[Addr, ...] = ()
        self.peer_ids: tuple[str, ...] = ()
        self.alive_until: dict[str, float] = {}  # node id -> end of its heartbeat's validity
        self.drops: Counter[str] = Counter()
        self._node_sealer: Sealer | None = None

    # ------------------------------------------------------------------ chain state

    def apply_state(self, state: NetworkState, now: float) -> list[Port]:
        """Take keys, members and settings from the chain; return ports closed by revocation."""
        self.state = state
        if state.data_key is not None and NODE_KEY_ID not in self.openers:
            node_key = PacketKey(derive_node_secret(state.data_key), NODE_KEY_ID)
            self.openers[NODE_KEY_ID] = Opener(node_key)
            self._node_sealer = Sealer(
                self.network_id, node_key, self.sender_id, self.counter_start
            )
        usable = {k.key_id: k for k in state.keys.values() if k.usable(now)}
        for key_id in [k for k in self.openers if k != NODE_KEY_ID and k not in usable]:
            del self.openers[key_id]
            self.sealers.pop(key_id, None)
        for key_id, key in usable.items():
            if key_id not in self.openers:
                packet_key = PacketKey(key.secret, key_id)
                self.openers[key_id] = Opener(packet_key)
                self.sealers[key_id] = Sealer(
                    self.network_id, packet_key, self.sender_id, self.counter_start
                )
        self.revoked = {k for k in state.keys if k not in usable}
        closed = []
        for key, port in list(self.switch.ports.items()):
            if port.key_id is not None and port.key_id not in usable:
                self.clients.pop(key, None)  # type: ignore[call-overload]
                self.remove_port(key)
                port.close()
                closed.append(port)
        self.refresh_peers(now)
        return closed

    def refresh_peers(self, now: float) -> None:
        """Flood to every other member whose heartbeat is still valid (or that just joined)."""
        if self.state is None:
            return
        peers, ids = [], []
        for member in self.state.members.values():
            if member.node_id == self.node_id:
                continue
            if now > self.alive_until.get(member.node_id, member.since + PEER_GRACE):
                continue
            for endpoint in member.endpoints[:1]:
                try:
                    peers.append(parse_endpoint(endpoint))
                    ids.append(member.node_id)
                except (OSError, ValueError):
                    self.drops["bad_peer_endpoint"] += 1
        self.peers = tuple(peers)
        self.peer_ids = tuple(ids)

    @property
    def is_member(self) -> bool:
        return self.state is not None and self.node_id in self.state.members

    # ------------------------------------------------------------------ ports

    def add_port(self, key: object, port: Port) -> None:
        was_idle = len(self.switch) == 0
        self.switch.add(key, port)
        if was_idle:
            self.emit("active", self.network_id)

    def remove_port(self, key: object) -> Port | None:
        port = self.switch.remove(key)
        if port is not None and len(self.switch) == 0:
            self.emit("idle", self.network_id)
        return port

    def remove_client(self, key: tuple[int, int]) -> Port | None:
        self.clients.pop(key, None)
        return self.remove_port(key)

    def expire(self, now: float) -> list[Port]:
        stale = [k for k, p in self.clients.items() if now - p.last_seen > UDP_IDLE]
        return [p for p in (self.remove_client(k) for k in stale) if p is not None]

    # ------------------------------------------------------------------ packets

    def _to_peers(self, frame: bytes, ptype: int = TYPE_FRAME) -> None:
        peers = self.peers
        if peers and self._node_sealer is not None:
            sealed = self._node_sealer.seal(frame, ptype)  # once per flood, the same bytes to all
            send = self.send
            for addr in peers:
                send(sealed, addr)

    def _to_peers_packet(self, packet: bytes) -> None:
        """Offloaded packets travel between nodes as they are: every node takes them."""
        self._to_peers(packet, TYPE_SUPERFRAME)

    def packet(
        self,
        data: bytes,
        addr: Addr,
        ptype: int,
        key_id: int,
        sender_id: int,
        counter: int,
        now: float,
    ) -> None:
        opener = self.openers.get(key_id)
        if opener is None:
            self.drops["revoked_key" if key_id in self.revoked else "unknown_key"] += 1
            return
        try:
            payload = opener.open(data, sender_id, counter)
        except SealError as err:
            self.drops[err.reason] += 1
            return
        if key_id == NODE_KEY_ID:
            self._from_peer(payload, ptype)
            return
        key = (key_id, sender_id)
        port = self.clients.get(key)
        if port is None:
            port = UdpClientPort(addr, key_id, sender_id, self.sealers[key_id], self.send, now)
            self.clients[key] = port
            self.add_port(key, port)
        elif port.addr != addr:
            port.addr = addr  # the client roamed or its NAT rebound: follow it
        port.last_seen = now
        if ptype == TYPE_FRAME:
            if len(payload) < ETH_MIN:
                self.drops["runt"] += 1
                return
            self.switch.from_local(port, payload)
        elif ptype == TYPE_SUPERFRAME:
            if self._valid_packet(payload):
                self.switch.packet_from_local(port, payload)
        elif ptype == TYPE_CONTROL:
            self._control(port, key, payload)
        else:
            self.drops["type"] += 1

    def _from_peer(self, frame: bytes, ptype: int) -> None:
        if ptype == TYPE_FRAME:
            if len(frame) < ETH_MIN:
                self.drops["runt"] += 1
                return
        elif ptype != TYPE_SUPERFRAME:
            self.drops["type"] += 1
            return
        if len(self.switch) == 0:
            self.drops["no_local_ports"] += 1
            if self.is_member:
                self.emit("stale", self.network_id)
            return
        if ptype == TYPE_FRAME:
            self.switch.from_peer(frame)
        elif self._valid_packet(frame):
            self.switch.packet_from_peer(frame)

    def _valid_packet(self, packet: bytes) -> bool:
        """Refuse (and count) an offload header no kernel would have written."""
        try:
            check(packet)
        except OffloadError as err:
            self.drops[f"offload_{err.reason}"] += 1
            return False
        return True

    def _control(self, port: UdpClientPort, key: tuple[int, int], payload: bytes) -> None:
        try:
            message = json.loads(payload)
            op = message["op"]
        except (ValueError, KeyError, TypeError, RecursionError):  # deep nesting: RecursionError
            self.drops["bad_control"] += 1
            return
        if op in ("hello", "ping"):
            # Repeated on every ping, so a port re-created after expiry learns it again.
            port.offload = message.get("offload") == 1
            port.control(self.welcome("welcome" if op == "hello" else "pong"))
        elif op == "bye":
            self.remove_client(key)
        else:
            self.drops["bad_control"] += 1

    def welcome(self, op: str) -> dict[str, Any]:
        """What a client needs to configure its interface (it only holds a token)."""
        s = self.state.settings if self.state is not None else None
        return {
            "op": op,
            "node": self.node_id,
            "name": s.name if s else "",
            "cidr": s.cidr if s else "",
            "cidr6": s.cidr6 if s else "",
            "mtu": s.mtu if s else 0,
            "offload": 1,  # this node takes offloaded packets (TYPE_SUPERFRAME)
        }

    def status(self) -> dict[str, Any]:
        s = self.state.settings if self.state is not None else None
        return {
            "id": self.network_id.hex(),
            "name": s.name if s else "",
            "cidr": s.cidr if s else "",
            "member": self.is_member,
            "peers": [f"{h}:{p}" for h, p in self.peers],
            "peer_ids": list(self.peer_ids),
            "frames_to_peers": self.switch.frames_to_peers,
            "frames_from_peers": self.switch.frames_from_peers,
            "segmented": self.switch.segmented,
            "ports": [p.counters() for p in self.switch.ports.values()],
            "drops": dict(self.drops),
        }


class NodeCore:
    """Every network this node serves, behind one UDP socket."""

    def __init__(self, node_id: str, send: Send, counter_start: int) -> None:
        self.node_id = node_id
        self.send = send
        self.counter_start = counter_start
        self.networks: dict[bytes, NetworkRuntime] = {}
        self.drops: Counter[str] = Counter()
        self.datagrams = 0
        self._events: list[tuple[str, bytes]] = []
        self._asked: set[bytes] = set()

    def _emit(self, what: str, network_id: bytes) -> None:
        self._events.append((what, network_id))

    @property
    def has_events(self) -> bool:
        """Whether :meth:`take_events` has something (cheap; checked after every read batch)."""
        return bool(self._events)

    def take_events(self) -> list[tuple[str, bytes]]:
        """Things the shell must do: ("load" | "active" | "idle" | "stale", network id)."""
        events, self._events = self._events, []
        self._asked.clear()
        return events

    def add_network(self, network_id: bytes) -> NetworkRuntime:
        runtime = NetworkRuntime(
            network_id, self.node_id, self.send, self.counter_start, self._emit
        )
        self.networks[network_id] = runtime
        return runtime

    def remove_network(self, network_id: bytes) -> None:
        self.networks.pop(network_id, None)

    def datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.datagrams += 1
        try:
            network_id, ptype, key_id, sender_id, counter = parse_header(data)
        except SealError as err:
            self.drops[err.reason] += 1
            return
        runtime = self.networks.get(network_id)
        if runtime is None:
            self.drops["unknown_network"] += 1
            if network_id not in self._asked:  # one load request per network per batch
                self._asked.add(network_id)
                self._events.append(("load", network_id))
            return
        runtime.packet(data, addr, ptype, key_id, sender_id, counter, now)

    def expire(self, now: float) -> None:
        for runtime in self.networks.values():
            runtime.expire(now)
            runtime.refresh_peers(now)

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "datagrams": self.datagrams,
            "drops": dict(self.drops),
            "networks": [r.status() for r in self.networks.values()],
        }
