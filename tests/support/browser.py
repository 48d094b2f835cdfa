"""Debian's chromium driven by Playwright, optionally inside a lab namespace.

Playwright cannot download browsers here, so it always launches ``/usr/bin/chromium``. To put
the browser inside a namespace, Playwright is given a tiny wrapper script as its executable:
``exec ip netns exec <ns> /usr/bin/chromium "$@"``. Playwright talks to chromium over inherited
pipes (``--remote-debugging-pipe``, fds 3 and 4), which pass through ``ip netns exec`` unchanged.
Inside the node's namespace ``http://127.0.0.1:PORT`` is the node itself, and a loopback origin
is a secure context, so the page gets every browser API it would get over https.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def skip_without_chromium() -> None:
    """Skip the calling test, with the reason, when Playwright or chromium is missing."""
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not installed")


def netns_wrapper(ns: str, where: Path) -> Path:
    """Write an executable that runs chromium in namespace ``ns`` with the given arguments."""
    script = where / f"chromium-in-{ns}"
    script.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    script.chmod(0o755)
    return script


@contextmanager
def chromium(
    tmp: Path, ns: str | None = None, viewport: tuple[int, int] = (1280, 900)
) -> Iterator[BrowserContext]:
    """A headless chromium context with a fresh profile in ``tmp``; closed (process gone) on exit.

    ``ns``: run the browser in that network namespace (via :func:`netns_wrapper`).
    """
    from playwright.sync_api import sync_playwright

    executable = netns_wrapper(ns, tmp) if ns else CHROMIUM
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(executable),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
            timeout=30_000,
        )
        try:
            yield context
        finally:
            context.close()
