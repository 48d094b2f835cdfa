"""Whether the compiled fast path runs is visible where operators look: `atenet run`'s start
log, ``/api/status`` (``fastpath``), ``/metrics`` (``atenet_fastpath``), and `tok status` for
each `tok connect` (its state file). Real processes, both ways (default and ``ATENET_PURE=1``);
these run whether or not the module is built (then the answer is why not)."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, needs_root
from tests.support.overlay import BIN, Overlay
from tests.test_atenet_cli import Running, atenet, cli_env, free_port

BUILT = importlib.util.find_spec("atenet._fast") is not None
PURE_STATUS = "off (ATENET_PURE is set)"


def expected_default() -> str:
    return "on" if BUILT else "not built"


def matches(status: str, want: str) -> bool:
    return status == want or (want == "not built" and status.startswith("not built ("))


def env_for(home: Path, pure: bool) -> dict[str, str]:
    env = cli_env(home)
    env.pop("ATENET_PURE", None)
    if pure:
        env["ATENET_PURE"] = "1"
    return env


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


@pytest.mark.parametrize("pure", [False, True], ids=["default", "ATENET_PURE=1"])
def test_atenet_run_logs_and_serves_whether_the_fast_path_is_on(tmp_path: Path, pure: bool) -> None:
    home = tmp_path / "h"
    assert atenet(home, "init").returncode == 0
    http = free_port()
    node = Running(
        [VENV_BIN / "atenet", "run", "--json", "--listen", "127.0.0.1", "--udp-port", "0",
         "--http-port", str(http)],
        env_for(home, pure), tmp_path,
    )  # fmt: skip
    try:
        node.json()
        want = PURE_STATUS if pure else expected_default()
        lines = [line for line in node.stderr.splitlines() if line.startswith("fast path: ")]
        status = lines[0].removeprefix("fast path: ").split("; small packets sealed by ")[0]
        assert len(lines) == 1 and matches(status, want), lines
        status = json.loads(get(f"http://127.0.0.1:{http}/api/status"))
        assert matches(status["fastpath"], want), status["fastpath"]
        gauge = 0.0 if pure or not BUILT else 1.0
        assert f"atenet_fastpath {gauge}" in get(f"http://127.0.0.1:{http}/metrics").decode()
    finally:
        assert node.stop() == 0


@pytest.fixture
def overlay() -> Iterator[Overlay]:
    from tests.support.netns import Lab

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-fast-") as tmp:
        yield Overlay(lab, Path(tmp))


@needs_root
def test_tok_status_shows_each_sides_path_with_a_pure_node_and_a_fast_client(
    overlay: Overlay,
) -> None:
    """A node forced pure and a client on the default path work together (the packet format
    is one), and `tok status` says which runs where."""
    overlay.env = {k: v for k, v in overlay.env.items() if k != "ATENET_PURE"}
    default_env = overlay.env
    overlay.env = default_env | {"ATENET_PURE": "1"}
    node = overlay.add_node("n1")
    overlay.env = default_env
    a = overlay.add_client("a", ["n1"])
    overlay.env = default_env | {"ATENET_PURE": "1"}
    b = overlay.add_client("b", ["n1"])
    overlay.env = default_env
    assert matches(node.status()["fastpath"], PURE_STATUS)
    out = a.host.run(["ping", "-c", "3", "-W", "5", b.ip4], check=False)
    assert out.returncode == 0, out.stdout
    for client, want in ((a, expected_default()), (b, PURE_STATUS)):
        env = os.environ | {"ATENET_HOME": str(overlay.root / client.name)}
        deadline = time.monotonic() + 20
        while True:
            res = client.host.run([BIN / "tok", "status", "--json"], env=env, check=False)
            conns = json.loads(res.stdout)["connections"] if res.stdout else []
            if conns or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        (conn,) = conns
        assert matches(conn["fastpath"], want), conn
        text = client.host.run([BIN / "tok", "status"], env=env, check=False).stdout
        assert f"fast path {conn['fastpath']}" in text
