"""Measurements for the network benchmark: iperf3 throughput, ping RTT, per-process CPU time.

A *target* is one way of connecting two hosts of a :class:`~tests.support.netns.Lab` (the bare
veth underlay, tinc, atenet). The runner asks each target for a client host, a server host
and the server's address on the target's network, then measures the same things through every
target, so the figures are comparable within one run on one machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.netns import Host, Lab  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RTT_RE = re.compile(r"time=([\d.]+) ms")


class Target(ABC):
    """A way to connect two lab hosts; the bench measures traffic through it.

    Subclasses build their network in :meth:`setup` and undo what the lab does not in
    :meth:`teardown` (the lab itself kills processes started with ``Host.popen`` and deletes
    namespaces). :meth:`processes` names the PIDs whose CPU time is worth reporting.
    """

    name: str = "target"
    """Short name used in the table and the JSON."""
    description: str = ""

    @abstractmethod
    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        """Build the network; return (client host, server host, server's address on it)."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release what the lab does not clean up itself (temp dirs, ...)."""

    def processes(self) -> dict[str, int]:
        """Processes that carry this target's traffic, by label (their CPU time is reported)."""
        return {}


# --- one measurement ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process so far, from /proc/<pid>/stat; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def ping_rtts(host: Host, addr: str, count: int, interval: float) -> list[float]:
    """Per-packet RTTs (ms) of ``count`` pings; lost packets are simply absent."""
    deadline = count * interval + 3
    proc = host.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-w", str(round(deadline)), addr],
        check=False,
        timeout=deadline + 5,
    )
    return [float(m) for m in RTT_RE.findall(proc.stdout)]


def wait_listening(host: Host, port: int, timeout: float = 5.0) -> None:
    """Wait until something listens on TCP ``port`` in ``host``'s namespace."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = host.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {host.ns} after {timeout} s")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class RunResult:
    """One run of one target: throughput, RTTs idle and under load, CPU time per process."""

    throughput_mbps: float
    retransmits: int
    idle_rtt_ms: list[float]
    load_rtt_ms: list[float]
    cpu_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def measure_once(
    client: Host,
    server: Host,
    addr: str,
    seconds: float,
    procs: dict[str, int],
    idle_pings: int = 20,
    ping_interval: float = 0.05,
) -> RunResult:
    """Idle pings, then an iperf3 TCP run with pings alongside, with CPU time around the load."""
    idle = ping_rtts(client, addr, idle_pings, ping_interval)

    server_proc = server.popen(
        ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(server, 5201)
        load: list[float] = []
        # Pings start a little after iperf3 so they see the queue in steady state, not slow start.
        load_count = max(1, int((seconds - 1.0) / ping_interval))

        def load_pings() -> None:
            time.sleep(0.5)
            load.extend(ping_rtts(client, addr, load_count, ping_interval))

        pinger = threading.Thread(target=load_pings)
        before = {label: cpu_seconds(pid) for label, pid in procs.items()}
        started = time.monotonic()
        pinger.start()
        out = client.run(
            ["iperf3", "-c", addr, "-p", "5201", "-t", str(seconds), "-J"],
            check=False,
            timeout=seconds + 30,
        )
        elapsed = time.monotonic() - started
        after = {label: cpu_seconds(pid) for label, pid in procs.items()}
        pinger.join()
        report: dict[str, Any] = json.loads(out.stdout or "{}")
        if "error" in report or "end" not in report:
            raise RuntimeError(f"iperf3 to {addr} failed: {report.get('error', out.stderr)}")
        end = report["end"]
        cpu = {
            label: round(after[label] - b, 3)  # type: ignore[operator]
            for label, b in before.items()
            if b is not None and after[label] is not None
        }
        return RunResult(
            throughput_mbps=end["sum_received"]["bits_per_second"] / 1e6,
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
            idle_rtt_ms=idle,
            load_rtt_ms=load,
            cpu_s=cpu,
            seconds=round(elapsed, 3),
        )
    finally:
        server.lab.stop_process(server_proc)


# --- aggregation -------------------------------------------------------------------------


@dataclass
class Summary:
    """Medians over runs of one target (each run's RTT figure is computed first)."""

    target: str
    description: str
    runs: int
    throughput_mbps: float
    retransmits: float
    idle_rtt_median_ms: float | None
    idle_rtt_p99_ms: float | None
    load_rtt_median_ms: float | None
    load_rtt_p99_ms: float | None
    cpu_pct: dict[str, float]
    """CPU time of each target process during the iperf3 run, in % of one core (median)."""
    cpu_pct_per_gbps: dict[str, float]
    """The same CPU figure divided by that run's throughput in Gbit/s (median over runs): what
    one Gbit/s costs each process, in % of a core. ``total`` sums the processes of a run."""
    raw: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cpu_per_gbps(result: RunResult) -> dict[str, float]:
    """CPU % of a core per Gbit/s of throughput, per process and in ``total``, for one run."""
    gbps = result.throughput_mbps / 1000
    if gbps <= 0 or result.seconds <= 0 or not result.cpu_s:
        return {}
    costs = {label: 100 * cpu / result.seconds / gbps for label, cpu in result.cpu_s.items()}
    if len(costs) > 1:
        costs["total"] = sum(costs.values())
    return costs


def summarize(target: Target, results: list[RunResult]) -> Summary:
    labels = sorted({label for r in results for label in r.cpu_s})
    per_run_costs = [cpu_per_gbps(r) for r in results]
    cost_labels = [*labels, "total"]
    cpu_pct_per_gbps = {
        label: round(statistics.median(c[label] for c in per_run_costs if label in c), 1)
        for label in cost_labels
        if any(label in c for c in per_run_costs)
    }
    cpu_pct = {
        label: round(
            statistics.median(
                100 * r.cpu_s[label] / r.seconds for r in results if label in r.cpu_s
            ),
            1,
        )
        for label in labels
    }
    return Summary(
        target=target.name,
        description=target.description,
        runs=len(results),
        throughput_mbps=statistics.median(r.throughput_mbps for r in results),
        retransmits=statistics.median(r.retransmits for r in results),
        idle_rtt_median_ms=_median([percentile(r.idle_rtt_ms, 50) for r in results]),
        idle_rtt_p99_ms=_median([percentile(r.idle_rtt_ms, 99) for r in results]),
        load_rtt_median_ms=_median([percentile(r.load_rtt_ms, 50) for r in results]),
        load_rtt_p99_ms=_median([percentile(r.load_rtt_ms, 99) for r in results]),
        cpu_pct=cpu_pct,
        cpu_pct_per_gbps=cpu_pct_per_gbps,
        raw=[asdict(r) for r in results],
    )


def bench_target(target: Target, runs: int, seconds: float, log: Any = print) -> Summary:
    """Build ``target`` in a fresh lab, measure it ``runs`` times, tear everything down."""
    results = []
    try:
        with Lab() as lab:
            client, server, addr = target.setup(lab)
            for i in range(runs):
                result = measure_once(client, server, addr, seconds, target.processes())
                log(
                    f"  {target.name} run {i + 1}/{runs}: {result.throughput_mbps:,.0f} Mbit/s, "
                    f"idle rtt p50 {percentile(result.idle_rtt_ms, 50)} ms"
                )
                results.append(result)
    finally:
        # After the lab stopped the target's processes: they may still use its files.
        target.teardown()
    return summarize(target, results)
