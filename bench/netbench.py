"""Measurements for the network benchmark: iperf3 TCP throughput, ping RTT idle and under load,
the 64-byte UDP packet rate, per-process CPU time, and where datagrams were dropped.

A *target* is one way of connecting two hosts of a :class:`~tests.support.netns.Lab` (the bare
veth underlay, tinc, atenet). The runner asks each target for a client host, a server host
and the server's address on the target's network, then measures the same things through every
target. :func:`bench_rounds` interleaves the targets: round *r* builds every target once, in a
fresh lab, in an order rotated by *r*, so a change in the machine's load hits every target
alike instead of whichever happened to run then.
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
from collections.abc import Callable
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
class UdpResult:
    """One 64-byte UDP run (``iperf3 -u -l 64 -b 1G``): what left the client, what the server
    counted, the CPU each target process spent and the drop counters that moved."""

    sent: int
    """Datagrams the iperf3 client sent."""
    received: int
    """Datagrams the iperf3 server received (its ``packets - lost_packets``)."""
    seconds: float
    """The server's measured duration."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    """Deltas of the lab's drop and datagram counters over the run, non-zero only, keyed
    ``host:what`` (see :func:`lab_counters`)."""

    @property
    def received_pps(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunResult:
    """One run of one target: throughput, RTTs idle and under load, CPU time per process, and
    (when measured) the 64-byte UDP packet rate."""

    throughput_mbps: float
    retransmits: int
    idle_rtt_ms: list[float]
    load_rtt_ms: list[float]
    cpu_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    udp: UdpResult | None = None
    round: int = 0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The machine's load average when this run started."""


# --- where datagrams are dropped ---------------------------------------------------------

SNMP_UDP = ("InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors", "SndbufErrors")
LINK_STATS = ("packets", "dropped", "errors")


def _ns_counters(ns: str) -> dict[str, int]:
    """One namespace's UDP counters (/proc/net/snmp), per-socket UDP drops (/proc/net/udp, by
    local port) and per-device packet/drop counters (``ip -s -j link``)."""
    out: dict[str, int] = {}
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/udp"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    if len(udp) >= 2:
        names, values = udp[0][1:], udp[1][1:]
        for name, value in zip(names, values, strict=False):
            if name in SNMP_UDP:
                out[f"udp.{name}"] = int(value)
    for line in lines:
        words = line.split()
        # /proc/net/udp: "sl local_address rem_address st ... ref pointer drops"
        if len(words) >= 13 and words[0].endswith(":") and words[0][:-1].isdigit():
            port = int(words[1].rsplit(":", 1)[1], 16)
            out[f"sock:{port}.drops"] = out.get(f"sock:{port}.drops", 0) + int(words[-1])
    proc = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link"], capture_output=True, text=True, timeout=10,
        check=False,
    )  # fmt: skip
    try:
        links = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        links = []
    for link in links:
        name = link.get("ifname", "?")
        stats = link.get("stats64", {})
        for direction in ("rx", "tx"):
            for what in LINK_STATS:
                value = stats.get(direction, {}).get(what)
                if value is not None:
                    out[f"{name}.{direction}_{what}"] = int(value)
    return out


