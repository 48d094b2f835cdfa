"""Real DHCP clients and the kernel's SLAAC against the nodes' gateways (issue 10).

Two real `atenet run` nodes serve network "lan" (10.77.0.0/24, fd77:1:2:3::/64, gateway
10.77.0.1 and fd77:1:2:3::1); each host is a real `tok connect --address none` in its own
namespace (no address of its own: the host's DHCP client configures the TAP), then busybox
`udhcpc` or ISC `dhclient` on the TAP, or the kernel itself (SLAAC from the gateway's router
advertisements). What the chain holds is read with `tok log` and `tok lease list`, as an owner
would. The sans-I/O server is driven frame by frame in tests/test_dhcp.py.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from atenet.addressing import ipv4_for
from tests.conftest import needs_root
from tests.support.dhcp_clients import need, start_dhclient, start_udhcpc, stop, wait_for_lines
from tests.support.overlay import Client, Overlay

pytestmark = [needs_root]

CIDR, CIDR6 = IPv4Network("10.77.0.0/24"), IPv6Network("fd77:1:2:3::/64")
GW, GW6 = "10.77.0.1", "fd77:1:2:3::1"
NONE = ("--address", "none")


@pytest.fixture(scope="module")
def net() -> Iterator[Overlay]:
    from tests.support.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-dhcp-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        for name in ("n1", "n2"):
            overlay.add_node(name)
        yield overlay


def leases(net: Overlay) -> dict[str, dict[str, Any]]:
    """`tok lease list lan --json`, by MAC."""
    return {x["mac"]: x for x in json.loads(net.tok("lease", "list", "lan", "--json"))}


def lease_events(net: Overlay) -> int:
    """How many lease events the chain holds (`tok log`)."""
    return sum(e["kind"] == "lease" for e in json.loads(net.tok("log", "lan", "--json")))


def node_id(net: Overlay, node: str) -> str:
    """The id a node signs its lease events with: its member entry's, found by endpoint."""
    members = json.loads(net.tok("network", "show", "lan", "--json"))["members"]
    endpoint = net.nodes[node].endpoint
    return next(m["node_id"] for m in members if endpoint in m["endpoints"])


def addresses(client: Client, family: str) -> list[dict[str, Any]]:
    out = client.host.run(["ip", "-j", family, "addr", "show", "dev", "atenet0"]).stdout
    (link,) = json.loads(out)
    return list(link["addr_info"])


def test_udhcpc_gets_address_route_and_dns_and_renews_without_a_chain_event(
    net: Overlay, tmp_path: Path
) -> None:
    need("busybox")
    client = net.add_client("u1", ["n1"], NONE)
    assert client.ipv4 == "-"  # --address none: the TAP has no IPv4 until udhcpc sets one
    log = tmp_path / "u1.log"
    proc = start_udhcpc(client.host, "atenet0", tmp_path, log, "-x", "hostname:labhost")
    try:
        (bound,) = wait_for_lines(log, 1) or [""]
        ip = bound.split()[1].removeprefix("ip=") if bound.startswith("bound ") else ""
        assert ip and IPv4Address(ip) in CIDR and ip != GW, bound
        # Internet off (the default): no router option, so no default route through atenet.
        assert bound.startswith(f"bound ip={ip} mask=24 router= dns=8.8.8.8 mtu=1400 "), bound
        assert [(a["local"], a["prefixlen"]) for a in addresses(client, "-4")] == [(ip, 24)]
        assert "default" not in client.host.run(["ip", "route"]).stdout
        assert client.host.ping(GW, count=2, timeout=5), "the gateway does not answer a ping"

        binding = leases(net)[client.mac]
        assert (binding["ip"], binding["host"], binding["expired"]) == (ip, "labhost", False)
        assert binding["node"] == node_id(net, "n1")
        assert "labhost" in net.tok("lease", "list", "lan")
        events = lease_events(net)

        # SIGUSR1: udhcpc renews now (a unicast REQUEST to the gateway), as at T1.
        proc.send_signal(signal.SIGUSR1)
        lines = wait_for_lines(log, 2)
        assert len(lines) == 2 and lines[1].startswith(f"renew ip={ip} mask=24 "), lines
        assert lease_events(net) == events  # answered from the chain's table: nothing written
        assert leases(net)[client.mac]["seq"] == binding["seq"]
    finally:
        stop(proc)


