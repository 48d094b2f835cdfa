"""The web page's JavaScript, tested with Node's test runner and cross-checked against Python.

``node --test`` runs ``tests/js/*.test.mjs``. This module computes reference values with the
Python package (hashed addresses, the access token and its hello MAC, frames from
``atenet.wire``) and hands them to the JS tests in a JSON file (``ATENET_WEB_VECTORS``); the JS
host's answers to Python-built requests come back in ``replies.json`` (``ATENET_WEB_OUT``) and
are parsed here with ``atenet.wire``, checksums verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atenet import addressing, wire
from atenet.seal import INFO_AUTH, PacketKey
from atenet.token import AccessToken
from atenet.wire.icmp import ICMP_ECHO_REPLY
from atenet.wire.icmpv6 import ICMPV6_ECHO_REPLY, ICMPV6_NEIGHBOR_ADVERT

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
        "token": _token_vector(),
        "frames": _frame_vectors(),
        "requests": {name: frame.hex() for name, frame in requests.items()},
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


def test_page_needs_nothing_from_the_internet() -> None:
    """The page's files exist, link each other relatively, and load nothing from elsewhere."""
    files = {p.name for p in WEB.iterdir()}
    assert {"index.html", "app.js", "net.js", "sha256.js", "style.css"} <= files
    for path in WEB.iterdir():
        text = path.read_text()
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text):
            # Links in comments/docs text are fine only if they are not loaded by the page.
            assert not re.search(rf"(src|href|import)[^\n]*{re.escape(url)}", text), (path, url)
        for ref in re.findall(r"""(?:src|href)="([^"#]+)\"""", text):
            assert not re.match(r"\w+:|//", ref), (path, ref)
            assert (WEB / ref.lstrip("./")).is_file(), (path, ref)
        for ref in re.findall(r"""^import .* from "([^"]+)";""", text, re.MULTILINE):
            assert ref.startswith("./") and (WEB / ref[2:]).is_file(), (path, ref)
