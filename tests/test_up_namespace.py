"""The README's first command, as a new user runs it on a machine with a real (non-loopback)
default route, and the `tok connect` command it prints, copied as is onto two other machines.

    server: `atenet up` in a fresh home (default route via the LAN's gateway)
    a, b:   the printed `ATENET_TOKEN=... tok connect` line, run by a shell; then a pings b

Before the advertised address was fixed, the token named the server's loopback and neither
client could connect."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.conftest import VENV_BIN, needs_root
from tests.support.netns import Lab
from tests.support.overlay import wait_for_text

pytestmark = [needs_root]


def test_printed_tok_connect_line_works_from_two_other_machines(lab: Lab, tmp_path: Path) -> None:
    server = lab.add_host("server")
    lab.give_default_route(server)
    env = os.environ | {"ATENET_HOME": str(tmp_path / "fresh-home")}
    env.pop("ATENET_STORE", None)
    env.pop("ATENET_TOKEN", None)
    up_log = tmp_path / "up.out"
    with up_log.open("wb") as out:
        up = server.popen([VENV_BIN / "atenet", "up"], env=env, stdout=out, stderr=out)
    line = wait_for_text(up, up_log, "tok connect", 60)
    printed = up_log.read_text()
    assert f"udp {server.ip}:4799" in printed, printed
    assert f"tokens name this node as {server.ip}:4799" in printed
    command = line.strip()
    assert re.fullmatch(r"ATENET_TOKEN=atn1\.[A-Za-z0-9_-]+ tok connect", command), command

    ips = {}
    for name in ("a", "b"):
        host = lab.add_host(name)
        log = tmp_path / f"{name}.log"
        client_env = os.environ | {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "ATENET_HOME": str(tmp_path / f"home-{name}"),
        }
        client_env.pop("ATENET_TOKEN", None)
        with log.open("wb") as out:
            proc = host.popen(["sh", "-c", command], env=client_env, stdout=out, stderr=out)
        connected = wait_for_text(proc, log, "connected to", 60)
        assert f"via node {server.ip}:4799" in connected, connected
        # "connected to NET via node H:P: DEV IPV4 IPV6 mac MAC mtu N"
        words = connected.split()
        ips[name] = (host, words[words.index("mac") - 2].split("/")[0])

    a_host, _ = ips["a"]
    _, b_ip = ips["b"]
    deadline = time.monotonic() + 30
    while not a_host.ping(b_ip, count=2, timeout=3):
        assert time.monotonic() < deadline, f"a never reached b at {b_ip}"
