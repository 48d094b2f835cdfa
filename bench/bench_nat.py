"""TCP throughput through atenet's NAT forwarder beside kernel NAT, in one run (issue 13).

    sudo .venv/bin/python bench/bench_nat.py                   # 5 rounds x 8 s, both directions
    sudo .venv/bin/python bench/bench_nat.py --rounds 3 --seconds 5 --json nat.json

Everything is inside throwaway namespaces (``tests/support/netns.py``, ``Lab``) on the private
underlay: an "internet" namespace holds an ``iperf3`` server at 203.0.113.10 (a documentation
address, RFC 5737) on its loopback, and three paths reach it:

- ``atenet-nat``: a ``tok connect`` host (DHCP, the network's ``internet`` on) → its node
  (``atenet run``, default route via the internet namespace) → the node's forwarder, which
  terminates the TCP flow in atenet's own stack and opens one host socket per flow.
- ``kernel-nat``: a client namespace joined to a NAT namespace by a veth pair; the NAT
  namespace forwards and ``nft`` masquerades out of its underlay address: the kernel's own path,
  the ceiling on this machine.
- ``relay-kernel-nat``: the research note's setup (../shared/research/stack-and-nat.md): the
  client's TAP and a TAP in the NAT namespace joined by one Python process
  (``bench/taprelay.py``), then the same kernel masquerade. What the kernel gives behind the
  floor cost of Python touching every frame — the fair comparison for a Python node.
- ``atenet-lan`` (reference, no NAT): the same ``tok connect`` host to a second one on the same
  node (an ``iperf3`` server on its overlay address): what the overlay path alone costs, so the
  forwarder's own share shows.

Each round measures every path in turn (interleaved, so a busy shared machine slows all of them
alike), upload (client → server) and download (``iperf3 -R``). The table shows medians, ranges
and the ratio of ``atenet-nat`` to each kernel path, plus the node's CPU seconds per GB moved;
the load average is printed before and after (``/proc/loadavg``). Needs root, ``iperf3`` and
``nft`` (``apt-get install nftables``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from netbench import cpu_seconds, wait_listening  # noqa: E402
from tests.support.netns import Host, Lab, _ip  # noqa: E402

SERVER = "203.0.113.10"
PATHS = ("atenet-nat", "kernel-nat", "relay-kernel-nat", "atenet-lan")


def masquerade(host: Host, out_dev: str = "eth0") -> None:
    """Make ``host`` a NAT router: forward, masquerade what leaves ``out_dev`` (nft, this
    namespace only: the host's own firewall is never touched)."""
    host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    rules = (
        "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f'  oifname "{out_dev}" masquerade\n }}\n}}\n'
    )
    host.run(["nft", "-f", "-"], input=rules)


class Paths:
    """The three paths in one lab; ``clients[name]`` is the host that runs ``iperf3 -c``."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        from tests.support.overlay import Overlay

        self.lab = lab
        self.procs: dict[str, int] = {}
        self.clients: dict[str, Host] = {}
        self.servers: dict[str, tuple[Host, str]] = {}
        inet = self.inet = lab.add_host("inet")
        inet.run(["ip", "addr", "add", f"{SERVER}/32", "dev", "lo"])

        # atenet: node with its default route via the internet namespace, a DHCP tok host
        overlay = Overlay(lab, tmp)
        overlay.tok("network", "set", "lan", "--internet", "on")
        node = overlay.add_node("n1")
        assert node.proc is not None
        node.host.run(["ip", "route", "add", "default", "via", inet.ip])
        node.host.run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"])
        self.procs["node"] = node.proc.pid
        client = overlay.add_client("a", ["n1"])
        assert client.proc is not None
        self.procs["tok"] = client.proc.pid
        self.clients["atenet-nat"] = client.host
        other = overlay.add_client("b", ["n1"])
        self.clients["atenet-lan"] = client.host
        self.servers["atenet-lan"] = (other.host, other.ip4)
        end = time.monotonic() + 30
        while not client.host.ping(other.ip4, count=2, timeout=2):
            if time.monotonic() > end:
                raise RuntimeError("atenet-lan: no ping between the two tok hosts")

        # kernel NAT over a veth pair: kc (10.210.0.2) -> kn (10.210.0.1) -> masquerade
        kn = lab.add_host("kn")
        kn.run(["ip", "route", "add", "default", "via", inet.ip])
        kc_ns = f"{lab.tag}-kc"
        _ip("netns", "add", kc_ns)
        lab._namespaces.append(kc_ns)  # removed with the lab
        _ip("-n", kn.ns, "link", "add", "vk", "type", "veth", "peer", "name", "eth0",
            "netns", kc_ns)  # fmt: skip
        _ip("-n", kn.ns, "addr", "add", "10.210.0.1/24", "dev", "vk")
        _ip("-n", kn.ns, "link", "set", "vk", "up")
        for args in (
            ("link", "set", "lo", "up"),
            ("addr", "add", "10.210.0.2/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("route", "add", "default", "via", "10.210.0.1"),
        ):
            _ip("-n", kc_ns, *args)
        masquerade(kn)
        kc = Host(lab, "kc", kc_ns, "10.210.0.2")
        self.clients["kernel-nat"] = kc

        # the research note's setup: TAP <-> Python relay <-> TAP, then the kernel masquerade
        pn = lab.add_host("pn")
        pn.run(["ip", "route", "add", "default", "via", inet.ip])
        pc = lab.add_host("pc")
        relay = pc.popen(
            [sys.executable, str(ROOT / "bench" / "taprelay.py"), pc.ns, "10.211.0.2/24",
             pn.ns, "10.211.0.1/24"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError("taprelay.py did not start")
        self.procs["relay"] = relay.pid
        pc.run(["ip", "route", "replace", "default", "via", "10.211.0.1", "dev", "tap0"])
        masquerade(pn)
        self.clients["relay-kernel-nat"] = pc

        for name, host in self.clients.items():
            end = time.monotonic() + 30
            while not host.ping(SERVER, count=2, timeout=2):
                if time.monotonic() > end:
                    raise RuntimeError(f"{name}: no ping to {SERVER}")
                time.sleep(0.3)


def iperf(paths: Paths, name: str, seconds: float, reverse: bool) -> dict[str, float]:
    """One iperf3 run on one path: Mbit/s received, retransmits, node CPU seconds."""
    inet, addr = paths.servers.get(name, (paths.inet, SERVER))
    server = inet.popen(
        ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(inet, 5201)
        cpu0 = {k: cpu_seconds(p) for k, p in paths.procs.items()}
        out = paths.clients[name].run(
            ["iperf3", "-c", addr, "-p", "5201", "-t", str(seconds), "-J",
             *(["-R"] if reverse else [])],
            check=False, timeout=seconds + 40,
        )  # fmt: skip
        cpu1 = {k: cpu_seconds(p) for k, p in paths.procs.items()}
        report: dict[str, Any] = json.loads(out.stdout or "{}")
        if "error" in report or "end" not in report:
            raise RuntimeError(f"iperf3 on {name} failed: {report.get('error', out.stderr)}")
        end = report["end"]
        result = {
            "mbps": end["sum_received"]["bits_per_second"] / 1e6,
            "bytes": float(end["sum_received"]["bytes"]),
            "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        }
        for k in paths.procs:
            if cpu0[k] is not None and cpu1[k] is not None:
                result[f"cpu_{k}"] = cpu1[k] - cpu0[k]  # type: ignore[operator]
        return result
    finally:
        inet.lab.stop_process(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per iperf3 run")
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON here")
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="comma-separated paths to measure (default: all; atenet-nat is always measured)",
    )
    args = ap.parse_args()
    chosen = [p for p in PATHS if p == "atenet-nat" or p in args.paths.split(",")]
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        sys.exit(f"bench_nat.py: unknown path(s) {', '.join(sorted(unknown))}; one of {PATHS}")

    load_before = Path("/proc/loadavg").read_text().strip()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="atnbench-nat-") as tmp:
        paths = Paths(lab, Path(tmp))
        loads = [load_before]
        for r in range(args.rounds):
            for direction in ("up", "down"):
                for name in chosen:
                    res = iperf(paths, name, args.seconds, direction == "down")
                    runs.setdefault((name, direction), []).append(res)
                    print(f"round {r + 1} {name:17} {direction:4} {res['mbps']:8.1f} Mbit/s "
                          f"retr {res['retransmits']:.0f}", flush=True)  # fmt: skip
            loads.append(Path("/proc/loadavg").read_text().strip())
    load_after = Path("/proc/loadavg").read_text().strip()

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"

    print(f"\nload average before {load_before!r}, after {load_after!r}")
    print("| path | up Mbit/s | down Mbit/s |\n|---|---|---|")
    for name in chosen:
        up = [x["mbps"] for x in runs[(name, "up")]]
        down = [x["mbps"] for x in runs[(name, "down")]]
        print(f"| {name} | {med(up)} | {med(down)} |")
    for other in chosen[1:]:
        ratios = []
        for direction in ("up", "down"):
            a = statistics.median(x["mbps"] for x in runs[("atenet-nat", direction)])
            b = statistics.median(x["mbps"] for x in runs[(other, direction)])
            ratios.append(f"{direction} {a / b:.2f}×")
        print(f"atenet-nat / {other}: {', '.join(ratios)}")
    for direction in ("up", "down"):
        rs = runs[("atenet-nat", direction)]
        node = [x["cpu_node"] / (x["bytes"] / 1e9) for x in rs if "cpu_node" in x]
        tok = [x["cpu_tok"] / (x["bytes"] / 1e9) for x in rs if "cpu_tok" in x]
        relays = runs.get(("relay-kernel-nat", direction), [])
        relay = [x["cpu_relay"] / (x["bytes"] / 1e9) for x in relays]
        print(
            f"CPU s per GB {direction}: node {med(node)}, tok {med(tok)}"
            + (f", relay {med(relay)}" if relay else "")
        )
    if args.json:
        out = {
            "load_before": load_before,
            "load_after": load_after,
            "loads": loads,
            "seconds": args.seconds,
            "runs": {f"{n}/{d}": v for (n, d), v in runs.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
