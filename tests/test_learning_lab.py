"""The learning switch with real kernels: three `atenet run` nodes, one `tok connect` host on
each. After the first exchange (ARP / neighbour discovery, flooded), unicast between two hosts
reaches only the node and port of its destination: the third node's counters prove it. A
`tok monitor` on the third node still sees that unicast (a mirror port, named in its node's
heartbeat)."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import BIN, Node, Overlay, wait_for_text

pytestmark = [needs_root]

PINGS = 100


def counters(node: Node, network: str) -> tuple[int, int, int]:
    """(frames to peers, frames from peers, frames out of its client ports) of ``node``."""
    net = node.network(network)
    out = sum(p["frames_out"] for p in net["ports"] if p["kind"] == "udp")
    return net["frames_to_peers"], net["frames_from_peers"], out


def test_unicast_between_two_hosts_reaches_only_their_nodes() -> None:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-learn-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1, n2, n3 = (overlay.add_node(n) for n in ("n1", "n2", "n3"))
        a = overlay.add_client("ha", ["n1"])
        b = overlay.add_client("hb", ["n2"])
        overlay.add_client("hc", ["n3"])
        for addr in (b.ip4, b.ip6):  # the first exchange: ARP / ND, flooded to every node
            deadline = time.monotonic() + 30
            while not a.host.ping(addr, count=1, timeout=1):
                assert time.monotonic() < deadline, f"{addr} never answered"
        before = {n.name: counters(n, overlay.network) for n in (n1, n2, n3)}
        for addr in (b.ip4, b.ip6):
            out = a.host.run(
                ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "1", addr], check=False
            ).stdout
            match = re.search(r"(\d+) received", out)
            assert match and int(match.group(1)) == PINGS, out
        after = {n.name: counters(n, overlay.network) for n in (n1, n2, n3)}
        delta = {k: [y - x for x, y in zip(before[k], after[k], strict=True)] for k in before}
        # 2 × PINGS requests n1 → n2 and as many replies back, each sealed to the one node.
        assert delta["n1"][0] >= 2 * PINGS and delta["n2"][0] >= 2 * PINGS, delta
        # The third node and its host saw almost none of it: what remains is the hosts' own
        # background multicast (IPv6 router solicitations, MLD reports), still flooded.
        assert delta["n3"][1] < 2 * PINGS // 10, delta
        assert delta["n3"][2] < 2 * PINGS // 10, delta
        learned = n1.network(overlay.network)
        assert learned["fdb"] >= 2 and learned["fdb_counters"]["entries"] == learned["fdb"]

        # A monitor on n3 (a token naming only n3): its node's heartbeat says "mirror", and
        # n1 and n2 then also send it the unicast between their hosts.
        _key, token = overlay.export_key("mon", ["n3"])
        token_file = Path(tmp) / "mon.token"
        token_file.write_text(token)
        mon = lab.add_host("mon")
        err, out_path = Path(tmp) / "mon.err", Path(tmp) / "mon.out"
        with err.open("ab") as stderr, out_path.open("ab") as stdout:
            proc = mon.popen(
                [BIN / "tok", "monitor", "--token-file", str(token_file)],
                env=overlay.env | {"ATENET_HOME": str(Path(tmp) / "mon")},
                stdout=stdout, stderr=stderr,
            )  # fmt: skip
        try:
            wait_for_text(proc, err, "monitoring", 30)
            want = (
                f"IPv4 {a.ip4} -> {b.ip4} ICMP echo request",  # sent by n1's host
                f"IPv4 {b.ip4} -> {a.ip4} ICMP echo reply",  # sent by n2's host
            )
            deadline = time.monotonic() + 30  # heartbeats every second in the overlay
            while not all(w in out_path.read_text() for w in want):
                assert time.monotonic() < deadline, out_path.read_text()[-2000:]
                a.host.ping(b.ip4, count=1, timeout=1)
                time.sleep(0.2)
            mirror = [p for p in n3.network(overlay.network)["ports"] if p.get("mirror")]
            assert len(mirror) == 1 and mirror[0]["frames_in"] == 0
        finally:
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=10) == 0
