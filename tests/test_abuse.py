"""The node under abuse, in namespaces: each attack runs as its own process next to a normal pair
of clients, and the node must keep its memory bounded and the pair's delivery at ≥ 90 % of the
baseline measured just before (interleaved, so a busy machine hurts both rounds alike).

Topology (one lab underlay, one `atenet run` node, HTTP open on the underlay):

    alice ---\\                     /--- mallory (the attack process)
              >--- node (n1) ------<
    bob -----/

The pair: alice seals numbered broadcast frames at a fixed rate with her access key, bob counts
those that arrive through the node. Attacks (docs/security.md, docs/limits.md):

- ``random_ids``: 100,000 datagrams, each for a different random network id.
- ``junk``: datagrams for the real network under mallory's key id that fail authentication.
- ``sender_churn``: valid hellos under mallory's key, each from a new sender id (a new session).
- ``mac_flood``: one valid session spraying broadcast frames from random source MACs.
- ``ws_connections``: 1,000 WebSocket connections to /ws that never say hello.
- ``half_open``: 1,000 TCP connections that send half a request head and stop.

Rates are fixed (not "as fast as Python can"), so the test measures the node's defences and not
which process the scheduler favoured on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.support.netns import Host, Lab
from tests.support.overlay import BIN, Overlay, wait_for_text

# Each round compares the pair's delivery with and without the attack: other tests running
# beside it on the same 2 cores would skew one phase and not the other.
pytestmark = [needs_root, pytest.mark.alone]

UDP_PORT = 4799
HTTP_PORT = 8080
PAIR_SECONDS = 2.0
PAIR_RATE = 1000  # frames/s from alice to bob
ATTACK_SECONDS = 4.0
TAIL_SECONDS = 0.75
"""How long bob keeps listening after alice's last frame (frames through a node under attack
arrive within milliseconds; what is later than this counts as lost)."""
MARK = b"ABUSE-PAIR"

RSS_GROWTH_MAX = 64 * 1024 * 1024
"""What one attack may add to the node's resident memory (bytes)."""

RSS_MAX = 400 * 1024 * 1024
"""The node's resident memory may never exceed this during the suite."""


