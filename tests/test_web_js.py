"""The web page's JavaScript, tested with Node's test runner and cross-checked against Python.

``node --test`` runs ``tests/js/*.test.mjs``. This module computes reference values with the
Python package (hashed addresses, the access token and its hello MAC, frames from
``atenet.wire``) and hands them to the JS tests in a JSON file (``ATENET_WEB_VECTORS``); the JS
host's answers to Python-built requests come back in ``replies.json`` (``ATENET_WEB_OUT``) and
are parsed here with ``atenet.wire``, checksums verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atenet import addressing, wire
from atenet.mio import bus
from atenet.overlay.seal import INFO_AUTH, PacketKey
from atenet.overlay.token import AccessToken
from atenet.wire.icmp import ICMP_ECHO_REPLY
from atenet.wire.icmpv6 import ICMPV6_ECHO_REPLY, ICMPV6_NEIGHBOR_ADVERT
from tests.test_mio_bus import SAMPLES as MIO_SAMPLES

ROOT = Path(__file__).resolve().parent.parent
JS_TESTS = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))
WEB = ROOT / "src" / "atenet" / "web"
NODE = shutil.which("node")


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"v(\d+)", out.strip())
    return int(match.group(1)) if match else 0


needs_node = pytest.mark.skipif(
    _node_major() < 18,
    reason="node (Node.js >= 18, for `node --test`) is not installed: the web page's JS tests "
    "need it (apt-get install nodejs)",
)

NETWORK_A = bytes.fromhex("00112233445566778899aabbccddeeff")
MAC_A = bytes.fromhex("02a1a2a3a4a5")
MAC_B = bytes.fromhex("02b1b2b3b4b5")
IP4_A, IP4_B = IPv4Address("10.20.30.40"), IPv4Address("10.20.30.41")
IP6_A, IP6_B = IPv6Address("fd00:aa:bb:cc::a"), IPv6Address("fd00:aa:bb:cc:1234:5678:9abc:def0")


def _addressing_vectors() -> list[dict[str, str]]:
    cases = [
        (NETWORK_A, b"\x00" * 16, "10.0.0.0/24", "fd00::/64"),
        (bytes(range(16)), bytes(range(16, 32)), "10.200.7.0/24", "fd12:3456:789a:bcde::/64"),
        (b"\xff" * 16, b"\x80" * 16, "172.16.0.0/12", "fdff:ffff:ffff:ffff::/64"),
        (b"\x01" * 16, b"browser-key-0001", "10.0.0.0/8", "fd00:1:0:0::/64"),
        (b"\x02" * 16, b"\x02" * 16, "192.168.1.0/30", "fd00:0:0:1::/64"),
        (b"\x03" * 16, b"\x03" * 16, "100.64.0.0/10", "fd01::/64"),
    ]
    for i in range(20):
        seed = hashlib.sha256(b"web-vector %d" % i).digest()
        cases.append((seed[:16], seed[16:], f"10.{i}.{i * 7 % 256}.0/24", f"fd{i:02x}:{i}::/64"))
    out = []
    for network_id, host_key, cidr, cidr6 in cases:
        mac = addressing.stable_mac(network_id, host_key)
        out.append(
            {
                "network_id": network_id.hex(),
                "host_key": host_key.hex(),
                "cidr": cidr,
                "cidr6": cidr6,
                "mac": mac.hex(),
                "ip4": str(addressing.ipv4_for(network_id, mac, cidr).ip),
                "ip6": str(addressing.ipv6_for(network_id, mac, cidr6).ip),
            }
        )
    return out


def _tab_vectors() -> list[dict[str, str]]:
    """Per-tab MACs: the host key is the profile's 16-byte key followed by the tab's 8-byte id."""
    out = []
    for i in range(4):
        seed = hashlib.sha256(b"tab vector %d" % i).digest()
        network_id, profile, tab = seed[:16], seed[16:32], bytes([i]) * 8
        mac = addressing.stable_mac(network_id, profile + tab)
        cidr = "10.66.0.0/16"
        out.append(
            {
                "network_id": network_id.hex(),
                "profile": profile.hex(),
                "tab": tab.hex(),
                "mac": mac.hex(),
                "cidr": cidr,
                "ip4": str(addressing.ipv4_for(network_id, mac, cidr).ip),
            }
        )
    return out


def _token_vector() -> dict[str, object]:
    secret = hashlib.sha256(b"web token secret").digest()
    token = AccessToken(NETWORK_A, 0x01020304, secret, ("127.0.0.1:7000", "[::1]:7000"))
    auth_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO_AUTH).derive(secret)
    assert auth_key == PacketKey(secret, 1).auth_key  # the key the node checks hellos with
    time_ms, nonce = 1_712_345_678_901, bytes(range(100, 116))
    message = f"atenet/v1 ws hello|{NETWORK_A.hex()}|{token.key_id}|{time_ms}|{nonce.hex()}"
    return {
        "text": token.encode(),
        "network_id": NETWORK_A.hex(),
        "key_id": token.key_id,
        "secret": secret.hex(),
        "endpoints": list(token.endpoints),
        "auth_key": auth_key.hex(),
        "hello_time": time_ms,
        "hello_nonce": nonce.hex(),
        "hello_mac": hmac.new(auth_key, message.encode(), "sha256").hexdigest(),
    }


PAYLOAD = bytes(range(56))
IDENT, SEQ = 0xBEEF, 7
P = (IDENT, SEQ, PAYLOAD)


def _frame_vectors() -> dict[str, object]:
    expected = {
        "arp_request": wire.arp_request(MAC_A, IP4_A, IP4_B),
        "arp_reply": wire.arp_reply(MAC_B, IP4_B, MAC_A, IP4_A),
        "gratuitous_arp": wire.gratuitous_arp(MAC_A, IP4_A),
        "icmp_echo_request": wire.icmp_echo_request(MAC_A, MAC_B, IP4_A, IP4_B, *P),
        "icmp_echo_reply": wire.icmp_echo_reply(MAC_B, MAC_A, IP4_B, IP4_A, IDENT, SEQ, PAYLOAD),
        "icmpv6_echo_request": wire.icmpv6_echo_request(
            MAC_A, MAC_B, IP6_A, IP6_B, IDENT, SEQ, PAYLOAD
        ),
        "icmpv6_echo_reply": wire.icmpv6_echo_reply(MAC_B, MAC_A, IP6_B, IP6_A, *P),
        "neighbor_solicitation": wire.neighbor_solicitation(MAC_A, IP6_A, IP6_B),
        "neighbor_advertisement": wire.neighbor_advertisement(MAC_B, IP6_B, MAC_A, IP6_A),
        "neighbor_advertisement_unsolicited": wire.neighbor_advertisement(MAC_B, IP6_B),
    }
    return {
        "params": {
            "mac_a": MAC_A.hex(),
            "mac_b": MAC_B.hex(),
            "ip4_a": IP4_A.packed.hex(),
            "ip4_b": IP4_B.packed.hex(),
            "ip6_a": IP6_A.packed.hex(),
            "ip6_b": IP6_B.packed.hex(),
            "ident": IDENT,
            "seq": SEQ,
            "payload": PAYLOAD.hex(),
        },
        "expected": {name: frame.hex() for name, frame in expected.items()},
    }


def _requests() -> dict[str, bytes]:
    """Frames from host A to the JS host (B); names starting ``ignore_`` must get no answer."""
    stranger = bytes.fromhex("02000000aa01")
    odd = bytes(range(33))  # odd payload length exercises the checksum's last byte
    requests = {
        "arp": wire.arp_request(MAC_A, IP4_A, IP4_B),
        "ping4": wire.icmp_echo_request(MAC_A, MAC_B, IP4_A, IP4_B, 0x1234, 1, PAYLOAD),
        "ping4_odd": wire.icmp_echo_request(MAC_A, MAC_B, IP4_A, IP4_B, 0x1234, 2, odd),
        # A Linux-like ping: IP options, DF, a non-zero IP id, and Ethernet padding.
        "ping4_options": wire.EthernetRepr(
            MAC_B,
            MAC_A,
            wire.ETHERTYPE_IPV4,
            wire.Ipv4Repr(
                IP4_A,
                IP4_B,
                wire.PROTO_ICMP,
                wire.IcmpRepr.echo_request(0x4321, 3, b"xy").emit(),
                ident=777,
                dont_fragment=True,
                options=b"\x01\x01\x01\x00",
            ).emit()
            + b"\x00" * 12,
        ).emit(),
        "ns": wire.neighbor_solicitation(MAC_A, IP6_A, IP6_B),
        "ping6": wire.icmpv6_echo_request(MAC_A, MAC_B, IP6_A, IP6_B, 0x1234, 4, odd),
        "ignore_arp_other": wire.arp_request(MAC_A, IP4_A, IPv4Address("10.20.30.99")),
        "ignore_ping_other_mac": wire.icmp_echo_request(MAC_A, stranger, IP4_A, IP4_B, 1, 1),
        "ignore_ping_other_ip": wire.icmp_echo_request(
            MAC_A, MAC_B, IP4_A, IPv4Address("10.20.30.99"), 1, 1
        ),
        "ignore_ns_other": wire.neighbor_solicitation(MAC_A, IP6_A, IPv6Address("fd00::99")),
        "ignore_echo_reply": wire.icmp_echo_reply(MAC_A, MAC_B, IP4_A, IP4_B, 1, 1),
    }
    bad = bytearray(wire.icmp_echo_request(MAC_A, MAC_B, IP4_A, IP4_B, 9, 9, PAYLOAD))
    bad[-1] ^= 0xFF  # ICMP checksum now wrong
    requests["ignore_bad_checksum"] = bytes(bad)
    bad6 = bytearray(wire.icmpv6_echo_request(MAC_A, MAC_B, IP6_A, IP6_B, 9, 9, PAYLOAD))
    bad6[-1] ^= 0xFF
    requests["ignore_bad_checksum6"] = bytes(bad6)
    return requests


def _check_replies(replies: dict[str, list[str]], requests: dict[str, bytes]) -> None:
    for name in requests:
        frames = [bytes.fromhex(h) for h in replies[name]]
        assert len(frames) == (0 if name.startswith("ignore_") else 1), name
    eth = wire.EthernetRepr.parse(bytes.fromhex(replies["arp"][0]))
    assert (eth.dst, eth.src, eth.ethertype) == (MAC_A, MAC_B, wire.ETHERTYPE_ARP)
    arp = wire.ArpRepr.parse(eth.payload)
    assert arp == wire.ArpRepr(wire.ARP_REPLY, MAC_B, IP4_B, MAC_A, IP4_A)

    for name, seq, data in (("ping4", 1, PAYLOAD), ("ping4_odd", 2, bytes(range(33)))):
        eth = wire.EthernetRepr.parse(bytes.fromhex(replies[name][0]))
        assert (eth.dst, eth.src) == (MAC_A, MAC_B)
        ip = wire.Ipv4Repr.parse(eth.payload)  # verifies the header checksum
        assert (ip.src, ip.dst, ip.protocol) == (IP4_B, IP4_A, wire.PROTO_ICMP)
        icmp = wire.IcmpRepr.parse(ip.payload)  # verifies the ICMP checksum
        got = (icmp.type, icmp.ident, icmp.seq, icmp.payload)
        assert got == (ICMP_ECHO_REPLY, 0x1234, seq, data)
    icmp = wire.IcmpRepr.parse(
        wire.Ipv4Repr.parse(
            wire.EthernetRepr.parse(bytes.fromhex(replies["ping4_options"][0])).payload
        ).payload
    )
    assert (icmp.type, icmp.ident, icmp.seq, icmp.payload) == (ICMP_ECHO_REPLY, 0x4321, 3, b"xy")

    eth = wire.EthernetRepr.parse(bytes.fromhex(replies["ns"][0]))
    assert (eth.dst, eth.src, eth.ethertype) == (MAC_A, MAC_B, wire.ETHERTYPE_IPV6)
    ip6 = wire.Ipv6Repr.parse(eth.payload)
    assert (ip6.src, ip6.dst, ip6.hop_limit) == (IP6_B, IP6_A, 255)
    message = wire.Icmpv6Repr.parse(ip6.payload, ip6.src, ip6.dst)
    assert message.type == ICMPV6_NEIGHBOR_ADVERT
    na = wire.NeighborAdvert.from_icmp(message)
    assert (na.target, na.target_mac, na.solicited, na.override, na.router) == (
        IP6_B,
        MAC_B,
        True,
        True,
        False,
    )

    eth = wire.EthernetRepr.parse(bytes.fromhex(replies["ping6"][0]))
    ip6 = wire.Ipv6Repr.parse(eth.payload)
    assert (ip6.src, ip6.dst) == (IP6_B, IP6_A)
    message = wire.Icmpv6Repr.parse(ip6.payload, ip6.src, ip6.dst)  # pseudo-header checksum
    assert (message.type, message.ident, message.seq, message.payload) == (
        ICMPV6_ECHO_REPLY,
        0x1234,
        4,
        bytes(range(33)),
    )


@needs_node
def test_js_unit_tests_and_python_cross_checks(tmp_path: Path) -> None:
    assert JS_TESTS, "no tests/js/*.test.mjs found"
    requests = _requests()
    vectors = {
        "addressing": _addressing_vectors(),
        "tabs": _tab_vectors(),
        "token": _token_vector(),
        "frames": _frame_vectors(),
        "requests": {name: frame.hex() for name, frame in requests.items()},
        "mio": [message.encode().hex() for message in MIO_SAMPLES],
    }
    vectors_path = tmp_path / "vectors.json"
    vectors_path.write_text(json.dumps(vectors))
    env = dict(os.environ, ATENET_WEB_VECTORS=str(vectors_path), ATENET_WEB_OUT=str(tmp_path))
    result = subprocess.run(
        [NODE, "--test", *map(str, JS_TESTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output}"
    # Every test ran: the cross-checks are skipped only without the vectors file.
    assert re.search(r"^# skipped 0$", output, re.MULTILINE), output
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output
    replies = json.loads((tmp_path / "replies.json").read_text())
    _check_replies(replies, requests)
    _check_mio(json.loads((tmp_path / "mio.json").read_text()))


def _check_mio(built: list[str]) -> None:
    """The bus messages web/mio.js built decode in Python to what the page meant."""
    got = [bus.decode(bytes.fromhex(h)) for h in built]
    v4, v6 = IPv4Address("10.1.0.7"), IPv6Address("fd00::7")
    assert got[:8] == [
        bus.Connect(1, bus.Endpoint(v4, 80)),
        bus.Connect(2, bus.Endpoint(v6, 443), 5000, 3000),
        bus.Data(1, b"GET / HTTP/1.0\r\n\r\n"),
        bus.Credit(1, 65536),
        bus.Shutdown(1),
        bus.Close(1, abort=True),
        bus.Ping(5, IPv4Address("10.1.0.1"), 56, 1000),
        bus.Resolve(6, "printer.lan"),
    ]
    assert got[8] == bus.Error(9, 111, "é" * 256)  # cut to 512 bytes on a character boundary


def test_page_needs_nothing_from_the_internet() -> None:
    """The page's files exist, link each other relatively, and load nothing from elsewhere."""
    files = {p.name for p in WEB.iterdir()}
    assert {"index.html", "app.js", "chart.js", "net.js", "sha256.js", "style.css"} <= files
    for path in WEB.iterdir():
        text = re.sub(r'"data:[^"]*"', '""', path.read_text())  # inline data is not fetched
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text):
            # Links in comments/docs text are fine only if they are not loaded by the page.
            assert not re.search(rf"(src|href|import)[^\n]*{re.escape(url)}", text), (path, url)
        for ref in re.findall(r"""(?:src|href)="([^"#]+)\"""", text):
            assert not re.match(r"\w+:|//", ref), (path, ref)
            assert (WEB / ref.lstrip("./")).is_file(), (path, ref)
        for ref in re.findall(r"""^import .* from "([^"]+)";""", text, re.MULTILINE):
            assert ref.startswith("./") and (WEB / ref[2:]).is_file(), (path, ref)