def lab_counters(lab: Lab) -> dict[str, int]:
    """Counters of every namespace of ``lab``, keyed ``host:counter`` (``br`` for the bridge)."""
    out: dict[str, int] = {}
    for ns in lab.namespaces:
        host = ns[len(lab.tag) + 1 :] or ns
        for key, value in _ns_counters(ns).items():
            out[f"{host}:{key}"] = value
    return out


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Non-zero changes between two :func:`lab_counters` snapshots (new keys count from 0)."""
    deltas = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: d for k, d in sorted(deltas.items()) if d}


# --- one measurement ---------------------------------------------------------------------


def _cpu_delta(before: dict[str, float | None], procs: dict[str, int]) -> dict[str, float]:
    after = {label: cpu_seconds(pid) for label, pid in procs.items()}
    return {
        label: round(after[label] - b, 3)  # type: ignore[operator]
        for label, b in before.items()
        if b is not None and after.get(label) is not None
    }


def measure_udp(
    client: Host, server: Host, addr: str, seconds: float, procs: dict[str, int], size: int = 64
) -> UdpResult:
    """``iperf3 -u -l SIZE -b 1G`` client -> server; the received count is the server's own.

    At 1 Gbit/s of 64-byte datagrams every target is saturated, so what arrives per second is
    the path's small-packet capacity; :attr:`UdpResult.drops` says where the rest went.
    """
    port = 5202
    server_proc = server.popen(
        ["iperf3", "-s", "-1", "-J", "-p", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(server, port)
        counters = lab_counters(server.lab)
        cpu_before = {label: cpu_seconds(pid) for label, pid in procs.items()}
        out = client.run(
            ["iperf3", "-u", "-l", str(size), "-b", "1G", "-c", addr, "-p", str(port),
             "-t", str(seconds), "-J"],
            check=False, timeout=seconds + 30,
        )  # fmt: skip
        cpu = _cpu_delta(cpu_before, procs)
        drops = counter_deltas(counters, lab_counters(server.lab))
        try:
            server_out, server_err = server_proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server_out, server_err = "", "iperf3 server did not finish"
        sent_report: dict[str, Any] = json.loads(out.stdout or "{}")
        report: dict[str, Any] = json.loads(server_out or "{}")
        if "end" not in report or "end" not in sent_report:
            error = report.get("error") or sent_report.get("error") or server_err or out.stderr
            raise RuntimeError(f"iperf3 -u to {addr} failed: {error}")
        got = report["end"]["sum_received"]
        return UdpResult(
            sent=int(sent_report["end"]["sum_sent"]["packets"]),
            received=int(got["packets"]) - int(got["lost_packets"]),
            seconds=float(got["seconds"]),
            cpu_s=cpu,
            drops=drops,
        )
    finally:
        server.lab.stop_process(server_proc)


def measure_once(
    client: Host,
    server: Host,
    addr: str,
    seconds: float,
    procs: dict[str, int],
    idle_pings: int = 20,
    ping_interval: float = 0.05,
    udp_seconds: float = 0.0,
) -> RunResult:
    """Idle pings, then an iperf3 TCP run with pings alongside, with CPU time around the load;
    then (``udp_seconds`` > 0) the 64-byte UDP rate."""
    loadavg = os.getloadavg()
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
        cpu = _cpu_delta(before, procs)
        pinger.join()
        report: dict[str, Any] = json.loads(out.stdout or "{}")
        if "error" in report or "end" not in report:
            raise RuntimeError(f"iperf3 to {addr} failed: {report.get('error', out.stderr)}")
        end = report["end"]
    finally:
        server.lab.stop_process(server_proc)
    udp = measure_udp(client, server, addr, udp_seconds, procs) if udp_seconds > 0 else None
    return RunResult(
        throughput_mbps=end["sum_received"]["bits_per_second"] / 1e6,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        idle_rtt_ms=idle,
        load_rtt_ms=load,
        cpu_s=cpu,
        seconds=round(elapsed, 3),
        udp=udp,
        loadavg=loadavg,
    )


# --- aggregation -------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _range(values: list[float | None]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


def cpu_per_gbps(result: RunResult) -> dict[str, float]:
    """CPU % of a core per Gbit/s of throughput, per process and in ``total``, for one run."""
    gbps = result.throughput_mbps / 1000
    if gbps <= 0 or result.seconds <= 0 or not result.cpu_s:
        return {}
    costs = {label: 100 * cpu / result.seconds / gbps for label, cpu in result.cpu_s.items()}
    if len(costs) > 1:
        costs["total"] = sum(costs.values())
    return costs


def figures(result: RunResult) -> dict[str, float | None]:
    """The per-run figures the summary takes medians and ranges of (one value per metric)."""
    udp = result.udp
    out: dict[str, float | None] = {
        "tcp_mbps": result.throughput_mbps,
        "retransmits": float(result.retransmits),
        "idle_p50_ms": percentile(result.idle_rtt_ms, 50),
        "idle_p99_ms": percentile(result.idle_rtt_ms, 99),
        "load_p50_ms": percentile(result.load_rtt_ms, 50),
        "load_p99_ms": percentile(result.load_rtt_ms, 99),
        "udp_rx_pps": udp.received_pps if udp else None,
        "udp_tx_pps": udp.sent_pps if udp else None,
        "udp_cpu_us_per_packet": (
            1e6 * sum(udp.cpu_s.values()) / udp.received if udp and udp.cpu_s and udp.received
            else None
        ),
    }  # fmt: skip
    return out


def veth_share(results: dict[str, list[RunResult]]) -> dict[str, list[float | None]]:
    """Each run's TCP throughput as a % of the same round's veth throughput (the ceiling)."""
    ceiling = {r.round: r.throughput_mbps for r in results.get("veth", [])}
    return {
        name: [
            100 * r.throughput_mbps / ceiling[r.round] if ceiling.get(r.round) else None
            for r in runs
        ]
        for name, runs in results.items()
    }


@dataclass
class Summary:
    """Medians and ranges (min, max) over the runs of one target."""

    target: str
    description: str
    runs: int
    median: dict[str, float | None]
    range: dict[str, tuple[float, float] | None]
    per_run: dict[str, list[float | None]]
    """Each metric's value per run, in round order (for paired ratios across targets)."""
    rounds: list[int]
    cpu_pct: dict[str, float]
    """CPU time of each target process during the iperf3 TCP run, in % of one core (median)."""
    cpu_pct_per_gbps: dict[str, float]
    """The same CPU figure divided by that run's throughput in Gbit/s (median over runs): what
    one Gbit/s costs each process, in % of a core. ``total`` sums the processes of a run."""
    udp_cpu_pct: dict[str, float]
    """CPU of each target process during the 64-byte UDP run, in % of one core (median)."""
    udp_drops: dict[str, float]
    """Median over runs of each drop/datagram counter that moved during the UDP run."""
    raw: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    target: Target, results: list[RunResult], share: list[float | None] | None = None
) -> Summary:
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
    udps = [r.udp for r in results if r.udp is not None]
    udp_labels = sorted({label for u in udps for label in u.cpu_s})
    udp_cpu_pct = {
        label: round(
            statistics.median(
                100 * u.cpu_s[label] / u.seconds for u in udps if label in u.cpu_s and u.seconds
            ),
            1,
        )
        for label in udp_labels
    }
    drop_keys = sorted({k for u in udps for k in u.drops})
    udp_drops = {k: statistics.median(u.drops.get(k, 0) for u in udps) for k in drop_keys}
    per_run: dict[str, list[float | None]] = {}
    for r in results:
        for key, value in figures(r).items():
            per_run.setdefault(key, []).append(value)
    if share is not None:
        per_run["veth_share_pct"] = list(share)
    return Summary(
        target=target.name,
        description=target.description,
        runs=len(results),
        median={k: _median(v) for k, v in per_run.items()},
        range={k: _range(v) for k, v in per_run.items()},
        per_run=per_run,
        rounds=[r.round for r in results],
        cpu_pct=cpu_pct,
        cpu_pct_per_gbps=cpu_pct_per_gbps,
        udp_cpu_pct=udp_cpu_pct,
        udp_drops=udp_drops,
        raw=[asdict(r) for r in results],
    )


