"""The `tok connect` client core (sans-I/O): one access token, one node at a time.

The client holds only a token (network id, key id, secret, node endpoints). It learns the
network's settings from the node: it sends a ``hello`` control packet, and the node answers with a
``welcome`` carrying the network's name, CIDRs and MTU. While connected it sends a ``ping`` every
few seconds; a node that stops answering (or never answers: revoked key, node down, UDP blocked —
a node never answers a packet that fails its checks) is abandoned for the next endpoint in the
token.

Offloads: a client whose TAP has a virtio-net header (``offload=True``) says ``"offload": 1`` in
its hello and pings, so the node sends it offloaded packets (``TYPE_SUPERFRAME``: super-frames
and partial checksums, written to the TAP as they are). It sends offloaded packets itself only
to a node whose welcome says ``"offload": 1``; an older node gets standard frames, segmented
here. See docs/protocol.md, "Offloaded packets".

Replay protection across restarts and nodes: the first hello to a node names no node instance,
so the node answers ``challenge`` with its instance id; the client then says hello again naming
it, and only such a bound hello (or ping) opens a port. The sealer's counter is moved up to the
clock on every tick and control message, so a node with no window for this session can refuse
anything older than its clock skew. See docs/protocol.md, "Replay across restarts and nodes".
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

from atenet.errors import AtenetError
from atenet.node.core import Addr, parse_endpoint
from atenet.offload import VNET_HDR_LEN, to_frames
from atenet.overlay.fragment import MAX_SUPERFRAME
from atenet.overlay.replay import Freshness
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
from atenet.overlay.token import AccessToken

PING_INTERVAL = 5.0
"""Seconds between control pings while connected."""

DEAD_AFTER = 15.0
"""A node that has not answered for this long is abandoned for the next endpoint."""

HELLO_TIMEOUT = 2.0
"""Seconds to wait for a welcome from one node before trying the next endpoint."""

HELLO_RETRY = 0.5
"""Seconds between hellos to the same node (its first packet may only make it load the
network, so a node is asked several times before it is given up)."""


def hello_host(name: str) -> str:
    """``name`` as a node accepts it: printable characters only, at most 64 of them."""
    return "".join(c for c in name if c.isprintable())[:64]


class ClientCore:
    """Seals frames for a node and opens what it sends back."""

    def __init__(
        self,
        token: AccessToken,
        counter_start: int,
        sender_id: int | None = None,
        *,
        offload: bool = False,
        host: str | None = None,
        mirror: bool = False,
    ) -> None:
        """``offload``: the TAP has a virtio-net header, so offloaded packets can be taken.
        ``mirror``: ask for every frame of the network (`tok monitor`), not only those the
        learning switch sends this port.
        ``host``: the name the node shows for this host (default: the system's host name)."""
        if not token.endpoints:
            raise AtenetError(
                "the token names no node endpoint: export one with "
                "`tok key export NETWORK --node HOST:PORT`"
            )
        self.token = token
        self.sender_id = (
            sender_id if sender_id is not None else int.from_bytes(os.urandom(4), "big")
        )
        key = PacketKey(token.secret, token.key_id)
        self.sealer = Sealer(token.network_id, key, self.sender_id, counter_start)
        # No start floor on this side: a node whose clock is a little behind ours must still
        # be heard at once; its packets older than our clock's skew are refused.
        self.freshness = Freshness()
        self.opener = Opener(key, freshness=self.freshness)
        self.instance: str | None = None
        """The current node's instance id, from its challenge or welcome; named in hellos."""
        self.outbox: list[bytes] = []
        """Control packets to send at the next tick (a bound hello after a challenge)."""
        self.endpoints: list[Addr] = [parse_endpoint(e) for e in token.endpoints]
        self.index = 0
        self.config: dict[str, Any] | None = None
        self.last_heard = 0.0
        self.last_sent_control = 0.0
        self.asked_at: float | None = None  # first hello to the current endpoint
        self.last_hello = 0.0
        self.drops: Counter[str] = Counter()
        self.failovers = 0
        self.offload = offload
        self.mirror = mirror
        self.host = hello_host(socket.gethostname() if host is None else host)
        """Sent in hellos and pings so the node can name this port (`tok hosts`)."""
        self.segmented = 0
        """Offloaded packets this client had to segment (the node does not take them)."""
        self.dead_after = DEAD_AFTER
        """Seconds of silence after which the node is abandoned for the next endpoint."""
        self.ping_sent: float | None = None  # the ping whose pong has not come back yet
        self.rtt: float | None = None
        """Seconds from the last answered ping to its pong: the client-to-node hop."""
        self.rtt_at = 0.0

    @property
    def node(self) -> Addr:
        return self.endpoints[self.index]

    def seal_frame(self, frame: bytes) -> bytes:
        return self.sealer.seal(frame, TYPE_FRAME)

    @property
    def node_offload(self) -> bool:
        """The current node said it takes offloaded packets."""
        return self.config is not None and self.config.get("offload") == 1

    def seal_packet(self, packet: bytes) -> list[bytes]:
        """Sealed datagrams for one packet read from a vnet TAP (virtio-net header + frame).

        A plain frame goes as ``TYPE_FRAME``; a super-frame or a partial checksum goes whole as
        ``TYPE_SUPERFRAME`` (one AES-GCM call; sent as fragments of one UDP GSO send) when the
        node takes it and it is small enough to fragment, else as the standard frames it stands
        for.
        """
        seal = self.sealer.seal
        if not (packet[1] or packet[0] & 1):  # offload.is_offloaded, inlined: per packet
            return [seal(memoryview(packet)[VNET_HDR_LEN:], TYPE_FRAME)]
        if self.node_offload and len(packet) <= MAX_SUPERFRAME:
            return [seal(packet, TYPE_SUPERFRAME)]
        self.segmented += 1
        return [seal(frame, TYPE_FRAME) for frame in to_frames(packet)]

    def control(self, op: str, now: float) -> bytes:
        self.last_sent_control = now
        if op == "ping":
            self.ping_sent = now
        elif op == "hello":
            self.last_hello = now
            if self.asked_at is None:
                self.asked_at = now
        message: dict[str, Any] = {"op": op}
        if self.offload and op in ("hello", "ping"):
            message["offload"] = 1
        if self.mirror and op in ("hello", "ping"):
            message["mirror"] = 1
        if self.host and op in ("hello", "ping"):
            message["host"] = self.host
        if self.instance is not None and op in ("hello", "ping"):
            message["instance"] = self.instance
        self.sealer.advance(int(now * 1_000_000_000))
        return self.sealer.seal(json.dumps(message).encode(), TYPE_CONTROL)

    def datagram(self, data: bytes, now: float) -> bytes | None:
        """A standard frame for the TAP, or None (control handled, or packet dropped)."""
        got = self.receive(data, now)
        if got is None:
            return None
        ptype, payload = got
        if ptype == TYPE_FRAME:
            return payload
        self.drops["type"] += 1  # an offloaded packet: only receive() callers take those
        return None

    def receive(self, data: bytes, now: float) -> tuple[int, bytes] | None:
        """``(TYPE_FRAME, frame)`` or ``(TYPE_SUPERFRAME, packet)`` for the TAP, or None.

        None when a control message was handled or the packet was dropped; an offloaded packet
        reaches only a client created with ``offload`` (it would be garbage on a plain TAP).
        """
        try:
            network_id, ptype, key_id, sender_id, counter = parse_header(data)
        except SealError as err:
            self.drops[err.reason] += 1
            return None
        if network_id != self.token.network_id or key_id != self.token.key_id:
            self.drops["wrong_network" if network_id != self.token.network_id else "key"] += 1
            return None
        try:
            payload = self.opener.open(data, sender_id, counter)
        except SealError as err:
            self.drops[err.reason] += 1
            return None
        self.last_heard = now
        if ptype == TYPE_FRAME:
            return TYPE_FRAME, payload
        if ptype == TYPE_SUPERFRAME:
            if self.offload:
                return TYPE_SUPERFRAME, payload
            self.drops["type"] += 1
            return None
        if ptype == TYPE_CONTROL:
            try:
                message = json.loads(payload)
            except (ValueError, RecursionError):  # deep nesting raises RecursionError
                self.drops["bad_control"] += 1
                return None
            if not isinstance(message, dict):
                self.drops["bad_control"] += 1
                return None
            op = message.get("op")
            if op in ("welcome", "pong"):
                self.config = message
                if isinstance(message.get("instance"), str):
                    self.instance = message["instance"]
                if op == "pong" and self.ping_sent is not None:
                    self.rtt = max(0.0, now - self.ping_sent)
                    self.rtt_at = now
                    self.ping_sent = None
            elif op == "challenge" and isinstance(message.get("instance"), str):
                # The node has no port for us (first contact, or it restarted): say hello again,
                # naming its instance, at the next tick.
                self.instance = message["instance"]
                self.outbox = [self.control("hello", now)]
        return None

    def tick(self, now: float) -> list[bytes]:
        """Control packets due now; switches to the next endpoint when the node is silent."""
        self.freshness.set_now(now)
        self.sealer.advance(int(now * 1_000_000_000))
        if self.outbox:
            out, self.outbox = self.outbox, []
            return out
        if self.config is None:
            if self.asked_at is not None and now - self.asked_at >= HELLO_TIMEOUT:
                self.next_endpoint()
            if self.asked_at is None or now - self.last_hello >= HELLO_RETRY:
                return [self.control("hello", now)]
            return []
        if now - self.last_heard > self.dead_after:
            self.next_endpoint()
            self.config = None
            self.ping_sent = None
            return [self.control("hello", now)]
        if now - self.last_sent_control >= PING_INTERVAL:
            return [self.control("ping", now)]
        return []

    def next_endpoint(self) -> None:
        self.index = (self.index + 1) % len(self.endpoints)
        self.failovers += 1
        self.asked_at = None
        self.instance = None  # another node: its instance comes with its challenge
        self.outbox = []


def endpoint_text(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class LinkEvent:
    """Something about the link to the network a user (or a script) should hear of.

    ``kind`` is ``node_lost`` (the node in use stopped answering), ``failover`` (another of the
    token's endpoints is tried), ``reconnected`` (a node answers again) or ``gave_up`` (no
    answer from any endpoint for the give-up time); ``fields`` are JSON-ready details.
    """

    kind: str
    fields: dict[str, Any]


class Liveness:
    """Turns the core's silent fail-over into events, and decides when to give up.

    The core abandons a node after ``dead_after`` seconds of silence and says hello to the next
    endpoint, forever; nothing told the user, so a host whose key was revoked or whose only node
    died kept its TAP up and said nothing (issue 8). Call :meth:`check` after every
    :meth:`ClientCore.tick`; the shell logs or prints the events and exits on ``gave_up``.
    ``give_up=None`` (``--persist``) never gives up. With a give-up time, a node is abandoned
    after half of it (at most :data:`DEAD_AFTER`), so the other endpoints get the other half.
    """

    def __init__(self, core: ClientCore, give_up: float | None) -> None:
        self.core = core
        self.give_up = give_up
        self.node = core.node
        self.lost_since: float | None = None
        """Time of the last answer before the current loss; None while the node answers."""
        self.tried: set[Addr] = set()
        if give_up is not None:
            core.dead_after = min(DEAD_AFTER, give_up / 2)

    @property
    def answering(self) -> bool:
        return self.lost_since is None

    def check(self, now: float) -> list[LinkEvent]:
        core = self.core
        events: list[LinkEvent] = []
        if self.lost_since is None:
            if core.config is not None:
                self.node = core.node
                return events
            self.lost_since = core.last_heard
            self.tried = {self.node}
            events.append(
                LinkEvent(
                    "node_lost",
                    {
                        "node": endpoint_text(self.node),
                        "silent": round(now - core.last_heard, 1),
                        "next": endpoint_text(core.node),
                    },
                )
            )
        if core.config is not None:
            events.append(
                LinkEvent(
                    "reconnected",
                    {"node": endpoint_text(core.node), "after": round(now - self.lost_since, 1)},
                )
            )
            self.lost_since = None
            self.node = core.node
            return events
        if core.node != self.node:
            if core.node not in self.tried:
                self.tried.add(core.node)
                events.append(
                    LinkEvent(
                        "failover",
                        {"from": endpoint_text(self.node), "to": endpoint_text(core.node)},
                    )
                )
            self.node = core.node
        silent = now - core.last_heard
        if self.give_up is not None and silent > self.give_up:
            events.append(LinkEvent("gave_up", {"silent": round(silent, 1)}))
        return events


def no_answer(core: ClientCore, what: str = "no node answered") -> AtenetError:
    """The error for a silent node: says which endpoints were tried and where to look, since a
    node never answers a packet that fails its checks (revoked or expired key, wrong network)."""
    tried = ", ".join(f"{h}:{p}" for h, p in core.endpoints)
    return AtenetError(
        f"{what} (tried {tried}): the key may be revoked or expired, the node down, or UDP "
        "blocked; nodes never answer a packet that fails their checks — see drops by reason "
        "with `tok status` on the node (or its http://127.0.0.1:8080/api/status)"
    )
