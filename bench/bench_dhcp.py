"""DHCP on a real node: how fast lease events reach the chain, and the REQUEST → ACK latency.

    .venv/bin/python bench/bench_dhcp.py                     # SQLite store, 15 s sprays
    .venv/bin/python bench/bench_dhcp.py --store both        # SQLite, then a 3-server NATS
    .venv/bin/python bench/bench_dhcp.py --seconds 20 --json /tmp/dhcp.json

A real `atenet run` on 127.0.0.1 serves one network (a /16, so the pool never fills); clients
are the project's own sans-I/O ``ClientCore`` over UDP sockets (a `tok connect` without the
TAP), sending DHCP frames built with ``atenet.wire.dhcp``. No root, no namespaces. Each phase
starts a fresh node process on the same store (the DHCP server's rate-limit buckets start full):

1. **honest**: DISCOVER → OFFER → REQUEST → ACK for 30 new MACs, 5 per client port over 6
   ports (within every bucket's burst), one at a time. Times: DISCOVER → OFFER (answered from
   memory: the baseline) and REQUEST → ACK (the binding is appended to the chain first, then
   the ACK sent). Then 100 renewals of one binding (REQUEST with ``ciaddr``, unicast to the
   gateway), lease events in the chain counted before and after.
2. **spray, 1 port**: one client port sends DISCOVER + REQUEST (INIT-REBOOT, for the MAC's
   hashed address) from a new random MAC each, as fast as one Python process can, for
   ``--seconds``; meanwhile an honest client on another key does one full exchange every 2 s.
3. **spray, 64 ports of one key**: the same from 64 ports of one access key (the per-key cap
   on one node), round-robin.
4. **spray, reconnecting**: one port at a time; after every 10 REQUESTs it says ``bye`` and
   opens a new session (a new sender id: a new port).

Lease events are counted in the chain itself (the store's event kinds and times, read after
each phase), with the DHCP server's counters from /api/status and the node's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from atenet import addressing  # noqa: E402
from atenet.chain.event import Kind, decode_stored  # noqa: E402
from atenet.client.core import ClientCore  # noqa: E402
from atenet.errors import DecodeError  # noqa: E402
from atenet.overlay.token import AccessToken  # noqa: E402
from atenet.router.dhcp import PORT_BURST, PORT_RATE, SERVER_BURST, SERVER_RATE  # noqa: E402
from atenet.wire import dhcp as d  # noqa: E402
from atenet.wire.ethernet import BROADCAST_MAC  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CIDR = "10.88.0.0/16"
ZERO = IPv4Address(0)
BCAST = IPv4Address("255.255.255.255")
COUNTERS = (
    "discovers", "offers", "requests", "binds", "bind_rate_limited", "acks", "naks",
    "offers_evicted", "pending_full", "bindings_applied",
)  # fmt: skip


# --------------------------------------------------------------------------- frames


def random_mac(rng: random.Random) -> bytes:
    """A unicast, locally administered MAC."""
    first = (rng.randrange(256) & 0xFC) | 0x02
    return bytes([first]) + rng.randbytes(5)


def client_frame(
    mac: bytes,
    kind: int,
    xid: int,
    *,
    requested: IPv4Address | None = None,
    server: IPv4Address | None = None,
    ciaddr: IPv4Address = ZERO,
    dst_mac: bytes = BROADCAST_MAC,
    dst_ip: IPv4Address = BCAST,
) -> bytes:
    options = {d.OPT_MESSAGE_TYPE: bytes((kind,))}
    if requested is not None:
        options[d.OPT_REQUESTED_IP] = requested.packed
    if server is not None:
        options[d.OPT_SERVER_ID] = server.packed
    msg = d.DhcpMessage(op=d.BOOTREQUEST, xid=xid, chaddr=mac, ciaddr=ciaddr, options=options)
    return d.dhcp_frame(
        msg.emit(),
        src_mac=mac,
        dst_mac=dst_mac,
        src_ip=ciaddr,
        dst_ip=dst_ip,
        src_port=d.CLIENT_PORT,
        dst_port=d.SERVER_PORT,
    )


def server_reply(frame: bytes) -> d.DhcpMessage | None:
    """The DHCP reply a frame carries (UDP 67 → 68), or None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    at = 14 + (frame[14] & 0x0F) * 4
    if frame[at : at + 4] != b"\x00\x43\x00\x44":
        return None
    try:
        msg = d.DhcpMessage.parse(frame[at + 8 :])
    except DecodeError:  # not a well-formed reply: simply not ours
        return None
    return msg if msg.op == d.BOOTREPLY else None