# --- the page in a real browser, against a mock node speaking the settled protocol -------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    import playwright.async_api as _playwright
except ImportError:  # pragma: no cover - depends on the test environment
    _playwright = None

needs_browser = pytest.mark.skipif(
    _playwright is None or CHROMIUM is None,
    reason="needs the playwright Python package and a chromium binary (apt-get install chromium)",
)

PEER_MAC = bytes.fromhex("02cafe000001")
MOCK_CIDR, MOCK_CIDR6 = "10.77.1.0/24", "fd77:1:2:3::/64"
PEER_IP4, PEER_IP6 = IPv4Address("10.77.1.200"), IPv6Address("fd77:1:2:3::200")
SECRET = hashlib.sha256(b"mock node secret").digest()
KEY_ID = 7


class MockNode:
    """Serves the page and ``/ws``; checks the hello; is a peer host that answers and pings."""

    def __init__(self) -> None:
        self.auth_key = PacketKey(SECRET, KEY_ID).auth_key
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.ws = None
        self.hellos: list[dict] = []
        self.welcome_extra: dict = {}  # e.g. {"gateway": …, "dhcp": 1}

    def app(self):  # -> aiohttp.web.Application
        from aiohttp import web

        async def index(_request):
            return web.FileResponse(WEB / "index.html")

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/ws", self.websocket)
        app.router.add_static("/", WEB)
        return app

    def hello_ok(self, hello: dict) -> bool:
        message = "atenet/v1 ws hello|{network}|{key_id}|{time}|{nonce}".format(**hello)
        mac = hmac.new(self.auth_key, message.encode(), "sha256").hexdigest()
        return (
            abs(hello["time"] / 1000 - time.time()) < 120  # as the node: replay protection
            and hmac.compare_digest(mac, hello.get("mac", ""))
            and hello["network"] == NETWORK_A.hex()
            and hello["key_id"] == KEY_ID
            and len(bytes.fromhex(hello["nonce"])) == 16
        )

    async def websocket(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        hello = json.loads((await ws.receive()).data)
        self.hellos.append(hello)
        if hello.get("op") != "hello" or not self.hello_ok(hello):
            await ws.close(code=4403, message=b"access refused")
            return ws
        await ws.send_json(
            {
                "op": "welcome",
                "node": "mock-node-1",
                "name": "mock lan",
                "cidr": MOCK_CIDR,
                "cidr6": MOCK_CIDR6,
                "mtu": 1400,
                **self.welcome_extra,
            }
        )
        self.ws = ws
        ticker = asyncio.create_task(self.status_loop(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    self.answer(msg.data)
                    self.frames.put_nowait(msg.data)
        finally:
            ticker.cancel()
        return ws

    async def status_loop(self, ws) -> None:
        drops = 0
        while not ws.closed:
            drops += 1
            port = {"kind": "ws", "frames_in": 10, "frames_out": 12, "bytes_in": 900}
            await ws.send_json(
                {
                    "op": "status",
                    "ports": [
                        {"name": "ws-1", **port, "bytes_out": 1100, "drops": drops},
                        {"name": "udp-tok-2", **port, "bytes_out": 5, "drops": 0},
                    ],
                    "members": [
                        {"node_id": "mock-node-1", "endpoints": ["127.0.0.1:7000"]},
                        {"node_id": "mock-node-2", "endpoints": ["127.0.0.2:7000"]},
                    ],
                    "port": "ws-1",
                }
            )
            await asyncio.sleep(0.3)

    def answer(self, frame: bytes) -> None:
        """The peer host: ARP, ND and echo for PEER_IP4 / PEER_IP6."""
        eth = wire.EthernetRepr.parse(frame)
        reply = None
        if eth.ethertype == wire.ETHERTYPE_ARP:
            arp = wire.ArpRepr.parse(eth.payload)
            if arp.operation == wire.ARP_REQUEST and arp.target_ip == PEER_IP4:
                reply = wire.arp_reply(PEER_MAC, PEER_IP4, arp.sender_mac, arp.sender_ip)
        elif eth.ethertype == wire.ETHERTYPE_IPV4:
            ip = wire.Ipv4Repr.parse(eth.payload)
            if ip.dst == PEER_IP4 and ip.protocol == wire.PROTO_ICMP:
                icmp = wire.IcmpRepr.parse(ip.payload)
                if icmp.type == 8:
                    reply = wire.icmp_echo_reply(
                        PEER_MAC, eth.src, PEER_IP4, ip.src, icmp.ident, icmp.seq, icmp.payload
                    )
        elif eth.ethertype == wire.ETHERTYPE_IPV6:
            ip6 = wire.Ipv6Repr.parse(eth.payload)
            if ip6.next_header == wire.NEXT_HEADER_ICMPV6:
                message = wire.Icmpv6Repr.parse(ip6.payload, ip6.src, ip6.dst)
                if message.type == 135:
                    ns = wire.NeighborSolicit.from_icmp(message)
                    if ns.target == PEER_IP6:
                        reply = wire.neighbor_advertisement(
                            PEER_MAC, PEER_IP6, ns.source_mac or eth.src, ip6.src
                        )
                elif message.type == 128 and ip6.dst == PEER_IP6:
                    reply = wire.icmpv6_echo_reply(
                        PEER_MAC,
                        eth.src,
                        PEER_IP6,
                        ip6.src,
                        message.ident,
                        message.seq,
                        message.payload,
                    )
        if reply is not None and self.ws is not None:
            asyncio.get_running_loop().create_task(self.ws.send_bytes(reply))

    async def expect(self, predicate, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if predicate(frame):
                    return frame


def _is_arp_reply_from(ip: IPv4Address):
    def check(frame: bytes) -> bool:
        eth = wire.EthernetRepr.parse(frame)
        if eth.ethertype != wire.ETHERTYPE_ARP:
            return False
        arp = wire.ArpRepr.parse(eth.payload)
        return (
            arp.operation == wire.ARP_REPLY and arp.sender_ip == ip and arp.target_mac == PEER_MAC
        )

    return check


def _is_echo_reply(seq: int):
    def check(frame: bytes) -> bool:
        eth = wire.EthernetRepr.parse(frame)
        if eth.ethertype == wire.ETHERTYPE_IPV4:
            ip = wire.Ipv4Repr.parse(eth.payload)
            icmp = wire.IcmpRepr.parse(ip.payload) if ip.protocol == wire.PROTO_ICMP else None
            return icmp is not None and icmp.type == ICMP_ECHO_REPLY and icmp.seq == seq
        if eth.ethertype == wire.ETHERTYPE_IPV6:
            ip6 = wire.Ipv6Repr.parse(eth.payload)
            message = wire.Icmpv6Repr.parse(ip6.payload, ip6.src, ip6.dst)
            return message.type == ICMPV6_ECHO_REPLY and message.seq == seq
        return False

    return check


@needs_browser
async def test_page_joins_pings_and_answers_in_chromium(tmp_path: Path) -> None:
    from aiohttp import web

    mock = MockNode()
    runner = web.AppRunner(mock.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    good = AccessToken(NETWORK_A, KEY_ID, SECRET, (f"127.0.0.1:{port}",)).encode()
    wrong = AccessToken(NETWORK_A, KEY_ID, b"\x01" * 32, ()).encode()
    try:
        async with _playwright.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))

            await page.goto(base + "#" + good)
            info = await page.evaluate("window.atenet.ready")
            assert await page.evaluate("document.body.dataset.state") == "connected"
            host_key = await page.evaluate(
                "localStorage['atenet-host-key'] + sessionStorage['atenet-tab-id']"
            )  # the profile's key + this tab's id
            mac = addressing.stable_mac(NETWORK_A, bytes.fromhex(host_key))
            assert info["mac"] == wire.format_mac(mac)
            assert info["ip4"] == str(addressing.ipv4_for(NETWORK_A, mac, MOCK_CIDR).ip)
            assert info["ip6"] == str(addressing.ipv6_for(NETWORK_A, mac, MOCK_CIDR6).ip)
            assert not any("#" in url or good in url for url in requested)  # token stays local
            assert re.fullmatch(r"browser-[0-9a-f]{6}", mock.hellos[0]["host"]), mock.hellos[0]

            # The browser pings the peer (ARP, then echo), over IPv4 and IPv6.
            rtts = await page.evaluate(f"window.atenet.ping('{PEER_IP4}', 3)")
            assert len(rtts) == 3 and all(isinstance(r, (int, float)) for r in rtts), rtts
            rtts6 = await page.evaluate(f"window.atenet.ping('{PEER_IP6}', 2)")
            assert all(isinstance(r, (int, float)) for r in rtts6), rtts6

            # The peer pings the browser: ARP request, then echo (v4), NS then echo (v6).
            browser_ip4 = IPv4Address(info["ip4"])
            browser_ip6 = IPv6Address(info["ip6"])
            await mock.ws.send_bytes(wire.arp_request(PEER_MAC, PEER_IP4, browser_ip4))
            await mock.expect(_is_arp_reply_from(browser_ip4))
            await mock.ws.send_bytes(
                wire.icmp_echo_request(PEER_MAC, mac, PEER_IP4, browser_ip4, 99, 41, b"hi")
            )
            await mock.expect(_is_echo_reply(41))
            await mock.ws.send_bytes(wire.neighbor_solicitation(PEER_MAC, PEER_IP6, browser_ip6))
            await mock.ws.send_bytes(
                wire.icmpv6_echo_request(PEER_MAC, mac, PEER_IP6, browser_ip6, 99, 42, b"hi6")
            )
            await mock.expect(_is_echo_reply(42))

            await page.wait_for_function(
                "document.querySelectorAll('#ports tbody tr.mine').length === 1"
            )
            assert "mock-node-2" in await page.inner_text("#members")
            assert "received" in await page.inner_text("#ping-out")
            await page.wait_for_timeout(1500)  # a couple of chart samples
            await page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            # The tab keeps its addresses on reload (profile key + tab id in sessionStorage).
            await page.reload()
            again = await page.evaluate("window.atenet.ready")
            assert again["ip4"] == info["ip4"] and again["mac"] == info["mac"]

            # A lost connection (not a refusal): the page says it retries, then joins again.
            hellos = len(mock.hellos)
            await mock.ws.close(code=1011, message=b"node restarting")
            await page.wait_for_function("document.body.dataset.state === 'error'")
            banner = await page.inner_text("#banner")
            assert "connection to the node lost" in banner and "retrying in 1 s" in banner, banner
            await page.wait_for_function("document.body.dataset.state === 'connected'")
            assert len(mock.hellos) == hellos + 1

            # A wrong secret: the node closes with 4403 and the page says so.
            refused = await browser.new_page()
            await refused.goto(base + "#" + wrong)
            await refused.wait_for_function("document.body.dataset.state === 'refused'")
            banner = await refused.inner_text("#banner")
            assert "this token was refused (revoked, expired or wrong)" in banner

            # A browser whose clock is 10 minutes slow still joins (the page corrects its
            # hello's time from the node's HTTP Date header).
            context = await browser.new_context()
            await context.add_init_script(
                "{ const real = Date.now; Date.now = () => real() - 600000; }"
            )
            slow = await context.new_page()
            await slow.goto(base + "#" + good)
            await slow.evaluate("window.atenet.ready")
            # 600 s, or 599 when the Date header's whole second was read just before it turned
            log = await slow.inner_text("#log")
            assert re.search(r"clock is (599|600) s behind", log), log
            await context.close()

            # No token, and a damaged one: a clear message, no connection attempt.
            hellos = len(mock.hellos)
            for fragment, text in (("", "no access token"), ("#atn1.%%%", "damaged")):
                bad = await browser.new_page()
                await bad.goto(base + fragment)
                await bad.wait_for_function("document.body.dataset.state === 'error'")
                assert text in await bad.inner_text("#banner")
            assert len(mock.hellos) == hellos
            assert not errors, errors
            await browser.close()
    finally:
        await runner.cleanup()


@needs_browser
async def test_page_falls_back_to_its_hashed_address_when_no_dhcp_server_answers() -> None:
    """The welcome says the node serves DHCP but nothing answers: after ~7 s (3 DISCOVERs) the
    page uses its hashed address, says so, and still works as a host (it pings the peer)."""
    from aiohttp import web

    from atenet.wire import dhcp as wire_dhcp

    mock = MockNode()
    mock.welcome_extra = {"gateway": "10.77.1.1", "dhcp": 1}
    runner = web.AppRunner(mock.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    good = AccessToken(NETWORK_A, KEY_ID, SECRET, (f"127.0.0.1:{port}",)).encode()
    try:
        async with _playwright.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{port}/#{good}")
            await page.wait_for_function("document.body.dataset.state === 'connected'")
            assert await page.evaluate("window.atenet.ip4") is None  # nothing until DHCP or 7 s
            info = await page.evaluate("window.atenet.ready")
            host_key = await page.evaluate(
                "localStorage['atenet-host-key'] + sessionStorage['atenet-tab-id']"
            )
            mac = addressing.stable_mac(NETWORK_A, bytes.fromhex(host_key))
            assert info["source"] == "fallback" and info["gateway"] == "10.77.1.1", info
            assert info["ip4"] == str(addressing.ipv4_for(NETWORK_A, mac, MOCK_CIDR).ip)
            assert "no DHCP answer" in await page.inner_text("#self-ip4-source")
            assert "no DHCP answer: using the hashed address" in await page.inner_text("#log")
            discovers = []
            while not mock.frames.empty():
                cf = wire_dhcp.parse_dhcp_frame(mock.frames.get_nowait())
                if cf is not None and cf.message.message_type == wire_dhcp.DHCPDISCOVER:
                    discovers.append(cf.message)
            assert len(discovers) >= 3 and all(m.chaddr == mac for m in discovers), discovers
            rtts = await page.evaluate(f"window.atenet.ping('{PEER_IP4}', 2)")
            assert all(isinstance(r, (int, float)) for r in rtts), rtts
            assert not errors, errors
            await browser.close()
    finally:
        await runner.cleanup()
