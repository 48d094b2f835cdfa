"""IGMP/MLD snooping with real kernels (docs/learning.md, "Multicast"): three `atenet run`
nodes, one `tok connect` host on each. A host that joins a group with a socket (the kernel
sends the IGMPv3 / MLDv2 report) gets UDP sent to the group by a host on another node; the
third host, which did not join, gets none of it — its node and port counters prove it. Ping
and IPv6 neighbour discovery keep working with snooping on, and `tok fdb` lists the group.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import needs_root
from tests.support.netns import Host, Lab
from tests.support.overlay import BIN, HTTP_PORT, Client, Node, Overlay

pytestmark = [needs_root]

SENT = 40
GROUP4, GROUP6, PORT = "239.7.7.7", "ff15::7777", 47000

# A receiver: join (or not), count datagrams for a while, print the count.
RECEIVE = r"""
import socket, struct, sys, time
family, group, port, dev, join, wait = sys.argv[1:7]
v6 = family == "6"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if v6 else "0.0.0.0", int(port)))
if join == "1":
    if v6:
        index = struct.pack("@I", socket.if_nametoindex(dev))
        mreq = socket.inet_pton(socket.AF_INET6, group) + index
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        mreq = struct.pack("@4sii", socket.inet_aton(group), 0, socket.if_nametoindex(dev))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
s.settimeout(0.2)
end, got = time.monotonic() + float(wait), 0
while time.monotonic() < end:
    try:
        s.recv(2048)
        got += 1
    except TimeoutError:
        pass
print(got, flush=True)
"""

SEND = r"""
import socket, struct, sys, time
family, group, port, dev, count = sys.argv[1:6]
v6 = family == "6"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
index = socket.if_nametoindex(dev)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
else:
    mreqn = struct.pack("@4s4si", bytes(4), bytes(4), index)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
for i in range(int(count)):
    s.sendto(b"group %d" % i, (group, int(port)))
    time.sleep(0.01)
"""


def tap(client: Client) -> str:
    """The name of the client's TAP device (the interface holding its IPv4)."""
    out = client.host.run(["ip", "-j", "addr", "show"]).stdout
    for link in json.loads(out):
        if any(a.get("local") == client.ip4 for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise AssertionError(f"no interface with {client.ip4} in {client.name}: {out}")


def port_out(node: Node, network: str) -> tuple[int, int]:
    """(frames from peers, frames out of its client ports) of ``node``."""
    net = node.network(network)
    return net["frames_from_peers"], sum(p["frames_out"] for p in net["ports"])


def receive(host: Host, family: str, group: str, dev: str, join: bool, wait: float):
    proc = host.popen(
        [sys.executable, "-c", RECEIVE, family, group, str(PORT), dev, "1" if join else "0",
         str(wait)],
        stdout=-1, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_group_reaches_the_host_that_joined_and_no_other() -> None:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mcast-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1, n2, n3 = (overlay.add_node(n) for n in ("n1", "n2", "n3"))
        a = overlay.add_client("ha", ["n1"])
        b = overlay.add_client("hb", ["n2"])
        c = overlay.add_client("hc", ["n3"])
        devs = {x.name: tap(x) for x in (a, b, c)}
        # Unicast and neighbour discovery with snooping on (ARP / ND are flooded as before).
        for addr in (c.ip4, c.ip6):
            deadline = time.monotonic() + 20
            while not a.host.ping(addr, count=1, timeout=1):
                assert time.monotonic() < deadline, f"{addr} never answered"

        # Both families at once: a joined receiver on hb and a silent one on hc for each.
        families = (("4", GROUP4), ("6", GROUP6))
        joined = [receive(b.host, f, g, devs["hb"], True, 3.0) for f, g in families]
        silent = [receive(c.host, f, g, devs["hc"], False, 3.0) for f, g in families]
        time.sleep(0.5)  # the kernel's unsolicited reports reach every node
        before = port_out(n3, overlay.network)
        for family, group in families:
            a.host.run(
                [sys.executable, "-c", SEND, family, group, str(PORT), devs["ha"], str(SENT)]
            )
        got = [int(p.stdout.readline()) for p in joined]  # type: ignore[union-attr]
        assert [int(p.stdout.readline()) for p in silent] == [0, 0]  # type: ignore[union-attr]
        after = port_out(n3, overlay.network)
        assert all(p.wait(5) == 0 for p in joined + silent)
        assert got == [SENT, SENT], got
        # n3 and its host saw (almost) none of the 2 × SENT: a query answer or an RA at most.
        assert after[0] - before[0] < SENT // 4, (before, after)
        assert after[1] - before[1] < SENT // 4, (before, after)

        net1 = n1.network(overlay.network)
        groups = {g["group"]: g for g in net1["mcast_groups"]}
        n2_id = n2.status()["node"]
        assert groups[GROUP4]["nodes"] == [n2_id] and groups[GROUP6]["nodes"] == [n2_id], groups
        assert net1["mcast_counters"]["selective"] >= 2 * SENT
        # hb's sockets closed: its kernel left both groups, and n2 dropped its port at once
        # (n1 keeps n2 until the membership times out: other hosts there might still listen).
        net2 = n2.network(overlay.network)
        assert net2["mcast_groups"] == [] and net2["mcast_counters"]["leaves"] >= 2, net2
        fdb = n1.host.run(
            [BIN / "tok", "fdb", overlay.network, "--node", f"http://127.0.0.1:{HTTP_PORT}"],
            env=overlay.env | {"ATENET_HOME": str(n1.home)},
        ).stdout
        assert GROUP4 in fdb and GROUP6 in fdb and "multicast groups" in fdb, fdb
