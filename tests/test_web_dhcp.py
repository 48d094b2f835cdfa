"""The web page's DHCP client (net.js Dhcp4Client) against the real Python server and gateway.

``tests/js/dhcp_peer.mjs`` runs the page's network stack (``Session`` → ``Host`` →
``Dhcp4Client``) on a fake socket and a fake clock in Node.js; this module plays the node: every
frame the page sends goes to :class:`atenet.router.dhcp.DhcpServer` (UDP to port 67) or
:class:`atenet.router.gateway.Gateway` (the rest), the server's ``Bind`` actions go through a
list standing in for the chain (next sequence number, fed back with ``apply_bindings``), and the
replies go back to the page. So the JS client and the Python server are checked against each
other frame by frame: the exchange, renewal at T1 (unicast, no chain event), rebinding at T2,
expiry, the hashed-address fallback, a NAK after two nodes bound one address, and malformed or
foreign replies (dropped and counted, never thrown).
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from atenet import addressing
from atenet.router.dhcp import Bind, DhcpServer, Lease, Send
from atenet.router.gateway import Gateway
from atenet.wire import dhcp as d
from atenet.wire.ethernet import BROADCAST_MAC
from tests.test_web_js import NODE, ROOT, needs_node

pytestmark = [needs_node]

DRIVER = ROOT / "tests" / "js" / "dhcp_peer.mjs"
NET_ID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
CIDR = "10.88.4.0/24"
CIDR6 = "fd88:4:5:6::/64"
GW = addressing.gateway_v4(CIDR).ip
GW_MAC = addressing.gateway_mac(NET_ID)
MTU = 1400
LEASE = 600.0  # T1 300 s, T2 525 s
T0 = 1_800_000_000.0
WELCOME = {
    "node": "n1",
    "name": "lan",
    "cidr": CIDR,
    "cidr6": CIDR6,
    "mtu": MTU,
    "gateway": str(GW),
    "dhcp": 1,
}


class Page:
    """The page's stack in Node.js (tests/js/dhcp_peer.mjs), one JSON command per line."""

    def __init__(self, host_key: bytes, host: str = "kiosk", **open_args: Any) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen(
            [NODE, str(DRIVER)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self.cmd("open", network_id=NET_ID.hex(), host_key=host_key.hex(), host=host, **open_args)
        self.mac = addressing.stable_mac(NET_ID, host_key)

    def cmd(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one command; returns the answer with the frames the page sent meanwhile."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the JS driver died (exit {self.proc.poll()})"
        answer = json.loads(line)
        assert answer["error"] is None, answer["error"]  # nothing thrown out of net.js
        self.events += answer["events"]
        self.last = answer
        return answer

    def feed(self, frame: bytes) -> list[bytes]:
        return [bytes.fromhex(h) for h in self.cmd("frame", hex=frame.hex())["frames"]]

    def advance(self, seconds: float) -> list[bytes]:
        return [bytes.fromhex(h) for h in self.cmd("advance", ms=seconds * 1000)["frames"]]

    def addresses(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "address"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NodeSide:
    """One node's DHCP server and gateway for the network, with a shared list as the chain."""

    def __init__(self, node_id: str, chain: list[Lease], **server_args: Any) -> None:
        server_args.setdefault("lease_time", LEASE)
        self.server = DhcpServer(NET_ID, CIDR, GW, GW_MAC, MTU, node_id=node_id, **server_args)
        self.gateway = Gateway(NET_ID, CIDR, None, MTU)
        self.chain = chain
        self.binds: list[Bind] = []
        self.seen: list[d.ClientFrame] = []

    def handle(self, frame: bytes, now: float, *, commit: bool = True) -> list[bytes]:
        """Frames the node sends back for one frame from the page."""
        parsed = d.parse_dhcp_frame(frame)  # raises on a malformed client frame: a test failure
        if parsed is None:
            return self.gateway.frame(frame, now)
        self.seen.append(parsed)
        out: list[bytes] = []
        for action in self.server.frame(frame, now, port="ws-1"):
            if isinstance(action, Send):
                out.append(action.frame)
            else:
                self.binds.append(action)
                if commit:
                    out += self.commit(action, now)
        return out

    def commit(self, bind: Bind, now: float) -> list[bytes]:
        """Append a Bind to the chain and fold the chain into this node's server."""
        self.chain.append(Lease.from_bind(len(self.chain) + 1, bind))
        return self.sync(now)

    def sync(self, now: float) -> list[bytes]:
        actions = self.server.apply_bindings(list(self.chain), now)
        return [a.frame for a in actions if isinstance(a, Send)]


def pump(page: Page, node: NodeSide, frames: list[bytes], *, drop: bool = False) -> None:
    """Deliver the page's frames to the node and the node's answers back, until quiet."""
    while frames and not drop:
        now = T0 + page.last["now"] / 1000
        replies = [r for f in frames for r in node.handle(f, now)]
        frames = [f for r in replies for f in page.feed(r)]


@pytest.fixture
def page() -> Iterator[Page]:
    p = Page(bytes(range(24)))
    try:
        yield p
    finally:
        p.close()


def join(page: Page, node: NodeSide) -> dict[str, Any]:
    frames = [bytes.fromhex(h) for h in page.cmd("welcome", msg=WELCOME)["frames"]]
    pump(page, node, frames)
    return page.addresses()[-1]


def test_page_gets_its_hashed_address_by_dhcp_and_pings_the_gateway(page: Page) -> None:
    node = NodeSide("n1", [])
    bound = join(page, node)
    hashed = str(addressing.ipv4_for(NET_ID, page.mac, CIDR).ip)
    assert bound["source"] == "dhcp" and bound["ip4"] == hashed, bound
    assert (bound["prefix"], bound["gateway"]) == (24, str(GW))
    lease = bound["lease"]
    assert (lease["secs"], lease["t1"], lease["t2"]) == (600, 300, 525), lease
    assert (lease["router"], lease["dns"], lease["mtu"]) == (str(GW), ["8.8.8.8"], MTU)
    assert page.last["state"] == "bound" and page.last["ip4"] == hashed

    # What the page sent, as the server read it: DISCOVER then REQUEST, one transaction, our
    # MAC as chaddr, the page's name as option 12, and the options it needs asked for.
    kinds = [f.message.message_type for f in node.seen]
    assert kinds == [d.DHCPDISCOVER, d.DHCPREQUEST], kinds
    discover, request = (f.message for f in node.seen)
    assert discover.xid == request.xid and discover.chaddr == request.chaddr == page.mac
    assert discover.options[d.OPT_HOST_NAME] == b"kiosk" and not discover.broadcast
    assert {1, 3, 6, 26, 51, 121} <= set(discover.options[55])
    assert request.ip_option(d.OPT_SERVER_ID) == GW
    assert request.ip_option(d.OPT_REQUESTED_IP) == IPv4Address(hashed)
    assert node.seen[0].dst_mac == BROADCAST_MAC and str(node.seen[0].src_ip) == "0.0.0.0"

    # One chain event for the binding, with the page's name; the server's table has it.
    assert [(str(r.ip), r.mac, r.host) for r in node.chain] == [(hashed, page.mac, "kiosk")]
    assert [str(x.ip) for x in node.server.leases()] == [hashed]

    # The page pings the gateway: ARP for it, then an echo, both answered by the real Gateway.
    node.gateway.handled.clear()
    frames = [bytes.fromhex(h) for h in page.cmd("ping", address=str(GW), count=2)["frames"]]
    for _ in range(4):  # ARP, echo 1, echo 2 (the page waits 10 fake ms between echoes)
        pump(page, node, frames)
        frames = page.advance(0.02)
    result = page.cmd("ping_result")
    assert result["ping_error"] is None and len(result["results"]) == 2, result
    assert all(r is not None for r in result["results"]), result
    assert node.gateway.handled["arp"] == 1 and node.gateway.handled["echo4"] == 2


def test_renew_at_t1_is_unicast_and_writes_no_chain_event(page: Page) -> None:
    node = NodeSide("n1", [])
    first = join(page, node)
    assert len(node.chain) == 1
    assert page.advance(299) == []  # nothing before T1
    frames = page.advance(2)
    assert len(frames) == 1
    renew = d.parse_dhcp_frame(frames[0])
    assert renew is not None and renew.message.message_type == d.DHCPREQUEST
    # RENEWING: unicast to the server that gave the lease, from the leased address.
    assert (renew.dst_mac, renew.dst_ip) == (GW_MAC, GW)
    assert str(renew.src_ip) == first["ip4"] == str(renew.message.ciaddr)
    assert d.OPT_SERVER_ID not in renew.message.options
    assert d.OPT_REQUESTED_IP not in renew.message.options
    pump(page, node, frames)
    assert len(node.chain) == 1  # answered from the table: no event per renewal
    renewed = page.addresses()[-1]
    assert renewed["source"] == "dhcp" and renewed["ip4"] == first["ip4"]
    assert renewed["lease"]["renewed"] is True
    assert page.last["state"] == "bound" and page.last["stats"]["renewals"] == 1


def test_rebind_at_t2_by_broadcast_then_expiry_then_fallback_then_dhcp_again(
    page: Page,
) -> None:
    node = NodeSide("n1", [])
    first = join(page, node)
    ip = first["ip4"]
    # The server goes quiet: the renewal at T1 (300 s) gets no answer.
    assert len(page.advance(301)) == 1
    assert page.last["state"] == "renewing"
    # RENEWING retransmits at half the time left to T2, at least 60 s apart (412.5 s, 472.5 s);
    # at T2 (525 s) the page rebinds: broadcast, still from its leased address.
    frames = page.advance(225)
    assert len(frames) == 3, frames
    assert [d.parse_dhcp_frame(f).dst_mac for f in frames[:2]] == [GW_MAC, GW_MAC]
    rebind = d.parse_dhcp_frame(frames[2])
    assert rebind is not None and rebind.dst_mac == BROADCAST_MAC
    assert str(rebind.dst_ip) == "255.255.255.255" and str(rebind.message.ciaddr) == ip
    assert page.last["state"] == "rebinding"
    # No answer until the lease runs out (600 s): the page drops the address and starts over.
    page.advance(73)
    assert page.last["ip4"] == ip
    frames = page.advance(1.5)
    assert page.last["ip4"] is None and page.addresses()[-1]["source"] == "none"
    assert page.last["stats"]["expiries"] == 1
    assert d.parse_dhcp_frame(frames[0]).message.message_type == d.DHCPDISCOVER
    # Still nobody answers: ~7 s and 3-4 DISCOVERs later the hashed address is the fallback.
    sent = len(frames) + len(page.advance(5.5))  # 606.0 s
    assert page.last["ip4"] is None and 3 <= sent <= 4, sent
    page.advance(1.5)
    fallback = page.addresses()[-1]
    hashed = str(addressing.ipv4_for(NET_ID, page.mac, CIDR).ip)
    assert fallback["source"] == "fallback" and fallback["ip4"] == hashed
    assert fallback["gateway"] == str(GW)
    # The page keeps asking; when a server answers it moves to the leased address.
    frames = page.advance(60)
    assert frames and all(
        d.parse_dhcp_frame(f).message.message_type == d.DHCPDISCOVER for f in frames
    )
    pump(page, node, frames[-1:])
    assert page.addresses()[-1]["source"] == "dhcp" and page.last["state"] == "bound"


def test_two_nodes_bind_one_address_the_loser_gets_a_nak_and_another_address(
    page: Page,
) -> None:
    """The chain orders two bindings of one address: the page's node loses, NAKs the page, and
    the page starts over and binds the next free address (router/dhcp.py's collision rule)."""
    chain: list[Lease] = []
    n1, n2 = NodeSide("n1", chain), NodeSide("n2", chain)
    hashed = addressing.ipv4_for(NET_ID, page.mac, CIDR).ip
    discover = [bytes.fromhex(h) for h in page.cmd("welcome", msg=WELCOME)["frames"]]
    offer = [r for f in discover for r in n1.handle(f, T0)]
    request = [f for r in offer for f in page.feed(r)]
    assert n1.handle(request[0], T0, commit=False) == []  # commit first, ACK later
    assert len(n1.binds) == 1
    # Meanwhile a host on n2 takes the same address (INIT-REBOOT REQUEST for it).
    other = bytes.fromhex("02bb00000001")
    msg = d.DhcpMessage(
        op=d.BOOTREQUEST,
        xid=99,
        chaddr=other,
        options={d.OPT_MESSAGE_TYPE: bytes((d.DHCPREQUEST,)), d.OPT_REQUESTED_IP: hashed.packed},
    )
    theirs = d.dhcp_frame(
        msg.emit(),
        src_mac=other,
        dst_mac=BROADCAST_MAC,
        src_ip=IPv4Address(0),
        dst_ip=IPv4Address("255.255.255.255"),
        src_port=68,
        dst_port=67,
    )
    n2.handle(theirs, T0)  # n2's binding reaches the chain first
    assert [r.mac for r in chain] == [other]
    # n1's binding lands second and loses: n1 NAKs the page.
    nak = n1.commit(n1.binds[0], T0)
    assert len(nak) == 1
    frames = page.feed(nak[0])
    assert page.last["stats"]["naks"] == 1 and page.last["ip4"] is None
    assert d.parse_dhcp_frame(frames[0]).message.message_type == d.DHCPDISCOVER
    pump(page, n1, frames)
    bound = page.addresses()[-1]
    assert bound["source"] == "dhcp" and bound["ip4"] != str(hashed), bound
    won = {str(x.ip): x.mac for x in n1.server.leases()}
    assert won == {str(hashed): other, bound["ip4"]: page.mac}, won


def test_foreign_and_malformed_replies_are_dropped_counted_and_never_thrown(
    page: Page,
) -> None:
    node = NodeSide("n1", [])
    sent = [bytes.fromhex(h) for h in page.cmd("welcome", msg=WELCOME)["frames"]]
    discover = [f for f in sent if d.parse_dhcp_frame(f) is not None]  # after the NA
    offer = node.handle(discover[0], T0)[0]
    good = d.parse_dhcp_frame(discover[0])
    assert good is not None
    xid = good.message.xid
    before = dict(page.last["stats"])

    def rewrap(message: d.DhcpMessage | bytes, dst_mac: bytes = page.mac) -> bytes:
        payload = message if isinstance(message, bytes) else message.emit()
        return d.dhcp_frame(
            payload, src_mac=GW_MAC, dst_mac=dst_mac, src_ip=GW, dst_ip=IPv4Address(0)
        )

    offered = d.DhcpMessage.parse(_dhcp_payload(offer))
    foreign = [
        # another transaction, another client's MAC, a request-direction message
        rewrap(d.DhcpMessage(**{**_fields(offered), "xid": xid ^ 1})),
        rewrap(d.DhcpMessage(**{**_fields(offered), "chaddr": bytes.fromhex("02bb00000002")})),
        # an ACK nobody asked for yet, a NAK from the wrong state
        rewrap(d.DhcpMessage(**{**_fields(offered), "options": _type(offered, d.DHCPACK)})),
        rewrap(d.DhcpMessage(**{**_fields(offered), "options": _type(offered, d.DHCPNAK)})),
    ]
    outside = {**_fields(offered), "yiaddr": IPv4Address("10.99.0.5")}
    malformed = [
        rewrap(d.DhcpMessage(**outside)),  # an address outside the network's CIDR
        rewrap(d.DhcpMessage(**{**_fields(offered), "op": d.BOOTREQUEST})),
        rewrap(_dhcp_payload(offer)[:239]),  # no magic cookie, truncated
        rewrap(_dhcp_payload(offer)[:-60].rstrip(b"\x00")[:-1]),  # no end option
        offer[:-1] + bytes([offer[-1] ^ 0xFF]),  # UDP checksum wrong
        offer[:50],  # cut inside the UDP header
    ]
    rng = random.Random(10)
    for _ in range(150):  # random damage that keeps the checksums right
        raw = bytearray(_dhcp_payload(offer))
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(236, len(raw))] = rng.randrange(256)
        cut = rng.choice([len(raw), rng.randrange(200, len(raw) + 1)])
        malformed.append(rewrap(bytes(raw[:cut])))
    for frame in foreign + malformed:
        page.feed(frame)
    stats = page.last["stats"]
    fed = len(foreign) + len(malformed)
    assert stats["received"] - before["received"] == fed
    # Every damaged frame was counted; some random damage leaves a usable OFFER (a byte in
    # the padding), which the page may take: then it is requesting, from the offered address.
    counted = stats["malformed"] + stats["ignored"] + stats["offers"]
    assert counted - sum(before[k] for k in ("malformed", "ignored", "offers")) == fed
    assert stats["ignored"] - before["ignored"] >= len(foreign)
    assert page.last["ip4"] is None
    # The real offer still works afterwards.
    page.cmd("advance", ms=0)
    pump(page, node, page.advance(70))
    assert page.addresses()[-1]["source"] == "dhcp"


def _dhcp_payload(frame: bytes) -> bytes:
    return frame[14 + 20 + 8 :]


def _fields(m: d.DhcpMessage) -> dict[str, Any]:
    return {
        "op": m.op,
        "xid": m.xid,
        "chaddr": m.chaddr,
        "flags": m.flags,
        "yiaddr": m.yiaddr,
        "options": dict(m.options),
    }


def _type(m: d.DhcpMessage, kind: int) -> dict[int, bytes]:
    return {**m.options, d.OPT_MESSAGE_TYPE: bytes((kind,))}


def test_without_dhcp_in_the_welcome_the_hashed_address_is_used_at_once() -> None:
    page = Page(bytes(24), host="")
    try:
        welcome = {k: v for k, v in WELCOME.items() if k != "dhcp"}
        frames = page.cmd("welcome", msg=welcome)["frames"]
        hashed = str(addressing.ipv4_for(NET_ID, page.mac, CIDR).ip)
        assert page.addresses() == [
            {**page.addresses()[0], "source": "static", "ip4": hashed, "gateway": str(GW)}
        ]
        assert page.last["state"] is None and len(frames) == 2  # gratuitous ARP + NA only
    finally:
        page.close()
    # ?static on the page: DHCP off even when the node serves it.
    page = Page(bytes(24), host="", dhcp="off")
    try:
        page.cmd("welcome", msg=WELCOME)
        assert page.addresses()[-1]["source"] == "static" and page.last["state"] is None
    finally:
        page.close()
