"""`tok hosts` on real processes: three `tok connect` hosts (each with its own host name, in its
own UTS and network namespace) on two `atenet run` nodes; the owner lists them by name with the
addresses and MACs the hosts configured and the node each is on."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, Overlay

pytestmark = [needs_root]


def test_tok_hosts_lists_three_hosts_on_two_nodes_by_name() -> None:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-hosts-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1, n2 = overlay.add_node("n1"), overlay.add_node("n2")
        clients = {
            "alpha": overlay.add_client("ha", ["n1"], hostname="alpha"),
            "beta": overlay.add_client("hb", ["n1"], hostname="beta.example"),
            "gamma": overlay.add_client("hc", ["n2"], hostname="gamma"),
        }
        node_of = {"alpha": n1.status()["node"], "beta": n1.status()["node"]}
        node_of["gamma"] = n2.status()["node"]
        names = {"alpha": "alpha", "beta": "beta.example", "gamma": "gamma"}
        deadline = time.monotonic() + 30
        while True:  # heartbeats every second; MACs are learned from each host's first frame
            out = overlay.tok("hosts", overlay.network, "--json")
            listed = {h["name"]: h for h in json.loads(out)["hosts"]}
            if set(listed) == set(names.values()) and all(h["mac"] for h in listed.values()):
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
        for key, client in clients.items():
            h = listed[names[key]]
            assert h["label"] == client.name  # Overlay.export_key labels keys by host
            assert h["host"] == names[key]
            assert h["mac"] == client.mac
            assert h["ipv4"] == client.ip4 and h["ipv6"] == client.ip6
            assert h["node"] == node_of[key], (key, h)
            assert h["kind"] == "udp" and not h["stale"]
            assert time.time() - h["last_seen"] < 30

        # The text form: one line per host with its name, IP, MAC and node.
        text = overlay.tok("hosts", overlay.network)
        lines = text.splitlines()
        assert lines[0].split()[:3] == ["NAME", "LABEL", "IPV4"], text
        for key, client in clients.items():
            (line,) = [ln for ln in lines if ln.startswith(names[key] + " ")]
            for want in (client.ip4, client.mac, node_of[key]):
                assert want in line, (want, line)

        # An unknown network: a one-line error and exit 1.
        proc = subprocess.run(
            [BIN / "tok", "hosts", "nosuchnet"],
            env=overlay.env | {"ATENET_HOME": str(overlay.owner_home)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
