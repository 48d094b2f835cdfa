"""A real browser joins the LAN: chromium opens the node's page and becomes a host on the network.

Topology: node n1 (``atenet run``, HTTP on 127.0.0.1:8080 in its namespace) and host h1
(``tok connect`` via n1). Chromium (Debian's, driven by Playwright) runs inside n1's namespace,
so ``http://127.0.0.1:8080`` is the node and the origin is a secure context. The page opens
``/#TOKEN``, says hello over ``/ws`` and becomes a WebSocket port; then h1's kernel pings the
browser's hashed addresses and the browser pings h1 with its ping tool. A screenshot of the
page is saved to ``test-artifacts/browser.png``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from atenet.addressing import ipv4_for, ipv6_for
from atenet.overlay.token import AccessToken
from tests.conftest import ROOT, needs_root
from tests.support.browser import chromium, skip_without_chromium
from tests.support.netns import Lab
from tests.support.overlay import BIN, HTTP_PORT, Client, Node, Overlay

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Response

pytestmark = [needs_root]

ARTIFACTS = ROOT / "test-artifacts"
CIDR = IPv4Network("10.77.0.0/24")  # the Overlay's networks
CIDR6 = IPv6Network("fd77:1:2:3::/64")


@pytest.fixture(scope="module")
def net() -> Iterator[tuple[Overlay, Node, Client]]:
    skip_without_chromium()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-browser-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1 = overlay.add_node("n1")
        h1 = overlay.add_client("h1", ["n1"])
        yield overlay, n1, h1


def test_browser_joins_the_lan_and_pings_a_tap_host_both_ways(
    net: tuple[Overlay, Node, Client], tmp_path: Path
) -> None:
    overlay, n1, h1 = net
    _, token = overlay.export_key("browser", ["n1"])
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console error: {msg.text} at {msg.location['url']}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url.split('#')[0]}")

    with chromium(tmp_path, ns=n1.host.ns) as context:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("console", on_console)
        page.on("response", on_response)
        try:
            run_checks(page, overlay, n1, h1, token)
        finally:  # the screenshot is the artifact to look at, above all when a check failed
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)

    # The browser's own favicon probe is not the page's doing (index.html declares no icon).
    assert [p for p in problems if "/favicon.ico" not in p] == []


def run_checks(page: Page, overlay: Overlay, n1: Node, h1: Client, token: str) -> None:
    page.goto(f"http://127.0.0.1:{HTTP_PORT}/#{token}", wait_until="load")

    joined: dict[str, Any] = page.evaluate("() => window.atenet.ready")
    page.wait_for_function("document.body.dataset.state === 'connected'", timeout=10_000)
    assert page.evaluate("window.isSecureContext") is True
    ip4, ip6, mac = joined["ip4"], joined["ip6"], joined["mac"]
    assert IPv4Address(ip4) in CIDR and ip4 != h1.ip4, joined
    assert IPv6Address(ip6) in CIDR6 and ip6 != h1.ip6, joined
    assert joined["name"] == overlay.network and joined["cidr"] == str(CIDR), joined
    # The page derives its addresses exactly as atenet.addressing does (from its MAC).
    network_id = AccessToken.decode(token).network_id
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    assert ip4 == str(ipv4_for(network_id, raw_mac, str(CIDR)).ip)
    assert ip6 == str(ipv6_for(network_id, raw_mac, str(CIDR6)).ip)
    assert page.locator("#self-ip4").inner_text() == f"{ip4}/{CIDR.prefixlen}"
    assert page.locator("#self-mac").inner_text() == mac

    # The node lists the page as a WebSocket port of the network.
    ports = n1.network(overlay.network)["ports"]
    assert [p["kind"] for p in ports].count("ws") == 1, ports

    # (a) h1's kernel pings the browser: ARP/ND and echo answered by the page's JS host.
    assert h1.host.ping(ip4, count=3, timeout=5), f"h1 got no answer from the browser {ip4}"
    assert h1.host.ping(ip6, count=3, timeout=5), f"h1 got no answer from the browser {ip6}"

    # (b) The browser pings h1 with its ping tool (window.atenet.ping, as the form does).
    rtts4 = page.evaluate("([a, n]) => window.atenet.ping(a, n)", [h1.ip4, 3])
    rtts6 = page.evaluate("([a, n]) => window.atenet.ping(a, n)", [h1.ip6, 2])
    assert len(rtts4) == 3 and all(r is not None and 0 < r < 2000 for r in rtts4), rtts4
    assert len(rtts6) == 2 and all(r is not None and 0 < r < 2000 for r in rtts6), rtts6
    out = page.locator("#ping-out").inner_text()
    assert f"reply from {h1.ip4}: seq=3" in out and "3 sent, 3 received, 0% loss" in out, out

    # The status push has drawn this page's port and the member node.
    page.wait_for_function(
        "document.querySelector('#ports tbody').textContent.includes('(this page)')",
        timeout=5_000,
    )
    page.wait_for_function(
        "document.querySelector('#members').textContent.includes(\"this page's node\")",
        timeout=5_000,
    )
    ws_port = next(p for p in n1.network(overlay.network)["ports"] if p["kind"] == "ws")
    assert ws_port["frames_in"] >= 5 + 3 and ws_port["frames_out"] >= 5 + 3, ws_port
    page.wait_for_timeout(1200)  # one more chart sample with the ping traffic in it


def test_two_tabs_are_two_hosts_and_a_revoked_token_is_refused_plainly(
    net: tuple[Overlay, Node, Client], tmp_path: Path
) -> None:
    """Tabs of one profile (one chromium context) are separate hosts with stable addresses; a
    revoked token gets a plain message and no retries, not "waiting for status…" forever."""
    overlay, n1, h1 = net
    _, token = overlay.export_key("tabs", ["n1"])
    revoked_id, revoked = overlay.export_key("gone", ["n1"])
    overlay.tok("key", "revoke", overlay.network, str(revoked_id))
    url = f"http://127.0.0.1:{HTTP_PORT}/"
    with chromium(tmp_path, ns=n1.host.ns) as context:
        a, b = context.new_page(), context.new_page()
        pages = {"a": a, "b": b}
        try:
            a.goto(f"{url}#{token}", wait_until="load")
            b.goto(f"{url}?name=kiosk-b#{token}", wait_until="load")
            ja = a.evaluate("() => window.atenet.ready")
            jb = b.evaluate("() => window.atenet.ready")
            assert ja["mac"] != jb["mac"] and ja["ip4"] != jb["ip4"], (ja, jb)
            name_a = a.evaluate("window.atenet.host")
            assert name_a.startswith("browser-") and b.evaluate("window.atenet.host") == "kiosk-b"
            for joined in (ja, jb):
                assert h1.host.ping(joined["ip4"], count=2, timeout=5), joined

            # The node names both ports and learned their MACs and addresses.
            ws = [p for p in n1.network(overlay.network)["ports"] if p["kind"] == "ws"]
            seen = {p["host"]: (p["mac"], p["ipv4"], p["label"]) for p in ws}
            assert seen == {
                name_a: (ja["mac"], ja["ip4"], "tabs"),
                "kiosk-b": (jb["mac"], jb["ip4"], "tabs"),
            }, ws
            # ... and the page's ports table shows hosts by name, with MACs.
            a.wait_for_function(
                "['kiosk-b', '(this page)', 'h1'].every("
                "t => document.querySelector('#ports tbody').textContent.includes(t))",
                timeout=5_000,
            )
            ports_text = a.locator("#ports tbody").inner_text()
            assert name_a in ports_text and jb["mac"] in ports_text and h1.mac in ports_text

            # A reloaded tab keeps its host; a duplicated tab (sessionStorage copied, as the
            # browser's "Duplicate tab" does) becomes a host of its own.
            a.reload(wait_until="load")
            assert a.evaluate("() => window.atenet.ready")["mac"] == ja["mac"]
            tab_id = a.evaluate("sessionStorage['atenet-tab-id']")
            c = pages["c"] = context.new_page()
            c.add_init_script(f"sessionStorage.setItem('atenet-tab-id', '{tab_id}')")
            c.goto(f"{url}#{token}", wait_until="load")
            jc = c.evaluate("() => window.atenet.ready")
            assert jc["mac"] not in (ja["mac"], jb["mac"]), jc
            assert "copy of another tab" in c.locator("#log").inner_text()

            # A revoked token: said plainly, once; no retries; the cards say why they are empty.
            r = pages["refused"] = context.new_page()
            sockets: list[str] = []
            r.on("websocket", lambda w: sockets.append(w.url))
            r.goto(f"{url}#{revoked}", wait_until="load")
            r.wait_for_function("document.body.dataset.state === 'refused'", timeout=10_000)
            banner = r.locator("#banner").inner_text()
            assert "this token was refused (revoked, expired or wrong)" in banner, banner
            r.wait_for_timeout(3000)  # longer than the first retry delays (1 s, 2 s)
            assert len(sockets) == 1, sockets
            assert r.evaluate("document.body.dataset.state") == "refused"
            for card in ("#members", "#ports"):
                text = r.locator(card).inner_text()
                assert "waiting for status" not in text and "refused" in text, (card, text)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            for name, page in pages.items():
                page.screenshot(path=str(ARTIFACTS / f"browser-tabs-{name}.png"), full_page=True)


def chain_leases(overlay: Overlay) -> dict[str, dict[str, Any]]:
    """The network's folded DHCP bindings, read from the chain in the store as its owner."""
    script = (
        "import asyncio, json, sys\n"
        "from atenet.cli.tok import owner_session\n"
        "async def main():\n"
        "    async with owner_session(None) as owner:\n"
        "        chain = await owner.find(sys.argv[1])\n"
        "        print(json.dumps(chain.state.leases))\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [BIN / "python", "-c", script, overlay.network],
        env=overlay.env | {"ATENET_HOME": str(overlay.owner_home)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_browser_gets_its_ipv4_by_dhcp_from_the_node_and_pings_the_gateway(
    net: tuple[Overlay, Node, Client], tmp_path: Path
) -> None:
    """The node's welcome says its gateway serves DHCP: the page asks (DISCOVER … ACK through
    the node's DhcpServer, the binding appended to the chain as a lease event), shows where
    its address came from, and pings the gateway; h1's kernel reaches the leased address."""
    overlay, n1, h1 = net
    _, token = overlay.export_key("dhcp-page", ["n1"])
    gateway = str(CIDR.network_address + 1)
    with chromium(tmp_path, ns=n1.host.ns) as context:
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            page.goto(f"http://127.0.0.1:{HTTP_PORT}/?name=dhcp-tab#{token}", wait_until="load")
            joined: dict[str, Any] = page.evaluate("() => window.atenet.ready")
            ip4, mac = joined["ip4"], joined["mac"]
            assert joined["source"] == "dhcp" and joined["gateway"] == gateway, joined
            # The server offers the hashed address first: DHCP and the static scheme agree.
            network_id = AccessToken.decode(token).network_id
            raw_mac = bytes.fromhex(mac.replace(":", ""))
            assert ip4 == str(ipv4_for(network_id, raw_mac, str(CIDR)).ip), joined
            lease = page.evaluate("window.atenet.lease")
            assert lease["server"] == gateway and lease["secs"] > 0 and lease["mtu"], lease
            assert page.locator("#self-ip4").inner_text() == f"{ip4}/{CIDR.prefixlen}"
            assert page.locator("#self-ip4-source").inner_text().startswith("DHCP, lease")
            assert page.locator("#self-gw").inner_text() == gateway
            assert "by DHCP" in page.locator("#log").inner_text()

            # The binding is one lease event in the network's chain, with the page's name.
            binding = chain_leases(overlay)[ip4]
            assert binding["mac"] == mac and binding["host"] == "dhcp-tab", binding
            assert binding["node"] == joined["node"], binding
            counters = n1.network(overlay.network)["dhcp"]
            assert counters["acks"] >= 1 and counters["bindings_applied"] >= 1, counters

            # The gateway answers the page's ping (ARP for it, then echo): the card's button
            # and the console API.
            page.click("#ping-gw")
            page.wait_for_function(
                f"document.querySelector('#ping-out').textContent.includes("
                f"'{gateway}: 4 sent, 4 received, 0% loss')",
                timeout=15_000,
            )
            rtts = page.evaluate("([a, n]) => window.atenet.ping(a, n)", [gateway, 2])
            assert len(rtts) == 2 and all(r is not None and 0 < r < 2000 for r in rtts), rtts
            handled = n1.network(overlay.network)["gateway"]["handled"]
            assert handled.get("echo4", 0) >= 6, handled

            # The leased address is a working address on the LAN.
            assert h1.host.ping(ip4, count=2, timeout=5), f"h1 got no answer from {ip4}"

            # A reload asks again (no RELEASE on unload) and gets the same binding back from
            # the table: the same address, and no new lease event in the chain.
            page.reload(wait_until="load")
            again = page.evaluate("() => window.atenet.ready")
            assert (again["ip4"], again["source"]) == (ip4, "dhcp"), again
            assert chain_leases(overlay)[ip4]["seq"] == binding["seq"]
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-dhcp.png"), full_page=True)
    assert errors == []
