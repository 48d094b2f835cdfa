"""Routing between two networks on real kernels (issue 10, "Routing between networks").

Two `atenet run` nodes, two networks A and B of one owner with a route each way (`tok route
add`), host A1 (`tok connect` to node 1 on A) and host B1 (`tok connect` to node 2 on B), each
in its own namespace. Each host routes the other network's CIDRs via its own network's gateway
(the first host of its CIDR), as the DHCP offer's option 121 tells a DHCP client to. Then, all
through the real kernels: ping both ways over IPv4 and IPv6, a TCP transfer with its sha256
checked on both ends, and revoking the key of the route A → B stops the traffic — measured
from the revoke command returning to the last echo reply, with a ping every 0.05 s.

The numbers (RTT across networks and within one, transfer rate, stop time) are printed for
the record (`pytest -s`); bounds are generous, the machine is shared.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.support.netns import Host, Lab
from tests.support.overlay import BIN, Client, Overlay

pytestmark = [needs_root]

CIDR_A, CIDR6_A = "10.77.0.0/24", "fd77:1:2:3::/64"  # the Overlay's network
CIDR_B, CIDR6_B = "10.78.0.0/24", "fd78:1:2:3::/64"
GW_A, GW6_A = "10.77.0.1", "fd77:1:2:3::1"
GW_B, GW6_B = "10.78.0.1", "fd78:1:2:3::1"
SIZE = 4 << 20
MTU_A, MTU_B = 1400, 1280  # A's is the default; B's smaller one makes A's gateway fragment

SERVER = """
import hashlib, socket, sys
srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(1); srv.settimeout(30)
print("listening", flush=True)
conn, _ = srv.accept(); conn.settimeout(30)
digest, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk); n += len(chunk)
conn.sendall(f"{n} {digest.hexdigest()}".encode()); conn.close()
print(n, digest.hexdigest(), flush=True)
"""

CLIENT = """
import hashlib, os, socket, sys, time
data = os.urandom(int(sys.argv[2]))
sock = socket.create_connection((sys.argv[1], 5001), timeout=30)
t0 = time.monotonic()
sock.sendall(data); sock.shutdown(socket.SHUT_WR)
answer = b""
while chunk := sock.recv(4096):
    answer += chunk
