"""IGMP/MLD snooping with real kernels: three `atenet run` nodes, one `tok connect` host on each.

The host on n2 joins an IPv4 and an IPv6 group with ordinary sockets (IP_ADD_MEMBERSHIP,
IPV6_JOIN_GROUP: the kernel sends the IGMPv3/MLDv2 reports); the host on n1 sends UDP to both
groups. The joined host gets every datagram; the third node and its host, which joined nothing,
get (almost) none of them — on the flooding switch they got all. Ping and neighbour discovery
keep working with snooping on."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import needs_root
from tests.support.netns import Lab
from tests.support.overlay import Overlay
from tests.test_learning_lab import counters

pytestmark = [needs_root]

GROUP4, GROUP6, PORT, COUNT = "239.7.7.7", "ff15::7:7", 5007, 50
DEV = "atenet0"  # tok connect's default device

RECEIVER = r"""
import socket, struct, sys, time
family, group, port, dev, seconds, want = sys.argv[1:7]
index = socket.if_nametoindex(dev)
if family == "4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, int(port)))
    mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("i", index)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, int(port), 0, index))
    mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("I", index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
print("joined", flush=True)
s.settimeout(0.2)
got, end = 0, time.monotonic() + float(seconds)
while time.monotonic() < end and got < int(want):
    try:
        s.recv(2048)
        got += 1
    except TimeoutError:
        pass
print("got", got, flush=True)
"""

SENDER = r"""
import socket, struct, sys, time
family, group, port, dev, count = sys.argv[1:6]
index = socket.if_nametoindex(dev)
if family == "4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mreq = struct.pack("4s4si", bytes(4), bytes(4), index)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
    to = (group, int(port))
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    to = (group, int(port), 0, index)
for i in range(int(count)):
    s.sendto(b"multicast %d" % i, to)
    time.sleep(0.01)
"""


def test_a_group_reaches_only_the_host_that_joined_it() -> None:
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-mcast-") as tmp:
        overlay = Overlay(lab, Path(tmp))
        n1, n2, n3 = (overlay.add_node(n) for n in ("n1", "n2", "n3"))
        a = overlay.add_client("ha", ["n1"])
        b = overlay.add_client("hb", ["n2"])
        overlay.add_client("hc", ["n3"])
        receivers = []
        for family, group in (("4", GROUP4), ("6", GROUP6)):
            proc = b.host.popen(
                [sys.executable, "-c", RECEIVER, family, group, str(PORT), DEV, "10", str(COUNT)],
                stdout=-1, stderr=-1, text=True,
            )  # fmt: skip
            assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
            receivers.append(proc)
        # hb's reports flood to every node: n1 learns that n2 has listeners for both groups.
        deadline = time.monotonic() + 15
        while n1.network(overlay.network)["mcast"].get("groups", 0) < 2:
            assert time.monotonic() < deadline, n1.network(overlay.network)["mcast"]
            time.sleep(0.1)
        before = counters(n3, overlay.network)
        for family, group in (("4", GROUP4), ("6", GROUP6)):
            a.host.run([sys.executable, "-c", SENDER, family, group, str(PORT), DEV, str(COUNT)])
        after = counters(n3, overlay.network)
        for proc in receivers:
            out, err = proc.communicate(timeout=20)
            assert re.search(rf"got {COUNT}\b", out), (out, err)
        # n3 and its host saw (almost) none of the 2 × COUNT datagrams: what remains is the
        # hosts' own background (router solicitations, reports), still flooded.
        delta = [y - x for x, y in zip(before, after, strict=True)]
        assert delta[1] < COUNT // 5 and delta[2] < COUNT // 5, delta
        # The receivers closed their sockets: the kernel's leaves ended hb's memberships at once.
        deadline = time.monotonic() + 10
        while (mcast := n2.network(overlay.network)["mcast"])["groups"]:
            assert time.monotonic() < deadline, mcast
            time.sleep(0.1)
        assert mcast["counters"]["joins"] >= 2 and mcast["counters"]["leaves"] >= 2, mcast
        # Neighbour discovery and ping still work with snooping on.
        assert a.host.ping(b.ip4, count=2, timeout=2)
        out = a.host.run(["ping", "-6", "-n", "-c", "2", "-W", "2", b.ip6], check=False).stdout
        assert " 0% packet loss" in out, out