# --------------------------------------------------------------------------- a client port


class Port:
    """One client session (a node port): ClientCore over its own UDP socket."""

    def __init__(self, token: str) -> None:
        self.token = AccessToken.decode(token)
        self.core = ClientCore(self.token, time.time_ns(), host="bench")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setblocking(False)
        self.node = self.core.node

    def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.core.config is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not welcome the client")
            for packet in self.core.tick(time.time()):
                self.sock.sendto(packet, self.node)
            self.frames(0.05)
        return self.core.config

    def send(self, frame: bytes) -> None:
        self.core.sealer.advance(time.time_ns())  # counters follow the clock, as tok's do
        self.sock.sendto(self.core.seal_frame(frame), self.node)

    def frames(self, wait: float = 0.0) -> list[bytes]:
        """Frames that arrived (waiting up to ``wait`` s for the first one)."""
        out: list[bytes] = []
        if wait > 0:
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(65535)
                frame = self.core.datagram(data, time.time())
                if frame is not None:
                    out.append(frame)
            except (TimeoutError, BlockingIOError):
                pass
            finally:
                self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return out
            frame = self.core.datagram(data, time.time())
            if frame is not None:
                out.append(frame)

    def idle(self, seconds: float) -> None:
        """Wait, reading (and dropping) what arrives: a flooded port must keep up."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.keepalive()
            self.frames(min(left, 0.2))

    def keepalive(self) -> None:
        for packet in self.core.tick(time.time()):
            self.sock.sendto(packet, self.node)

    def bye(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(self.core.control("bye", time.time()), self.node)
        self.sock.close()

    def wait_reply(self, xid: int, kinds: tuple[int, ...], timeout: float) -> d.DhcpMessage | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.keepalive()
            for frame in self.frames(min(left, 0.5)):
                msg = server_reply(frame)
                if msg is not None and msg.xid == xid and msg.message_type in kinds:
                    return msg
        return None


def ask(port: Port, frame: bytes, xid: int, kinds: tuple[int, ...], tries: int, every: float):
    """Send ``frame`` until a reply of ``kinds`` comes (at most ``tries`` sends, ``every`` s
    apart, as a client retransmits); returns (reply or None, sends)."""
    for n in range(1, tries + 1):
        port.send(frame)
        reply = port.wait_reply(xid, kinds, every)
        if reply is not None:
            return reply, n
    return None, tries


def exchange(port: Port, mac: bytes, gateway: IPv4Address, tries: int = 1) -> dict:
    """One full DORA; times in ms from the first send (None: no answer after ``tries`` sends
    1 s apart, or 3 s for a single try)."""
    xid = random.getrandbits(32)
    every = 3.0 if tries == 1 else 1.0
    t0 = time.perf_counter()
    discover = client_frame(mac, d.DHCPDISCOVER, xid)
    offer, n1 = ask(port, discover, xid, (d.DHCPOFFER,), tries, every)
    t1 = time.perf_counter()
    if offer is None:
        return {"offer_ms": None, "ack_ms": None, "result": "no offer", "sends": n1}
    request = client_frame(mac, d.DHCPREQUEST, xid, requested=offer.yiaddr, server=gateway)
    t2 = time.perf_counter()
    ack, n2 = ask(port, request, xid, (d.DHCPACK, d.DHCPNAK), tries, every)
    t3 = time.perf_counter()
    result = "no ack" if ack is None else ("ack" if ack.message_type == d.DHCPACK else "nak")
    return {
        "offer_ms": (t1 - t0) * 1e3,
        "ack_ms": (t3 - t2) * 1e3 if ack is not None else None,
        "result": result,
        "ip": str(offer.yiaddr),
        "sends": n1 + n2,
    }


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to 127.0.0.1:``port`` (its
    receive buffer was full): the last column of /proc/net/udp."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}":
            return int(fields[-1])
    return 0


def udp_receive_errors() -> int:
    """The kernel's UDP receive-buffer drops (RcvbufErrors), machine-wide."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    head, values = [ln for ln in lines if ln[0] == "Udp:"][:2]
    return int(values[head.index("RcvbufErrors")])