print(hashlib.sha256(data).hexdigest(), answer.decode(), time.monotonic() - t0)
"""


@functools.cache
def static() -> tuple[str, ...]:
    """`--static` (the hashed address, no DHCP) once `tok connect` has DHCP by default: this
    test is about routing, the DHCP lab tests are elsewhere."""
    out = subprocess.run([BIN / "tok", "connect", "--help"], capture_output=True, text=True)
    return ("--static",) if "--static" in out.stdout else ()


@pytest.fixture(scope="module")
def routed() -> Iterator[tuple[Overlay, Client, Client]]:
    """Nodes n1, n2; networks A (the Overlay's) and B routed both ways; A1 on n1, B1 on n2."""
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-routes-") as tmp:
        net = Overlay(lab, Path(tmp), network="A")
        net.tok("network", "create", "B", "--cidr", CIDR_B, "--cidr6", CIDR6_B,
                "--mtu", str(MTU_B))  # fmt: skip
        for name in ("n1", "n2"):
            net.add_node(name)
        # Both directions (a second `route add` is a no-op once `route add A B` adds both).
        for src, dst in (("A", "B"), ("B", "A")):
            net.tok("route", "add", src, dst, "--json")
        a1 = net.add_client("a1", ["n1"], static())
        b1 = net.add_client("b1", ["n2"], static(), network="B")
        for client, cidrs, gateways in (
            (a1, (CIDR_B, CIDR6_B), (GW_A, GW6_A)),
            (b1, (CIDR_A, CIDR6_A), (GW_B, GW6_B)),
        ):
            route_via(client.host, cidrs, gateways)
        yield net, a1, b1


def route_via(host: Host, cidrs: tuple[str, str], gateways: tuple[str, str]) -> None:
    """Route the other network's CIDRs via the own gateway (unless tok connect already did)."""
    for cidr, gateway in zip(cidrs, gateways, strict=True):
        family = "-6" if ":" in cidr else "-4"
        shown = host.run(["ip", family, "route", "show", cidr, "dev", "atenet0"]).stdout
        if f"via {gateway}" not in shown:
            host.run(["ip", family, "route", "add", cidr, "via", gateway, "dev", "atenet0"])


def ping_until(host: Host, addr: str, timeout: float) -> None:
    """Wait until ``addr`` answers (the nodes link a route within a second of the first host;
    the first packets also wait for ARP/ND inside the other network)."""
    deadline = time.monotonic() + timeout
    while not host.ping(addr, count=1, timeout=1):
        if time.monotonic() > deadline:
            routes = host.run(["ip", "route"], check=False).stdout
            raise AssertionError(f"{host.name}: {addr} never answered; routes: {routes}")


def rtt(host: Host, addr: str) -> dict[str, float]:
    """min/avg/max of 20 pings 0.05 s apart, in ms."""
    out = host.run(["ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W", "1", addr]).stdout
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    assert match, out
    return dict(zip(("min", "avg", "max"), map(float, match.groups()), strict=True))


def transfer(net: Overlay, src: Client, dst: Client, addr: str) -> float:
    """Send SIZE random bytes from ``src`` to ``dst`` listening on ``addr``; both ends hash
    them and the hashes must match. Returns the seconds from connect to the receiver's hash."""
    server = dst.host.popen([sys.executable, "-c", SERVER, addr], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        out = src.host.run([sys.executable, "-c", CLIENT, addr, str(SIZE)], timeout=60).stdout
        sent_digest, received, received_digest, seconds = out.split()
        assert int(received) == SIZE and received_digest == sent_digest
        server_out, _ = server.communicate(timeout=10)
        assert server_out.split() == [str(SIZE), sent_digest]
    finally:
        net.lab.stop_process(server)
    return float(seconds)


def test_ping_and_tcp_between_hosts_of_two_routed_networks(
    routed: tuple[Overlay, Client, Client],
) -> None:
    net, a1, b1 = routed
    ping_until(a1.host, b1.ip4, 15)
    ping_until(b1.host, a1.ip4, 10)
    ping_until(a1.host, b1.ip6, 10)
    ping_until(b1.host, a1.ip6, 10)

    # A router on the way: the TTL arrives decremented (64 → 63 each way).
    out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", b1.ip4]).stdout
    assert "ttl=63" in out, out
    out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", b1.ip6]).stdout
    assert "ttl=63" in out, out  # iputils prints the hop limit as ttl= too

    # TTL / hop limit 1: the router says so (what traceroute reads).
    for addr, gateway in ((b1.ip4, GW_A), (b1.ip6, GW6_A)):
        out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", "-t", "1", addr], check=False)
        assert f"From {gateway} icmp_seq=1 Time" in out.stdout, out.stdout  # … exceeded

    # Larger than B's MTU: fragmented by A's gateway, or refused with "fragmentation needed"
    # (IPv4 with DF) / "packet too big" (IPv6), which the sender's kernel takes as the path MTU.
    big = str(MTU_B + 20)  # + 28 of headers: over B's MTU, within A's
    out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", "-M", "dont", "-s", big, b1.ip4])
    assert f"{int(big) + 8} bytes from {b1.ip4}" in out.stdout, out.stdout
    out = a1.host.run(["ping", "-n", "-c", "2", "-W", "2", "-M", "do", "-s", big, b1.ip4],
                      check=False)  # fmt: skip
    assert f"mtu = {MTU_B}" in out.stdout + out.stderr, out
    out = a1.host.run(["ping", "-n", "-c", "3", "-i", "0.3", "-W", "2", "-s", big, b1.ip6],
                      check=False)  # fmt: skip
    assert f"mtu = {MTU_B}" in out.stdout + out.stderr or "too big" in out.stdout, out
    assert f"{int(big) + 8} bytes from {b1.ip6}" in out.stdout, out.stdout

    # The two gateways are one router with a leg in each network: B's gateway addresses answer.
    for gateway in (GW_B, GW6_B):
        out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", gateway]).stdout
        assert f"bytes from {gateway}" in out, out
    # A host of B that is not there: after the ARP / ND tries inside B (3 × 1 s), the sender
    # hears "host unreachable" from B's gateway instead of waiting for a timeout.
    # (Both at once: each takes 3 s.)
    missing = {"10.78.0.254": GW_B, "fd78:1:2:3::fe": GW6_B}
    once = ["ping", "-n", "-c", "1", "-W", "6"]
    pings = {a: a1.host.popen([*once, a], stdout=subprocess.PIPE, text=True) for a in missing}
    for addr, proc in pings.items():
        out, _ = proc.communicate(timeout=15)
        assert f"From {missing[addr]} icmp_seq=1 Destination " in out, out
        assert "unreachable" in out.lower(), out

    across = rtt(a1.host, b1.ip4)
    print(f"\nRTT A1 -> B1 across networks (ms): {across}")

    # A host that just connected is routed from its first packet (the node links A's routes on
    # n2 when A gets a host there, not at its next once-a-second tick, which used to answer
    # the first packets "network unreachable": a TCP connect would fail at once).
    a2 = net.add_client("a2", ["n2"], static())
    route_via(a2.host, (CIDR_B, CIDR6_B), (GW_A, GW6_A))
    out = a2.host.run(["ping", "-n", "-c", "1", "-W", "3", b1.ip4], check=False).stdout
    assert f"bytes from {b1.ip4}" in out and "Unreachable" not in out, out

    # A TCP transfer of a few MB from A1 to B1 over each family, sha256 checked on both ends.
    for addr in (b1.ip4, b1.ip6):
        seconds = transfer(net, a1, b1, addr)
        print(f"TCP A1 -> B1 ({addr}): {SIZE >> 20} MiB in {seconds:.2f} s = "
              f"{SIZE * 8 / seconds / 1e6:.0f} Mbit/s")  # fmt: skip

    status = net.nodes["n1"].network("A")
    print("n1 gateway of A:", json.dumps(status.get("gateway", {}), sort_keys=True))


ROUTER_SOLICIT = """
import socket
index = socket.if_nametoindex("atenet0")
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861: hop limit 255
sock.sendto(bytes((133, 0, 0, 0, 0, 0, 0, 0)), ("ff02::2", 0, 0, index))  # the kernel sums it
"""


def test_router_advertisements_route_b_by_route_information_without_a_default_route(
    routed: tuple[Overlay, Client, Client],
) -> None:
    """A has no internet access: A's gateway advertises router lifetime 0 and B's /64 in a Route
    Information option (RFC 4191). A Linux host that accepts those (accept_ra_rt_info_max_plen
    64; the default 0 ignores them) routes B through the gateway's link-local address from the
    advertisement alone, and still has no default route."""
    _net, a1, b1 = routed
    host = a1.host
    host.run(["sysctl", "-qw", "net.ipv6.conf.atenet0.accept_ra_rt_info_max_plen=64"])
    host.run(["ip", "-6", "route", "del", CIDR6_B, "dev", "atenet0"], check=False)  # tok's own
    routes: list[dict[str, str]] = []
    deadline = time.monotonic() + 15
    while not routes and time.monotonic() < deadline:
        host.run([sys.executable, "-c", ROUTER_SOLICIT])  # answered by a unicast advertisement
        time.sleep(0.5)
        out = host.run(["ip", "-6", "-j", "route", "show", CIDR6_B]).stdout
        routes = [r for r in json.loads(out) if r.get("protocol") == "ra"]
    assert routes, host.run(["ip", "-6", "route"]).stdout
    assert routes[0]["gateway"].startswith("fe80:") and routes[0]["dev"] == "atenet0"
    assert json.loads(host.run(["ip", "-6", "-j", "route", "show", "default"]).stdout) == []
    ping_until(host, b1.ip6, 10)


def test_revoking_the_route_key_stops_the_traffic(routed: tuple[Overlay, Client, Client]) -> None:
    """Measured from the revocation's chain event (its author's clock: the same machine) to
    the last echo reply, with a ping every 0.05 s."""
    net, a1, b1 = routed
    ping_until(a1.host, b1.ip4, 15)
    (route,) = json.loads(net.tok("route", "list", "A", "--json"))
    key_id = route["key_id"]

    log = net.root / "revoke-ping.log"
    # 5 s of pings, 1 s before the revocation: `tok key revoke` may take seconds to start on a
    # busy machine, and pings must still run after it to see the gateway's answer change.
    with log.open("w") as out:
        pinger = a1.host.popen(
            ["ping", "-n", "-D", "-O", "-c", "100", "-i", "0.05", "-W", "1", b1.ip4],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        time.sleep(1.0)
        net.tok("key", "revoke", "B", str(key_id))
        returned = time.time()
        pinger.wait(timeout=20)
    finally:
        net.lab.stop_process(pinger)
    (event,) = [e for e in json.loads(net.tok("log", "B", "--json")) if e["kind"] == "key_revoke"]
    revoked = event["time_ms"] / 1000
    text = log.read_text()
    replies = [float(t) for t in re.findall(r"^\[([\d.]+)\] \d+ bytes from", text, re.M)]
    unreachable = [float(t) for t in re.findall(r"^\[([\d.]+)\] From .*Unreachable", text, re.M)]
    assert [t for t in replies if t < revoked], text  # it worked up to the revocation
    assert unreachable, text  # then A's gateway says why: its route to B is gone
    stop, told = max(replies) - revoked, min(unreachable) - revoked
    print(f"\nrevocation: last echo reply {stop * 1000:.0f} ms after the key_revoke event, "
          f"first 'net unreachable' at {told * 1000:.0f} ms; the command returned at "
          f"{(returned - revoked) * 1000:.0f} ms")  # fmt: skip
    assert stop < 1.0, text  # the goal (nodes see the sqlite store's appends in ~0.05 s)
    assert not a1.host.ping(b1.ip4, count=2, timeout=1)


def test_network_a_itself_is_untouched_and_rtt_within_it(
    routed: tuple[Overlay, Client, Client],
) -> None:
    """After the revocation A still works across its two nodes: the route was only a port of
    B. Its RTT (A1 on n1 → A2 on n2, one overlay hop) is the yardstick for the routed one."""
    net, a1, _b1 = routed
    a2 = net.clients.get("a2") or net.add_client("a2", ["n2"], static())
    ping_until(a1.host, a2.ip4, 10)
    within = rtt(a1.host, a2.ip4)
    print(f"\nRTT A1 -> A2 within network A, across nodes (ms): {within}")
    out = a1.host.run(["ping", "-n", "-c", "1", "-W", "2", a2.ip4]).stdout
    assert "ttl=64" in out, out  # switched, not routed
