"""`tok connect --address dhcp|static|none`: the option parsing, the routes a host installs,
and (as root) a real `atenet run` node and real `tok connect` hosts in namespaces: the default
gets its address from the node's gateway by DHCP, one lease event in the chain, pings the
gateway; `--static` gets the hashed address; `--address none` no IPv4.

The DHCP client itself is driven frame by frame against the server in tests/test_dhcp_client.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from atenet.addressing import ipv4_for
from atenet.client.connect import routes_for
from atenet.client.dhcp import ClientLease
from tests.conftest import VENV_BIN, needs_root
from tests.support.overlay import BIN, Client, Overlay, wait_for_text

# --------------------------------------------------------------------------- the options


def tok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VENV_BIN / "tok", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "ATENET_TOKEN"}
    return e | {"ATENET_HOME": str(tmp_path / "home")}


def test_static_contradicting_address_and_a_bad_mode_are_usage_errors(env: dict[str, str]) -> None:
    out = tok("connect", "--static", "--address", "dhcp", "--token-file", "-", env=env)
    assert out.returncode == 2 and "--static and --address dhcp contradict" in out.stderr
    out = tok("connect", "--address", "bootp", "--token-file", "-", env=env)
    assert out.returncode == 2 and "'bootp' is not one of 'dhcp', 'static', 'none'" in out.stderr
    out = tok("connect", "--dhcp-wait", "0.1", "--token-file", "-", env=env)
    assert out.returncode == 2 and "--dhcp-wait" in out.stderr
    # --static with --address static is fine: it goes on to read the (missing) token.
    out = tok("connect", "--static", "--address", "static", env=env)
    assert out.returncode == 2 and "no token" in out.stderr


def test_help_names_the_address_modes(env: dict[str, str]) -> None:
    out = tok("connect", "--help", env=env)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--address [dhcp|static|none]" in text and "default: dhcp" in text
    assert "--static Short for --address static." in text and "--dhcp-wait SECONDS" in text


# --------------------------------------------------------------------------- routes


def lease(
    routes: list[tuple[str, str]] = (),  # type: ignore[assignment]
    router: bool = True,
) -> ClientLease:
    gw = IPv4Address("10.1.0.1")
    return ClientLease(
        address=IPv4Address("10.1.0.7"), prefixlen=24, server=gw, server_mac=b"\x02" * 6,
        bound_at=0.0, lease_time=3600, t1=1800, t2=3150, router=gw if router else None,
        routes=tuple((IPv4Network(n), IPv4Address(v)) for n, v in routes),
    )  # fmt: skip


def test_routes_go_to_routed_networks_via_the_gateway_and_default_only_when_offered() -> None:
    config: dict[str, Any] = {
        "cidr": "10.1.0.0/24",
        "cidr6": "fd01::/64",
        "gateway": "10.1.0.1",
        "gateway6": "fd01::1",
        "routes": ["10.2.0.0/24", "fd02::/64", "10.1.0.0/25", "not a cidr", "0.0.0.0/0"],
    }
    got = routes_for(
        config,
        IPv4Interface("10.1.0.7/24"),
        lease(
            [
                ("0.0.0.0/0", "10.1.0.1"),  # internet access: the default route, first
                ("10.3.0.0/16", "10.1.0.1"),
                ("10.2.0.0/24", "10.1.0.1"),  # also in the welcome: once
                ("10.4.0.0/24", "192.0.2.1"),  # its gateway is not on the link
            ]
        ),
    )
    assert got == [
        ("0.0.0.0/0", "10.1.0.1"),
        ("10.3.0.0/16", "10.1.0.1"),
        ("10.2.0.0/24", "10.1.0.1"),
        ("fd02::/64", "fd01::1"),
    ]
    # Option 121 without 0.0.0.0/0 replaces option 3 (RFC 3442): no default route.
    ip4 = IPv4Interface("10.1.0.7/24")
    assert routes_for({}, ip4, lease([("10.3.0.0/16", "10.1.0.1")])) == [
        ("10.3.0.0/16", "10.1.0.1")
    ]
    # Option 3 alone: the default route; neither (internet off): none.
    assert routes_for({}, ip4, lease()) == [("0.0.0.0/0", "10.1.0.1")]
    assert routes_for({}, ip4, lease(router=False)) == []
    # Static: the welcome's routes via the welcome's gateway; no IPv4 address, no IPv4 routes.
    assert routes_for(config, IPv4Interface("10.1.0.9/24"), None)[0] == ("10.2.0.0/24", "10.1.0.1")
    assert routes_for(config, None, None) == [("fd02::/64", "fd01::1")]
    assert routes_for({"cidr": "10.1.0.0/24"}, IPv4Interface("10.1.0.9/24"), None) == []


# --------------------------------------------------------------------------- on real kernels

CIDR = "10.77.0.0/24"  # tests/support/overlay.py's network


@pytest.fixture(scope="module")
def net() -> Iterator[Overlay]:
    from tests.support.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-dhcp-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        overlay.add_node("n1")
        yield overlay


def status(net: Overlay, client: Client) -> dict[str, Any]:
    env = net.env | {"ATENET_HOME": str(net.root / client.name)}
    out = client.host.run([VENV_BIN / "tok", "status", "--json"], env=env, timeout=60)
    (conn,) = json.loads(out.stdout)["connections"]
    return conn


def addresses4(client: Client) -> list[str]:
    out = client.host.run(["ip", "-4", "-j", "addr", "show", "dev", "atenet0"], timeout=30)
    links = json.loads(out.stdout)  # [] when the device has no IPv4 address at all
    return [f"{a['local']}/{a['prefixlen']}" for link in links for a in link["addr_info"]]


def lease_events(net: Overlay, mac: str) -> list[dict[str, Any]]:
    log = json.loads(net.tok("log", net.network, "--json"))
    return [e for e in log if e["kind"] == "lease" and e["summary"].startswith(mac)]


def network_id(net: Overlay) -> bytes:
    return bytes.fromhex(json.loads(net.tok("network", "show", net.network, "--json"))["id"])


@needs_root
def test_a_host_gets_its_address_by_dhcp_pings_the_gateway_and_keeps_it(net: Overlay) -> None:
    client = net.add_client("h1", ["n1"])
    try:
        hashed = ipv4_for(
            network_id(net), bytes.fromhex(client.mac.replace(":", "")), "10.77.0.0/24"
        )
        # The first free address the server offers is the hashed one: DHCP and static agree.
        assert client.ipv4 == str(hashed)
        assert addresses4(client) == [client.ipv4]
        conn = status(net, client)
        assert conn["address_source"] == "dhcp" and conn["ipv4"] == client.ipv4
        counters = conn["dhcp"]  # the client runs on (renewals), its counters with it
        assert (counters["offers"], counters["acks"], counters["malformed"]) == (1, 1, 0)
        lease = conn["lease"]
        assert lease["server"] == "10.77.0.1"
        assert not lease["router"]  # internet off (the default): no default router offered
        assert 3000 < lease["expires"] - time.time() <= 3600
        env = net.env | {"ATENET_HOME": str(net.root / client.name)}
        text = client.host.run([VENV_BIN / "tok", "status"], env=env, check=False, timeout=60)
        assert (
            f"{client.ipv4} " in text.stdout and "(dhcp from 10.77.0.1, lease until " in text.stdout
        )
        (event,) = lease_events(net, client.mac)  # one binding in the chain
        assert event["summary"].split()[2] == client.ip4
        assert client.host.ping("10.77.0.1", count=2, timeout=5)
        # Only the network's own route on atenet0; no default route through it.
        routes = client.host.run(["ip", "-4", "-j", "route", "show", "dev", "atenet0"], timeout=30)
        assert [r["dst"] for r in json.loads(routes.stdout)] == ["10.77.0.0/24"]
    finally:
        assert client.proc is not None
        net.lab.stop_process(client.proc, grace=10)
    assert client.proc.returncode == 0
    # The binding outlives the connection: reconnecting (the same MAC) gets the address back
    # from the table, quickly and without a chain event, however often.
    for _ in range(3):
        line, took = reconnect(net, client)
        assert f" {client.ipv4} " in line and "(dhcp from 10.77.0.1" in line
        assert took < 15
    assert len(lease_events(net, client.mac)) == 1
    # --release gives it back on stop: one more event, the binding ending then.
    reconnect(net, client, "--release")
    deadline = time.monotonic() + 10
    while len(lease_events(net, client.mac)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lease_events(net, client.mac)) == 2


def reconnect(net: Overlay, client: Client, *args: str) -> tuple[str, float]:
    """`tok connect` again on ``client``'s host (so with its MAC), then a clean stop; the
    connected line and how long it took to come."""
    log = net.root / f"{client.name}-again.log"
    log.write_bytes(b"")
    env = net.env | {"ATENET_TOKEN": client.token, "ATENET_HOME": str(net.root / client.name)}
    start = time.monotonic()
    with log.open("ab") as out:
        proc = client.host.popen(
            [BIN / "tok", "connect", "--wait", "20", *args], env=env, stdout=out, stderr=out
        )
    try:
        line = wait_for_text(proc, log, "connected to", 60)
        took = time.monotonic() - start
    finally:
        net.lab.stop_process(proc, grace=10)
    assert proc.returncode == 0, log.read_text()
    return line, took


@needs_root
def test_static_gives_the_hashed_address_and_writes_no_lease(net: Overlay) -> None:
    client = net.add_client("h2", ["n1"], args=("--static",))
    try:
        hashed = ipv4_for(
            network_id(net), bytes.fromhex(client.mac.replace(":", "")), "10.77.0.0/24"
        )
        assert client.ipv4 == str(hashed) and addresses4(client) == [str(hashed)]
        conn = status(net, client)
        assert conn["address_source"] == "static" and conn["lease"] is None
        assert lease_events(net, client.mac) == []
        assert client.host.ping("10.77.0.1", count=1, timeout=5)
    finally:
        assert client.proc is not None
        net.lab.stop_process(client.proc, grace=10)


@needs_root
def test_address_none_leaves_ipv4_to_the_host(net: Overlay) -> None:
    client = net.add_client("h3", ["n1"], args=("--address", "none"))
    try:
        assert client.ipv4 == "-" and addresses4(client) == []
        assert client.log is not None and "(no IPv4: --address none)" in client.log.read_text()
        conn = status(net, client)
        assert conn["address_source"] == "none" and conn["ipv4"] == ""
        assert lease_events(net, client.mac) == []
    finally:
        assert client.proc is not None
        net.lab.stop_process(client.proc, grace=10)


@contextlib.contextmanager
def on_network(net: Overlay, name: str) -> Iterator[None]:
    """Hosts added meanwhile join network ``name`` (the overlay's helpers use its one network)."""
    saved, net.network = net.network, name
    try:
        yield
    finally:
        net.network = saved


@needs_root
def test_no_offer_falls_back_to_the_hashed_address_saying_why_in_one_line(net: Overlay) -> None:
    # A /30 has one address for hosts: the first host takes it by DHCP, the second gets no
    # offer (the pool is full) and falls back to its hashed address after --dhcp-wait.
    net.tok("network", "create", "tiny", "--cidr", "10.78.0.0/30", "--cidr6", "fd78:1:2:3::/64")
    with on_network(net, "tiny"):
        first = net.add_client("t1", ["n1"])
        second = net.add_client("t2", ["n1"], args=("--dhcp-wait", "2"))
    try:
        assert first.ipv4 == "10.78.0.2/30" and status(net, first)["address_source"] == "dhcp"
        conn = status(net, second)
        assert conn["address_source"] == "static" and conn["lease"] is None
        assert conn["address_note"] == "no DHCP offer in 2 s"
        assert addresses4(second) == [conn["ipv4"]]
        assert second.log is not None
        text = second.log.read_text()
        (warning,) = [x for x in text.splitlines() if "WARNING" in x]  # one line says why
        assert "no DHCP offer in 2 s from the gateway 10.78.0.1: using the hashed" in warning
        assert "(static: no DHCP offer in 2 s)" in text  # and the connected line
    finally:
        for client in (first, second):
            assert client.proc is not None
            net.lab.stop_process(client.proc, grace=10)


RECONFIGURE = r"""
import asyncio, json, os, subprocess, sys
from ipaddress import IPv4Address, IPv4Network
from atenet.client.connect import Connection
from atenet.client.dhcp import ClientLease, Event
from atenet.overlay.token import AccessToken
from atenet.transport.tap import TapDevice, configure_link

def lease(addr, routes=()):
    gw = IPv4Address("10.1.0.1")
    return ClientLease(IPv4Address(addr), 24, gw, b"\x02" * 6, 0.0, 3600, 1800, 3150, gw,
                       routes=tuple((IPv4Network(n), gw) for n in routes))

def snapshot():
    out = {}
    for what in ("addr", "route"):
        cmd = ["ip", "-4", "-j", what, "show", "dev", "dh0"]
        items = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout or "[]")
        if what == "addr":
            out[what] = [f"{a['local']}/{a['prefixlen']}" for i in items for a in i["addr_info"]]
        else:
            out[what] = sorted(
                f"{r['dst']} via {r.get('gateway', '-')}" + (" metric %d" % r["metric"]
                if r.get("metric") else "") for r in items
            )
    return out

async def main():
    token = AccessToken(os.urandom(16), 1, os.urandom(32), ("127.0.0.1:9",))
    conn = Connection(token, "dh0")
    conn.tap = TapDevice.open("dh0", mtu=1400, mac=conn.mac)
    await asyncio.to_thread(configure_link, "dh0", conn.mac, 1400)
    conn._config = {"cidr": "10.1.0.0/24", "gateway": "10.1.0.1", "routes": ["10.2.0.0/24"]}
    first = lease("10.1.0.7", ["10.3.0.0/16", "0.0.0.0/0"])
    steps = [
        Event("bound", first),
        Event("bound", lease("10.1.0.9"), previous=first),
        Event("lost", lease("10.1.0.9"), "expired"),
    ]
    result = []
    for event in steps:
        conn._dhcp_events = [event]
        await conn._on_dhcp_events()
        result.append(snapshot())
    print(json.dumps(result))
    conn.tap.close()

asyncio.run(main())
"""


@needs_root
def test_a_new_address_replaces_the_old_and_a_lost_lease_takes_it_and_its_routes_away(
    net: Overlay,
) -> None:
    host = net.lab.add_host("reconf")
    out = host.run([VENV_BIN / "python", "-c", RECONFIGURE], timeout=60)  # in its namespace
    bound, moved, lost = json.loads(out.stdout)
    assert bound == {
        "addr": ["10.1.0.7/24"],
        "route": [
            "10.1.0.0/24 via -",
            "10.2.0.0/24 via 10.1.0.1",
            "10.3.0.0/16 via 10.1.0.1",
            "default via 10.1.0.1 metric 1024",  # option 121's 0.0.0.0/0, below a host's own
        ],
    }
    assert moved == {
        "addr": ["10.1.0.9/24"],
        "route": [
            "10.1.0.0/24 via -",
            "10.2.0.0/24 via 10.1.0.1",
            "default via 10.1.0.1 metric 1024",
        ],
    }  # option 3 (no option 121): the default route again
    assert lost == {"addr": [], "route": []}


def atenet0_routes(client: Client, family: str) -> list[str]:
    out = client.host.run(["ip", family, "-j", "route", "show", "dev", "atenet0"], timeout=30)
    return sorted(f"{r['dst']} via {r.get('gateway', '-')}" for r in json.loads(out.stdout))


@needs_root
def test_a_route_added_while_connected_is_installed_via_the_gateway_and_nothing_more(
    net: Overlay,
) -> None:
    client = net.add_client("r1", ["n1"])
    try:
        assert atenet0_routes(client, "-4") == ["10.77.0.0/24 via -"]
        net.tok("network", "create", "far", "--cidr", "10.79.0.0/24", "--cidr6", "fd79:1:2:3::/64")
        net.tok("route", "add", net.network, "far")
        # The node loads the other network, its pongs (every 5 s) name it: installed then.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "10.79.0.0/24 via 10.77.0.1" in atenet0_routes(client, "-4"):
                break
            time.sleep(0.5)
        assert atenet0_routes(client, "-4") == ["10.77.0.0/24 via -", "10.79.0.0/24 via 10.77.0.1"]
        six = atenet0_routes(client, "-6")
        assert "fd79:1:2:3::/64 via fd77:1:2:3::1" in six
        assert not [r for r in six if r.startswith("default")]
        assert status(net, client)["routes"] == [
            "10.79.0.0/24 via 10.77.0.1",
            "fd79:1:2:3::/64 via fd77:1:2:3::1",
        ]
    finally:
        assert client.proc is not None
        net.lab.stop_process(client.proc, grace=10)