# --------------------------------------------------------------------------- the sprayers


def spray(token: str, ports: int, seconds: float, reconnect_every: int, out: Any) -> None:
    """DISCOVER + REQUEST (INIT-REBOOT, the MAC's hashed address) per random MAC, as fast as
    one process can, round-robin over ``ports`` sessions; with ``reconnect_every`` > 0 a single
    session is replaced by a new one after that many REQUESTs. Runs in its own process."""
    rng = random.Random(os.getpid())
    network_id = AccessToken.decode(token).network_id
    sessions = [Port(token) for _ in range(ports)]
    for s in sessions:
        s.connect()
    sessions_opened = len(sessions)
    sent = 0
    end = time.monotonic() + seconds
    i = 0
    last_tick = time.monotonic()
    while time.monotonic() < end:
        mac = random_mac(rng)
        ip = addressing.ipv4_for(network_id, mac, CIDR).ip
        xid = rng.getrandbits(32)
        s = sessions[i % len(sessions)]
        s.send(client_frame(mac, d.DHCPDISCOVER, xid))
        s.send(client_frame(mac, d.DHCPREQUEST, xid, requested=ip))
        sent += 1
        i += 1
        if reconnect_every and sent % reconnect_every == 0:
            s.bye()
            sessions[0] = Port(token)
            sessions[0].connect()
            sessions_opened += 1
        now = time.monotonic()
        if now - last_tick > 0.5:  # drain replies, keep sessions alive
            last_tick = now
            for s in sessions:
                s.frames()
                s.keepalive()
    for s in sessions:
        s.bye()
    out.put({"requests_sent": sent, "sessions_opened": sessions_opened, "seconds": seconds})


