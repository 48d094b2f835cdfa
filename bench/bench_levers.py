"""A/B rounds for the small-packet levers (issue 14): two or more source trees, one lab each.

Each variant is a name and a ``src`` directory put first on ``PYTHONPATH`` for the `atenet run`
and `tok connect` processes of a fresh 1-node overlay (A -> N1 -> B). Rounds interleave the
variants (ABAB..., order flipped every round) so a change in the machine's load hits both; the
table gives medians and ranges over rounds. Per round and variant:

* idle ping RTT p50 / p99 (``--pings`` pings, 20 ms apart),
* 64-byte UDP: ``iperf3 -u -l 64 -b 1G``, frames delivered to B's TAP per second, and the CPU
  of each process (µs per delivered frame), with the drop counters of every namespace,
* one TCP stream (iperf3, Mbit/s).

::

    git archive HEAD | tar -x -C /tmp/base   # the "before" tree
    sudo .venv/bin/python bench/bench_levers.py --variant before=/tmp/base/src \\
        --variant after=src --rounds 5 --seconds 5

Needs root, iperf3 and ping. Not a test: the figures depend on the machine's load (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netbench import Lab, cpu_seconds, percentile, ping_rtts, wait_listening


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def counters(host: Any) -> dict[str, int]:
    """The host's TAP tx (kernel -> tok) / rx and drops, and its UDP receive-buffer errors."""
    out: dict[str, int] = {}
    links = json.loads(host.run(["ip", "-s", "-j", "link"]).stdout)
    for link in links:
        if link["ifname"].startswith("atenet"):
            st = link["stats64"]
            out["tap_tx"] = st["tx"]["packets"]
            out["tap_tx_drop"] = st["tx"]["dropped"]
            out["tap_rx"] = st["rx"]["packets"]
            out["tap_rx_drop"] = st["rx"]["dropped"]
    snmp = host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
    fields = dict(zip(udp[0], udp[1], strict=True))
    out["udp_in"] = int(fields["InDatagrams"])
    out["udp_rcvbuf_err"] = int(fields["RcvbufErrors"])
    out["udp_sndbuf_err"] = int(fields["SndbufErrors"])
    return out


