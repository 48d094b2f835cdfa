"""The page's "Reach the LAN" card in a real browser: chromium fetches over a mio session.

A loopback node (no namespaces, no root), two `tok serve` processes as the LAN's hosts (an HTTP
responder through --exec, an echo server through --echo), and Debian's chromium opening the
node's page. The page opens its own mio session and, through the node's stack, GETs a page from
the responder (the HTML it returns is shown as text, never run), passes an echo test, and says
in one line why a refused connection failed. Screenshot: ``test-artifacts/browser-mio.png``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT
from tests.support.browser import chromium, skip_without_chromium
from tests.support.loopback_node import LoopbackNode
from tests.test_mio_cli import Server, serve

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARTIFACTS = ROOT / "test-artifacts"

RESPONDER = r"""
import sys
request = sys.stdin.readline().split()
while sys.stdin.readline() not in ("\r\n", "\n", ""):
    pass
body = "<b id=injected>hello from a mio host</b> path=" + (request[1] if len(request) > 1 else "?")
sys.stdout.write(
    "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
    % (len(body.encode()), body)
)
"""


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[tuple[LoopbackNode, Path, str]]:
    skip_without_chromium()
    with LoopbackNode(tmp_path / "home", "lan") as node:
        token = node.token("page")
        token_file = tmp_path / "lan.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        yield node, token_file, token


def test_the_page_fetches_and_echoes_through_a_mio_session(
    lan: tuple[LoopbackNode, Path, str], tmp_path: Path
) -> None:
    node, token_file, token = lan
    script = tmp_path / "responder.py"
    script.write_text(RESPONDER)
    servers: list[Server] = []
    try:
        web, web_ip = serve(node, token_file, "8000", "--exec", f"{sys.executable} {script}")
        servers.append(web)
        echo, echo_ip = serve(node, token_file, "7", "--echo")
        servers.append(echo)
        problems: list[str] = []
        with chromium(tmp_path) as context:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            try:
                run_checks(page, node, token, web_ip, echo_ip)
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser-mio.png"), full_page=True)
        assert problems == []
    finally:
        for server in servers:
            server.stop()


def run_checks(page: Page, node: LoopbackNode, token: str, web_ip: str, echo_ip: str) -> None:
    page.goto(f"{node.http}/#{token}", wait_until="load")
    page.wait_for_function("document.body.dataset.state === 'connected'", timeout=15_000)

    # Nothing listens on port 9: one line saying so, in the card.
    error = page.evaluate(
        "(u) => window.atenet.fetch(u).then(() => 'no error', (e) => e.message)",
        f"http://{echo_ip}:9/",
    )
    assert "connection refused" in error, error
    status = page.locator("#lan-status").inner_text()
    assert status.startswith("fetch failed: connection refused"), status
    assert page.locator("#lan-status.bad").count() == 1

    # The echo test: 200 kB of random bytes there and back, compared.
    result = page.evaluate("([t, n]) => window.atenet.echo(t, n)", [f"{echo_ip}:7", 200_000])
    assert result["same"] is True and result["received"] == 200_000, result
    assert "echo OK: 200,000 bytes sent" in page.locator("#lan-status").inner_text()

    # GET through the page's form (last: the screenshot shows it): status, size, body as text.
    page.fill("#fetch-url", f"http://{web_ip}:8000/a?b=<c>")
    page.click("#fetch-go")
    page.wait_for_function(
        "document.querySelector('#lan-status').textContent.startsWith('HTTP 200')"
    )
    status = page.locator("#lan-status").inner_text()
    assert "text/html" in status and "from " in status, status
    body = page.locator("#lan-body").inner_text()
    assert body.startswith("<b id=injected>hello from a mio host</b> path=/a?b=%3Cc%3E"), body
    assert page.locator("#injected").count() == 0  # shown as text, not parsed as HTML

    # The node lists the page's mio session as a port named after the page.
    page.wait_for_function(
        "document.querySelector('#ports tbody').textContent.includes('-mio')", timeout=10_000
    )