# --------------------------------------------------------------------------- the node


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    """``atenet init`` + a network + tokens in a temp home, on one store URL."""

    def __init__(self, home: Path, store: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.store = store
        # The node and the CLIs run this tree's code (the venv's scripts import from PYTHONPATH).
        self.env = os.environ | {
            "ATENET_HOME": str(home),
            "ATENET_STORE": store,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cli("atenet", "init")
        self.cli("tok", "network", "create", "bench", "--cidr", CIDR)
        self.network_id = bytes.fromhex(
            json.loads(self.cli("tok", "network", "show", "bench", "--json"))["id"]
        )

    def cli(self, prog: str, *args: str) -> str:
        proc = subprocess.run(
            [VENV_BIN / prog, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{prog} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def token(self, label: str) -> str:
        return self.cli(
            "tok", "key", "export", "bench", "--label", label,
            "--node", f"127.0.0.1:{self.udp_port}",
        ).strip()  # fmt: skip

    @contextlib.contextmanager
    def node(self) -> Iterator[int]:
        log = self.home / "node.log"
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [VENV_BIN / "atenet", "run", "--listen", "127.0.0.1",
                 "--udp-port", str(self.udp_port), "--http-port", str(self.http_port)],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "serving on udp" not in log.read_text()[start:]:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node did not start: {log.read_text()[start:]}")
                time.sleep(0.05)
            yield self.proc.pid
        finally:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/api/status"
        with urllib.request.urlopen(url, timeout=10) as resp:
            status = json.load(resp)
        return next(n for n in status["networks"] if n["name"] == "bench")

    def lease_times(self) -> list[float]:
        """Unix times of every lease event in the chain (read from the store itself)."""
        return self.chain()[0]

    def chain(self) -> tuple[list[float], set[str]]:
        """The lease events' times, and the MACs bound in the folded lease table (read as the
        owner reads it: the event bodies are encrypted)."""
        from atenet.chain.keys import Identity
        from atenet.chain.log import Chain
        from atenet.chain.store import open_store
        from atenet.deployment import owner_key_path

        async def read() -> tuple[list[float], set[str]]:
            store = open_store(self.store)
            await store.connect()
            try:
                times = []
                async for seq, blob in store.read(self.network_id):
                    event = decode_stored(self.network_id, seq, blob)
                    if event.kind == Kind.LEASE:
                        times.append(event.time_ms / 1000)
                old = os.environ.get("ATENET_HOME")
                os.environ["ATENET_HOME"] = str(self.home)
                try:
                    owner = Identity.load(owner_key_path())
                finally:
                    if old is None:
                        del os.environ["ATENET_HOME"]
                    else:
                        os.environ["ATENET_HOME"] = old
                chain = Chain(store, self.network_id, [owner.box])
                await chain.load()
                macs = {str(r["mac"]) for r in chain.state.lease_table.by_ip.values()}
                return times, macs
            finally:
                await store.close()

        return asyncio.run(read())


# --------------------------------------------------------------------------- phases


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=20) if len(values) >= 2 else [values[0]] * 19
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "p95": q[18],
        "max": max(values),
    }


def honest_phase(dep: Deployment, gateway: IPv4Address) -> dict[str, Any]:
    token = dep.token("honest")
    rows = []
    ports = []
    rng = random.Random()
    for _ in range(6):
        port = Port(token)
        port.connect()
        ports.append(port)
    before = len(dep.lease_times())
    for i in range(30):
        rows.append(exchange(ports[i % 6], random_mac(rng), gateway))
        time.sleep(0.05)
    after_binds = len(dep.lease_times())
    # 100 renewals of the last binding: REQUEST with ciaddr, unicast to the gateway.
    port = ports[0]
    mac = random_mac(rng)
    first = exchange(port, mac, gateway)
    ip = IPv4Address(first["ip"])
    gw_mac = addressing.gateway_mac(dep.network_id)
    events_before = len(dep.lease_times())
    renew_ms, renew_acks = [], 0
    for _ in range(100):
        xid = random.getrandbits(32)
        t0 = time.perf_counter()
        port.send(client_frame(mac, d.DHCPREQUEST, xid, ciaddr=ip, dst_mac=gw_mac, dst_ip=gateway))
        ack = port.wait_reply(xid, (d.DHCPACK, d.DHCPNAK), 3.0)
        if ack is not None and ack.message_type == d.DHCPACK:
            renew_acks += 1
            renew_ms.append((time.perf_counter() - t0) * 1e3)
    time.sleep(0.5)
    events_after = len(dep.lease_times())
    for p in ports:
        p.bye()
    return {
        "exchanges": len(rows),
        "acks": sum(r["result"] == "ack" for r in rows),
        "lease_events_for_exchanges": after_binds - before,
        "offer_ms": summary([r["offer_ms"] for r in rows if r["offer_ms"] is not None]),
        "ack_ms": summary([r["ack_ms"] for r in rows if r["ack_ms"] is not None]),
        "renewals": 100,
        "renewal_acks": renew_acks,
        "renewal_ms": summary(renew_ms),
        "lease_events_before_renewals": events_before,
        "lease_events_after_renewals": events_after,
    }


def spray_phase(
    dep: Deployment, pid: int, gateway: IPv4Address, seconds: float, ports: int, reconnect: int
) -> dict[str, Any]:
    attacker = dep.token(f"spray-{ports}-{reconnect}")
    honest = Port(dep.token("honest-during-spray"))
    honest.connect()
    honest_port = honest.sock.getsockname()[1]
    before = dep.lease_times()
    cpu0, wall0, rcvbuf0 = cpu_seconds(pid), time.monotonic(), udp_receive_errors()
    queue: multiprocessing.Queue[dict[str, Any]] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=spray, args=(attacker, ports, seconds, reconnect, queue))
    start = time.time()
    proc.start()
    rows = []
    honest_macs: set[str] = set()
    rng = random.Random()  # MACs never seen before, in every phase
    time.sleep(1.0)  # the sprayer's sessions are up and spraying
    while proc.is_alive() and time.time() < start + seconds:
        mac = random_mac(rng)
        honest_macs.add(mac.hex(":"))
        rows.append(exchange(honest, mac, gateway, tries=3))
        honest.idle(max(0.0, 2.0 - (rows[-1]["ack_ms"] or 0) / 1e3))
    result = queue.get(timeout=seconds + 60)
    proc.join()
    end = time.time()
    time.sleep(2.0)  # let the node's lease queue drain
    cpu = cpu_seconds(pid) - cpu0
    rcvbuf_errors = udp_receive_errors() - rcvbuf0
    node_drops = socket_drops(dep.udp_port)
    honest_drops = socket_drops(honest_port)
    wall = time.monotonic() - wall0
    status = dep.status()
    after, bound_macs = dep.chain()
    new = after[len(before) :]
    in_window = [t for t in new if start <= t <= end + 2.0]
    first_s = [t for t in new if t <= new[0] + 1.0] if new else []
    honest.bye()
    dhcp = status["dhcp"]
    return {
        "ports": ports,
        "reconnect_every": reconnect,
        "seconds": seconds,
        "sprayer": result,
        "requests_per_s": result["requests_sent"] / seconds,
        "lease_events": len(new),
        "lease_events_in_window": len(in_window),
        "lease_event_offsets_s": [round(t - start, 3) for t in new],
        "lease_events_first_second": len(first_s),
        "lease_events_per_s": len(new) / seconds,
        # Each honest binding is one event (a new MAC; an ACK may be lost): the rest are the
        # sprayer's.
        "honest_events": len(honest_macs & bound_macs),
        "spray_events": len(new) - len(honest_macs & bound_macs),
        "lease_events_per_s_after_first_s": (len(new) - len(first_s)) / max(seconds - 1.0, 1e-9),
        "dhcp": {k: dhcp.get(k, 0) for k in COUNTERS},
        "leases_waiting": status["gateway"].get("leases_waiting"),
        "node_drops": status["drops"],
        "node_cpu_pct": 100 * cpu / wall,
        "udp_rcvbuf_errors": rcvbuf_errors,
        "node_socket_drops": node_drops,
        "honest_socket_drops": honest_drops,
        "honest": {
            "exchanges": len(rows),
            "acks": sum(r["result"] == "ack" for r in rows),
            "results": [r["result"] for r in rows],
            "sends": [r["sends"] for r in rows],
            "ack_ms": summary([r["ack_ms"] for r in rows if r["ack_ms"] is not None]),
        },
    }


def append_phase(store_url: str, count: int = 200) -> dict[str, Any]:
    """The store's own pace: ``count`` lease events appended back to back with a certified
    node key (``Chain.append``: catch up, sign, verify, store), on a network of their own. What
    the chain could take if nothing rate-limited the DHCP servers."""
    from tests.support.chains import make_world

    from atenet.chain.store import open_store

    async def run() -> list[float]:
        store = open_store(store_url)
        await store.connect()
        try:
            world = await make_world(store, "append-bench")
            times = []
            for i in range(count):
                payload = {
                    "mac": f"02:ab:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                    "ip": f"10.9.8.{2 + i}",
                    "host": "",
                    "node": "bench",
                    "expires": round(time.time() + 86400, 3),
                }
                t0 = time.perf_counter()
                await world.chain.append(Kind.LEASE, payload, world.node_a)
                times.append((time.perf_counter() - t0) * 1e3)
            return times
        finally:
            await store.close()

    start = time.perf_counter()
    times = asyncio.run(run())
    return {
        "appends": count,
        "append_ms": summary(times),
        "events_per_s": count / sum(t / 1e3 for t in times),
        "wall_s": time.perf_counter() - start,
    }


def run_store(store_url: str, home: Path, seconds: float, phases: list[str]) -> dict[str, Any]:
    dep = Deployment(home, store_url)
    out: dict[str, Any] = {"store": store_url.split(":", 1)[0]}
    if "append" in phases:
        out["append"] = append_phase(store_url)
        print(f"[{out['store']}] append: {json.dumps(out['append'])}", file=sys.stderr)
    gateway = addressing.gateway_v4(CIDR).ip
    for phase in [p for p in phases if p != "append"]:
        with dep.node() as pid:
            if phase == "honest":
                out["honest"] = honest_phase(dep, gateway)
            elif phase == "spray1":
                out["spray1"] = spray_phase(dep, pid, gateway, seconds, 1, 0)
            elif phase == "spray64":
                out["spray64"] = spray_phase(dep, pid, gateway, seconds, 64, 0)
            elif phase == "reconnect":
                out["reconnect"] = spray_phase(dep, pid, gateway, seconds, 1, 10)
        print(f"[{out['store']}] {phase}: {json.dumps(out[phase])}", file=sys.stderr)
    return out


@contextlib.contextmanager
def nats_cluster(base: Path) -> Iterator[str]:
    from tests.support.nats_cluster import running_cluster

    with running_cluster(base, 3) as cluster:
        yield cluster.url


# --------------------------------------------------------------------------- report


def ms(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "–"
    return f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f}, p95 {s['p95']:.1f})"