def test_dhclient_behind_another_node_gets_another_address_and_keeps_it_across_a_restart(
    net: Overlay, tmp_path: Path
) -> None:
    """ISC dhclient, behind n2, with a MAC whose hashed address a udhcpc host behind n1 holds:
    n2 must hand out another address (the chain says who holds which), a restarted dhclient
    gets the same one back without a chain event, and so does a fresh one after n2 restarts
    (its table is replayed from the chain)."""
    need("busybox", "dhclient")
    net_id = bytes.fromhex(json.loads(net.tok("network", "show", "lan", "--json"))["id"])
    first = net.add_client("u2", ["n1"], NONE)
    procs = [start_udhcpc(first.host, "atenet0", tmp_path, tmp_path / "u2.log")]
    second = net.add_client("d1", ["n2"], NONE)
    try:
        (bound,) = wait_for_lines(tmp_path / "u2.log", 1) or [""]
        held = IPv4Address(bound.split()[1].removeprefix("ip=")) if bound else None
        assert held is not None and held in CIDR, bound
        # The dhclient host takes a MAC whose hashed address (the first offer) is the held one.
        mac = next(
            m
            for m in (bytes.fromhex("02dd00") + i.to_bytes(3, "big") for i in range(100_000))
            if ipv4_for(net_id, m, str(CIDR)).ip == held
        )
        second.host.run(["ip", "link", "set", "dev", "atenet0", "address", mac.hex(":")])
        log = tmp_path / "d1.log"
        procs.append(start_dhclient(second.host, "atenet0", tmp_path, log))
        (got,) = wait_for_lines(log, 1, timeout=30) or [""]
        assert got.startswith("BOUND ip="), (tmp_path / "dhclient.err").read_text()[-500:]
        ip = got.split()[1].removeprefix("ip=")
        assert IPv4Address(ip) in CIDR and ip not in (str(held), GW), got
        assert got == f"BOUND ip={ip} mask=255.255.255.0 router= dns=8.8.8.8 mtu=1400"
        assert [a["local"] for a in addresses(second, "-4")] == [ip]
        assert second.host.ping(GW, count=2, timeout=5)
        table = leases(net)
        assert table[mac.hex(":")]["ip"] == ip and table[first.mac]["ip"] == str(held)
        assert table[mac.hex(":")]["node"] == node_id(net, "n2") != table[first.mac]["node"]
        events = lease_events(net)

        # dhclient started again with its lease file: INIT-REBOOT, the same address, no event.
        stop(procs.pop())
        procs.append(start_dhclient(second.host, "atenet0", tmp_path, log))
        lines = wait_for_lines(log, 2, timeout=30)
        assert lines[1:] == [got.replace("BOUND", "REBOOT")], lines
        assert lease_events(net) == events

        # n2 restarts (its DHCP server starts again from the chain); a fresh dhclient, without
        # a lease file, asks from scratch and gets the same address, still without an event.
        stop(procs.pop())
        (tmp_path / "dhclient.leases").unlink()
        n2 = net.nodes["n2"]
        assert n2.proc is not None and n2.log is not None
        net.lab.stop_process(n2.proc)
        n2.log.rename(n2.log.with_suffix(".before-restart.log"))
        net.start_node(n2)
        procs.append(start_dhclient(second.host, "atenet0", tmp_path, log))
        lines = wait_for_lines(log, 3, timeout=40)
        assert lines[2:] == [got], (lines, (tmp_path / "dhclient.err").read_text()[-800:])
        assert lease_events(net) == events
        assert leases(net)[mac.hex(":")]["ip"] == ip
        assert second.host.ping(GW, count=2, timeout=5)
    finally:
        for proc in procs:
            stop(proc)