def run_target_once(
    target: Target,
    seconds: float,
    udp_seconds: float,
    idle_pings: int = 20,
) -> RunResult:
    """Build ``target`` in a fresh lab, measure it once, tear everything down."""
    try:
        with Lab() as lab:
            client, server, addr = target.setup(lab)
            return measure_once(
                client, server, addr, seconds, target.processes(),
                idle_pings=idle_pings, udp_seconds=udp_seconds,
            )  # fmt: skip
    finally:
        # After the lab stopped the target's processes: they may still use its files.
        target.teardown()


def bench_rounds(
    factories: dict[str, Callable[[], Target]],
    rounds: int,
    seconds: float,
    udp_seconds: float,
    idle_pings: int = 20,
    log: Callable[[str], None] = print,
) -> tuple[list[Summary], list[str]]:
    """Interleaved rounds: round r builds and measures every target once, in fresh namespaces,
    in an order rotated by r. Returns one summary per target (in ``factories`` order) and the
    errors of runs that failed (a failed run is left out; the others still count)."""
    names = list(factories)
    results: dict[str, list[RunResult]] = {name: [] for name in names}
    errors: list[str] = []
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            target = factories[name]()
            try:
                result = run_target_once(target, seconds, udp_seconds, idle_pings)
            except (RuntimeError, OSError, AssertionError, subprocess.SubprocessError) as exc:
                errors.append(f"round {r + 1} {name}: {exc}")
                log(f"  round {r + 1}/{rounds} {name}: FAILED: {exc}")
                continue
            result.round = r
            results[name].append(result)
            udp = f", 64-byte UDP {result.udp.received_pps:,.0f}/s" if result.udp else ""
            idle = percentile(result.idle_rtt_ms, 50)
            log(
                f"  round {r + 1}/{rounds} {name}: {result.throughput_mbps:,.0f} Mbit/s, "
                f"idle rtt p50 {idle} ms{udp} (load {result.loadavg[0]:.2f})"
            )
    shares = veth_share(results)
    summaries = [
        summarize(factories[name](), results[name], shares[name] if "veth" in results else None)
        for name in names
        if results[name]
    ]
    return summaries, errors