def report(results: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    print(f"load average at start {machine['loadavg_start']}, at end {machine['loadavg_end']}")
    print("\n| store | one lease event appended (Chain.append) ms | back to back, events/s |")
    print("|---|---|--:|")
    for r in results:
        a = r.get("append")
        if a:
            print(f"| {r['store']} | {ms(a['append_ms'])} | {a['events_per_s']:,.0f} |")
    print("\n| store | DISCOVER → OFFER ms (baseline) | REQUEST → ACK ms (commit, then ACK) "
          "| renewal REQUEST → ACK ms | lease events for 30 binds / 100 renewals |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in results:
        h = r.get("honest")

        if not h:
            continue
        renew_events = h["lease_events_after_renewals"] - h["lease_events_before_renewals"]
        print(f"| {r['store']} | {ms(h['offer_ms'])} | {ms(h['ack_ms'])} | {ms(h['renewal_ms'])} "
              f"| {h['lease_events_for_exchanges']} / {renew_events} |")  # fmt: skip
    print(
        "\n| store | sprayer | REQUESTs/s sent | sessions | sprayer's lease events (documented "
        "bound) | events/s | bind_rate_limited | node CPU % | node socket drops "
        "| honest ACKs / exchanges (sends) | honest REQUEST → ACK ms |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|")
    names = {"spray1": "1 port", "spray64": "64 ports, 1 key", "reconnect": "reconnecting"}
    for r in results:
        for key, name in names.items():
            s = r.get(key)
            if not s:
                continue
            t = s["seconds"]
            # Every sprayer uses one access key: the per-key budget applies (node/core.py keys
            # the DHCP server's bind limits by access key), within the server's.
            bound = min(PORT_BURST + int(t * PORT_RATE), SERVER_BURST + int(t * SERVER_RATE))
            honest = s["honest"]
            print(f"| {r['store']} | {name} | {s['requests_per_s']:,.0f} "
                  f"| {s['sprayer']['sessions_opened']} | {s['spray_events']} ({bound}) "
                  f"| {s['spray_events'] / t:.2f} | {s['dhcp']['bind_rate_limited']:,} "
                  f"| {s['node_cpu_pct']:.0f} | {s['node_socket_drops']:,} "
                  f"| {honest['acks']} / {honest['exchanges']} ({sum(honest['sends'])}) "
                  f"| {ms(honest['ack_ms'])} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "nats", "both"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each spray")
    parser.add_argument("--phases", default="append,honest,spray1,spray64,reconnect")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    phases = args.phases.split(",")
    machine = {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = Path(tempfile.mkdtemp(prefix="bench-dhcp-"))
    results = []
    try:
        if args.store in ("sqlite", "both"):
            home = base / "sqlite"
            url = f"sqlite://{home / 'chain.sqlite'}"
            results.append(run_store(url, home, args.seconds, phases))
        if args.store in ("nats", "both"):
            with nats_cluster(base / "nats") as url:
                results.append(run_store(url, base / "nats-home", args.seconds, phases))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()
    report(results, machine)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