def iperf(
    client: Any, server: Any, addr: str, args: list[str], seconds: float, procs: dict[str, int]
) -> tuple[dict[str, Any], dict[str, float]]:
    srv = server.popen(
        ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(server, 5201)
        before = {k: cpu_seconds(p) or 0.0 for k, p in procs.items()}
        out = client.run(
            ["iperf3", "-c", addr, "-p", "5201", "-t", str(seconds), "-J", *args],
            check=False,
            timeout=seconds + 30,
        )
        after = {k: cpu_seconds(p) or 0.0 for k, p in procs.items()}
    finally:
        server.lab.stop_process(srv)
    report: dict[str, Any] = json.loads(out.stdout or "{}")
    if "end" not in report:
        raise RuntimeError(f"iperf3 failed: {report.get('error', out.stderr)}")
    return report, {k: after[k] - before[k] for k in procs}


def one(src: str, seconds: float, pings: int, measures: set[str]) -> dict[str, Any]:
    """Build a 1-node overlay running the tree ``src``; measure ping, 64-byte UDP, TCP."""
    from tests.support.overlay import Overlay

    os.environ["PYTHONPATH"] = str(Path(src).resolve())
    with tempfile.TemporaryDirectory(prefix="atnlevers-") as tmp, Lab() as lab:
        overlay = Overlay(lab, Path(tmp))
        node = overlay.add_node("n1")
        a = overlay.add_client("a", ["n1"])
        b = overlay.add_client("b", ["n1"])
        procs = {"tok-a": a.proc.pid, "node": node.proc.pid, "tok-b": b.proc.pid}  # type: ignore[union-attr]
        end = time.monotonic() + 30
        while not (a.host.ping(b.ip4, count=3, timeout=2) and b.host.ping(a.ip4, 3, 2)):
            if time.monotonic() > end:
                raise RuntimeError("no ping through the overlay")
        out: dict[str, Any] = {"load": loadavg(), "rtt_p50": 0.0, "rtt_p99": 0.0}
        out |= {"udp_rate": 0.0, "udp_sent": 0.0, "cpu_us": {}, "tcp_mbps": 0.0, "counters": {}}
        out["tcp_cpu_s_per_gbit"] = 0.0
        if "ping" in measures:
            rtts = ping_rtts(a.host, b.ip4, pings, 0.02)
            out["rtt_p50"], out["rtt_p99"] = percentile(rtts, 50), percentile(rtts, 99)
        if "udp" in measures:
            hosts = {"a": a.host, "n1": node.host, "b": b.host}
            c0 = {k: counters(h) for k, h in hosts.items()}
            udp64 = ["-u", "-l", "64", "-b", "1G"]
            report, cpu = iperf(a.host, b.host, b.ip4, udp64, seconds, procs)
            c1 = {k: counters(h) for k, h in hosts.items()}
            out["counters"] = {
                f"{k}.{f}": c1[k][f] - c0[k][f]
                for k in hosts
                for f in c1[k]
                if c1[k][f] != c0[k][f]
            }
            s = report["end"]["sum"]
            # Frames tok-b wrote to B's TAP: what reached B's kernel. iperf3's own count (its
            # server's report) came out implausible in some rounds, so this one is the figure.
            got = out["counters"].get("b.tap_rx", 0)
            out["udp_rate"] = got / seconds
            out["udp_iperf"] = (s["packets"] - s["lost_packets"]) / s["seconds"]
            out["udp_sent"] = s["packets"] / s["seconds"]
            out["cpu_us"] = {k: 1e6 * v / max(got, 1) for k, v in cpu.items()}
        if "tcp" in measures:
            tcp, tcp_cpu = iperf(a.host, b.host, b.ip4, [], seconds, procs)
            out["tcp_mbps"] = tcp["end"]["sum_received"]["bits_per_second"] / 1e6
            # CPU seconds per gigabit carried, all three processes: moves less with the load.
            gbits = out["tcp_mbps"] * seconds / 1000
            out["tcp_cpu_s_per_gbit"] = sum(tcp_cpu.values()) / gbits if gbits else 0.0
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=SRC_DIR")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--measures", default="ping,udp,tcp", help="any of ping,udp,tcp")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.variant]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, src in order:
            got = one(src, args.seconds, args.pings, set(args.measures.split(",")))
            results[name].append(got)
            cpu = " ".join(f"{k} {v:.1f}" for k, v in got["cpu_us"].items())
            print(
                f"round {r + 1} {name:>8}: load {got['load']} rtt p50 {got['rtt_p50']:.3f} "
                f"p99 {got['rtt_p99']:.3f} ms | udp64 {got['udp_rate']:,.0f}/s "
                f"(sent {got['udp_sent']:,.0f}) cpu µs/pkt {cpu} | tcp {got['tcp_mbps']:,.0f} "
                f"({got.get('tcp_cpu_s_per_gbit', 0):.2f} cpu s/Gbit)",
                flush=True,
            )
            print("   ", got["counters"], flush=True)
    print("\nmedians (min-max) over rounds")
    for name, runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> str:
            vals = [x[key] for x in runs]
            return f"{statistics.median(vals):,.3g} ({min(vals):,.3g}-{max(vals):,.3g})"

        cpu = {
            k: round(statistics.median(x["cpu_us"][k] for x in runs), 1) for k in runs[0]["cpu_us"]
        }  # fmt: skip
        print(
            f"{name:>8}: rtt p50 {med('rtt_p50')} ms, p99 {med('rtt_p99')} | udp64/s "
            f"{med('udp_rate')} | cpu µs/pkt {cpu} | tcp Mbit/s {med('tcp_mbps')}, "
            f"cpu s/Gbit {med('tcp_cpu_s_per_gbit')}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