def test_kernel_slaac_takes_an_address_from_the_gateways_advertisement(net: Overlay) -> None:
    """The TAP keeps the kernel's default IPv6 sysctls (accept_ra on, no forwarding): the
    gateway's router advertisement alone gives it an address in the network's /64."""
    client = net.add_client("s1", ["n1"], NONE)
    sysctl = client.host.run(
        ["cat", "/proc/sys/net/ipv6/conf/atenet0/accept_ra",
         "/proc/sys/net/ipv6/conf/atenet0/forwarding"]
    ).stdout.split()  # fmt: skip
    assert sysctl == ["1", "0"]
    hashed = client.ip6
    slaac = []
    deadline = time.monotonic() + 20  # the kernel solicits at link up, then every 4 s
    while not slaac and time.monotonic() < deadline:
        slaac = [
            a["local"]
            for a in addresses(client, "-6")
            if a.get("dynamic") and IPv6Address(a["local"]) in CIDR6 and a["local"] != hashed
        ]
        time.sleep(0.2)
    assert slaac, addresses(client, "-6")
    out = client.host.run(
        ["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-w", "5", "-I", slaac[0], GW6], check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def default_routes(client: Client, family: str) -> list[str]:
    """The gateways of the host's default routes (``ip route show default``)."""
    out = client.host.run(["ip", family, "-j", "route", "show", "default"]).stdout
    return [str(r.get("gateway", "-")) for r in json.loads(out)]


def renew_until(proc: Any, log: Path, want: str, timeout: float = 30) -> str:
    """SIGUSR1 (udhcpc renews now, as at T1) once a second until a renewal logs ``want``: the
    nodes follow the chain within moments, not at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = log.read_text().count("\n")
        proc.send_signal(signal.SIGUSR1)
        lines = wait_for_lines(log, before + 1, timeout=5)
        if len(lines) > before and want in lines[-1]:
            return lines[-1]
        time.sleep(1)
    raise AssertionError(f"no renewal with {want!r}: {log.read_text()[-600:]}")


def wait_until(check: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    return bool(check())


def test_internet_on_gives_default_routes_and_off_takes_them_away_live(
    net: Overlay, tmp_path: Path
) -> None:
    """`tok network set lan --internet on|off` while hosts are connected: a udhcpc host gets
    (loses) its IPv4 default route via the gateway at its next renewal, the kernel its IPv6 one
    at once (the gateway advertises again with the new router lifetime), and a `tok connect`
    host that gets its lease while it is on installs the default route with metric 1024. The
    network's own route stays throughout."""
    need("busybox")
    udhcpc = net.add_client("i1", ["n1"], NONE)
    log = tmp_path / "i1.log"
    proc = start_udhcpc(udhcpc.host, "atenet0", tmp_path, log)
    builtin = None
    try:
        (bound,) = wait_for_lines(log, 1) or [""]
        assert bound.startswith("bound ") and " router= " in bound, bound
        assert default_routes(udhcpc, "-4") == []
        assert wait_until(lambda: addresses(udhcpc, "-6")), "no SLAAC address"
        assert default_routes(udhcpc, "-6") == []

        net.tok("network", "set", "lan", "--internet", "on")
        assert f"router={GW} " in renew_until(proc, log, f"router={GW} ")
        assert default_routes(udhcpc, "-4") == [GW]
        assert wait_until(lambda: default_routes(udhcpc, "-6") != []), "no IPv6 default route"
        (via6,) = default_routes(udhcpc, "-6")
        assert IPv6Address(via6).is_link_local  # the gateway's link-local address (RFC 4861)
        builtin = net.add_client("i2", ["n2"])  # tok connect's own DHCP client
        out = builtin.host.run(["ip", "-4", "-j", "route", "show", "default"]).stdout
        assert [(r["gateway"], r["metric"]) for r in json.loads(out)] == [(GW, 1024)]

        net.tok("network", "set", "lan", "--internet", "off")
        assert wait_until(lambda: default_routes(udhcpc, "-6") == []), "IPv6 default route kept"
        renew_until(proc, log, " router= ")
        assert default_routes(udhcpc, "-4") == []
        routes = udhcpc.host.run(["ip", "-4", "route", "show", "dev", "atenet0"]).stdout
        assert str(CIDR) in routes, routes
        assert udhcpc.host.ping(GW, count=1, timeout=5)
    finally:
        stop(proc)
        if builtin is not None and builtin.proc is not None:
            net.lab.stop_process(builtin.proc, grace=10)
        net.tok("network", "set", "lan", "--internet", "off")