@dataclass
class Abuse:
    overlay: Overlay
    node_host: Host
    node_proc: subprocess.Popen[Any]
    alice: Host
    bob: Host
    mallory: Host
    tokens: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"{self.node_host.ip}:{UDP_PORT}"

    def status(self) -> dict[str, Any]:
        """The node's operator status (over the underlay, with its operator token)."""
        import json
        import urllib.request

        token = (self.overlay.root / "n1" / "config" / "operator-token").read_text().strip()
        request = urllib.request.Request(
            f"http://{self.node_host.ip}:{HTTP_PORT}/api/status",
            headers={"Authorization": f"Bearer {token}"},
        )
        out = self.node_host.call(lambda: urllib.request.urlopen(request, timeout=10).read())
        return json.loads(out)

    def drops(self) -> str:
        """Drop counters of the node and its network, for a failure message."""
        status = self.status()
        drops = dict(status["drops"])
        for net in status["networks"]:
            for reason, count in net["drops"].items():
                drops[reason] = drops.get(reason, 0) + count
        ports = [
            (p.get("label"), p["frames_in"], p["frames_out"], p["drops"])
            for net in status["networks"]
            for p in net["ports"]
        ]
        return f"drops {drops}, send errors {status.get('send_errors')}, ports {ports}"

    def rss(self) -> int:
        for line in Path(f"/proc/{self.node_proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("node has no VmRSS")


@pytest.fixture(scope="module")
def abuse() -> Iterator[Abuse]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atn-abuse-") as tmp:
        root = Path(tmp)
        overlay = Overlay(lab, root)
        node_host = lab.add_host("n1")
        home = root / "n1"
        (home / "config").mkdir(parents=True)
        for f in ("authority.key", "deployment.json"):
            shutil.copy(overlay.owner_home / "config" / f, home / "config" / f)
        overlay.run_cli("atenet", "init", home=home)
        log = root / "n1.log"
        with log.open("ab") as out:
            proc = node_host.popen(
                [BIN / "atenet", "run", "--listen", node_host.ip, "--udp-port", str(UDP_PORT),
                 "--http-listen", node_host.ip, "--http-port", str(HTTP_PORT),
                 "--heartbeat", "1"],
                env=overlay.env | {"ATENET_HOME": str(home)}, stdout=out, stderr=out,
            )  # fmt: skip
        wait_for_text(proc, log, "serving on udp", 20)
        endpoint = f"{node_host.ip}:{UDP_PORT}"
        tokens = {}
        for who in ("alice", "bob", "mallory"):
            tokens[who] = overlay.tok(
                "key", "export", overlay.network, "--label", who, "--node", endpoint
            ).strip()
        yield Abuse(
            overlay, node_host, proc, lab.add_host("alice"), lab.add_host("bob"),
            lab.add_host("mallory"), tokens,
        )  # fmt: skip
        if proc.poll() is not None:
            pytest.fail(f"the node died during the abuse suite: {log.read_text()[-2000:]}")


# --------------------------------------------------------------------------- the normal pair


def _session(token_text: str) -> tuple[Any, Any]:
    """A UDP socket and a ClientCore that got a welcome from the node (runs in a namespace)."""
    import socket

    from atenet.client.core import ClientCore
    from atenet.overlay.token import AccessToken

    core = ClientCore(AccessToken.decode(token_text), time.time_ns())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(0.2)
    deadline = time.monotonic() + 15
    while core.config is None:
        if time.monotonic() > deadline:
            raise AssertionError("the node never welcomed a pair client")
        for packet in core.tick(time.time()):
            sock.sendto(packet, core.node)
        with contextlib.suppress(TimeoutError):
            core.datagram(sock.recv(65535), time.time())
    return sock, core


def _frame(src: bytes, payload: bytes) -> bytes:
    return b"\xff" * 6 + src + b"\x88\xb5" + payload.ljust(46, b"\0")


def pair_delivery(abuse: Abuse, round_id: int) -> int:
    """Frames of one round alice sent that bob received (of PAIR_SECONDS * PAIR_RATE)."""
    ready = threading.Barrier(2, timeout=30)
    received: list[int] = []
    errors: list[BaseException] = []
    tag = MARK + round_id.to_bytes(4, "big")

    def bob() -> None:
        sock, core = _session(abuse.tokens["bob"])
        seen: set[int] = set()
        try:
            ready.wait()
            end = time.monotonic() + PAIR_SECONDS + TAIL_SECONDS
            while time.monotonic() < end:
                for packet in core.tick(time.time()):
                    sock.sendto(packet, core.node)
                try:
                    frame = core.datagram(sock.recv(65535), time.time())
                except TimeoutError:
                    continue
                if frame is not None and frame[14 : 14 + len(tag)] == tag:
                    seen.add(int.from_bytes(frame[14 + len(tag) : 18 + len(tag)], "big"))
        finally:
            sock.close()
        received.append(len(seen))

    def alice() -> None:
        sock, core = _session(abuse.tokens["alice"])
        try:
            ready.wait()
            total = int(PAIR_SECONDS * PAIR_RATE)
            start = time.monotonic()
            for i in range(total):
                due = start + i / PAIR_RATE
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                frame = _frame(b"\x02\xaa\xaa\xaa\xaa\x01", tag + i.to_bytes(4, "big"))
                sock.sendto(core.seal_frame(frame), core.node)
        finally:
            sock.close()

    def guarded(host: Host, fn: Any) -> None:
        try:
            host.call(fn)
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    threads = [
        threading.Thread(target=guarded, args=(abuse.bob, bob)),
        threading.Thread(target=guarded, args=(abuse.alice, alice)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return received[0]


# --------------------------------------------------------------------------- the attacks

ATTACK = textwrap.dedent(
    """
    import asyncio, os, random, socket, sys, time
    kind, token_text, host, udp_port, http_port, seconds = sys.argv[1:7]
    udp_port, http_port, seconds = int(udp_port), int(http_port), float(seconds)
    from atenet.overlay.token import AccessToken
    from atenet.overlay.seal import PacketKey, Sealer, TYPE_CONTROL, TYPE_FRAME
    token = AccessToken.decode(token_text)
    end = time.monotonic() + seconds
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = (host, udp_port)

    def paced(make, rate, limit=None):
        sent, start = 0, time.monotonic()
        while time.monotonic() < end and (limit is None or sent < limit):
            for _ in range(rate // 100):
                try:
                    sock.sendto(make(), addr)
                except OSError:
                    pass
                sent += 1
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        print("sent", sent, flush=True)

    key = PacketKey(token.secret, token.key_id)
    if kind == "random_ids":
        paced(lambda: os.urandom(16) + b"\\x01\\x01" + os.urandom(48), 25000, 100000)
    elif kind == "junk":
        head = token.network_id + b"\\x01\\x01" + token.key_id.to_bytes(4, "big")
        paced(lambda: head + os.urandom(60), 20000)
    elif kind == "sender_churn":
        hello = b'{"op":"hello"}'
        def churn():
            sealer = Sealer(token.network_id, key, random.getrandbits(32), time.time_ns())
            return sealer.seal(hello, TYPE_CONTROL)
        paced(churn, 5000)
    elif kind == "mac_flood":
        sealer = Sealer(token.network_id, key, random.getrandbits(32), time.time_ns())
        for _ in range(20):
            sock.sendto(sealer.seal(b'{"op":"hello"}', TYPE_CONTROL), addr)
            time.sleep(0.05)
        def flood():
            src = bytes([2]) + os.urandom(5)
            return sealer.seal(b"\\xff" * 6 + src + b"\\x88\\xb6" + bytes(46), TYPE_FRAME)
        paced(flood, 10000)
    elif kind == "ws_connections":
        import aiohttp
        async def main():
            async with aiohttp.ClientSession() as session:
                async def one():
                    try:
                        ws = await session.ws_connect(f"http://{host}:{http_port}/ws", timeout=5)
                        await asyncio.sleep(max(0.0, end - time.monotonic()))
                        await ws.close()
                        return 1
                    except Exception:
                        return 0
                got = await asyncio.gather(*(one() for _ in range(1000)))
                print("opened", sum(got), flush=True)
        asyncio.run(main())
    elif kind == "half_open":
        socks = []
        for _ in range(1000):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((host, http_port))
                s.sendall(b"GET /api/status HTTP/1.1\\r\\nHost: x\\r\\n")
                socks.append(s)
            except OSError:
                s.close()
        print("opened", len(socks), flush=True)
        time.sleep(max(0.0, end - time.monotonic()))
        for s in socks:
            s.close()
    """
)

ATTACKS = ["random_ids", "junk", "sender_churn", "mac_flood", "ws_connections", "half_open"]


@pytest.mark.parametrize("kind", ATTACKS)
def test_attack_keeps_memory_bounded_and_the_pair_delivered(abuse: Abuse, kind: str) -> None:
    round_id = ATTACKS.index(kind) * 2
    baseline = pair_delivery(abuse, round_id)
    assert baseline >= 0.8 * PAIR_SECONDS * PAIR_RATE, f"no usable baseline: {baseline}"
    rss_before = abuse.rss()
    attacker = abuse.mallory.popen(
        [sys.executable, "-c", ATTACK, kind, abuse.tokens["mallory"], abuse.node_host.ip,
         str(UDP_PORT), str(HTTP_PORT), str(ATTACK_SECONDS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # the attack is under way before the pair starts
        during = pair_delivery(abuse, round_id + 1)
        rss_peak = abuse.rss()
        out, err = attacker.communicate(timeout=ATTACK_SECONDS + 60)
    finally:
        abuse.overlay.lab.stop_process(attacker)
    assert attacker.returncode == 0, f"the attack itself failed: {err[-2000:]}"
    rss_after = abuse.rss()
    growth = max(rss_peak, rss_after) - rss_before
    print(
        f"{kind}: attack {out.strip()}; pair {during}/{baseline} frames "
        f"({during / baseline:.0%}); node RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert abuse.node_proc.poll() is None, "the node died"
    assert during >= 0.9 * baseline, (
        f"{kind}: the pair got {during} of {baseline} frames; {abuse.drops()}"
    )
    assert growth <= RSS_GROWTH_MAX, f"{kind}: node memory grew by {growth >> 20} MiB"
    assert rss_after <= RSS_MAX
