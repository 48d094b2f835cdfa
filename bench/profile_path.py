"""Where a small packet's time goes, per process on the path: CPU (user / kernel), wake-ups,
syscalls and Python functions, under single pings and under 64-byte UDP.

    sudo .venv/bin/python bench/profile_path.py [--target atenet-1node] [--seconds 5]
                                                [--loads ping,flood,udp64] [--json FILE]

Builds the target in a throwaway namespace lab exactly as ``bench/run.py`` does, then for each
load runs three phases of ``--seconds`` each, so that no tool distorts another's figures:

1. **plain**: the load alone; per process the CPU time split into user and kernel
   (``/proc/PID/task/*/stat``) and the context switches of all its threads (voluntary ones are
   wake-ups from a blocking wait), divided by the packets of the phase; the load's own figure
   (ping RTT, UDP datagrams received).
2. **syscalls**: ``perf trace -s`` on every target process at once: calls per packet and the
   time inside each syscall, per thread (a thread other than the main one in the list means a
   hand-off).
3. **python**: ``py-spy record --native`` on every process at once (native stacks need py-spy
   to pause the process for each sample, so this phase is slower than the others), idle
   excluded, top functions by self time.

Loads: ``idle`` (no traffic: each process's own background work, per second), ``ping`` (one
ping every 10 ms: the idle path, each ping waking every process from its wait), ``flood``
(``ping -f``: the next ping leaves as soon as the reply is back, so one is in flight and the RTT
is the sum of the hops' work), ``udp64`` (``iperf3 -u -l 64 -b 1G``).
Needs root, iperf3, perf and py-spy (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netbench, targets

from netbench import CLK_TCK, Host, Lab, counter_deltas, lab_counters, wait_listening
from profile_node import aggregate, py_spy
from targets import TARGETS

PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
RTT_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
TRACE_LINE = re.compile(r"^\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
THREAD_LINE = re.compile(r"^\s*(\S.*?) \((\d+)\), (\d+) events")


def proc_stats(pid: int) -> dict[str, float]:
    """utime, stime (s) and voluntary / involuntary context switches summed over all threads."""
    out = {"user_s": 0.0, "sys_s": 0.0, "vcsw": 0.0, "ivcsw": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out["user_s"] += int(fields[11]) / CLK_TCK
        out["sys_s"] += int(fields[12]) / CLK_TCK
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                out["vcsw"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                out["ivcsw"] += int(line.split()[1])
    return out


class Load:
    """A traffic generator between the lab's client and server for a number of seconds."""

    def __init__(self, kind: str, client: Host, server: Host, addr: str) -> None:
        self.kind, self.client, self.server, self.addr = kind, client, server, addr
        self.proc: subprocess.Popen[str] | None = None
        self.server_proc: subprocess.Popen[str] | None = None
        self.seconds = 0.0

    def start(self, seconds: float) -> None:
        self.seconds = seconds
        secs = str(round(seconds))
        if self.kind == "udp64":
            self.server_proc = self.server.popen(
                ["iperf3", "-s", "-1", "-J", "-p", "5203"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            wait_listening(self.server, 5203)
            cmd = ["iperf3", "-u", "-l", "64", "-b", "1G", "-c", self.addr, "-p", "5203",
                   "-t", secs, "-J"]  # fmt: skip
        elif self.kind == "idle":
            cmd = ["sleep", secs]
        elif self.kind == "flood":
            cmd = ["ping", "-n", "-q", "-f", "-w", secs, self.addr]
        else:
            cmd = ["ping", "-n", "-q", "-i", "0.01", "-w", secs, self.addr]
        self.proc = self.client.popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def finish(self) -> dict[str, float]:
        """Wait for the load to end; its packets (pings or datagrams received) and RTT/rate."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=60)
        if self.kind == "udp64":
            assert self.server_proc is not None
            server_out, _ = self.server_proc.communicate(timeout=20)
            got = json.loads(server_out or "{}").get("end", {}).get("sum_received", {})
            sent = json.loads(out or "{}").get("end", {}).get("sum_sent", {})
            received = int(got.get("packets", 0)) - int(got.get("lost_packets", 0))
            return {
                "packets": received,
                "sent": int(sent.get("packets", 0)),
                "seconds": float(got.get("seconds", 0) or 0),
            }
        if self.kind == "idle":
            return {"packets": self.seconds}  # "per packet" = per second
        m = PING_RE.search(out)
        rtt = RTT_RE.search(out)
        return {
            "packets": int(m.group(2)) if m else 0,
            "sent": int(m.group(1)) if m else 0,
            "rtt_avg_ms": float(rtt.group(2)) if rtt else 0.0,
            "rtt_min_ms": float(rtt.group(1)) if rtt else 0.0,
        }


def phase_plain(load: Load, pids: dict[str, int], seconds: float, lab: Lab) -> dict[str, Any]:
    before = {label: proc_stats(pid) for label, pid in pids.items()}
    counters = lab_counters(lab)
    load.start(seconds)
    figures = load.finish()
    after = {label: proc_stats(pid) for label, pid in pids.items()}
    drops = counter_deltas(counters, lab_counters(lab))
    packets = figures["packets"] or 1
    per = {
        label: {
            k: round((after[label][k] - before[label][k]) / packets * (1e6 if "_s" in k else 1), 2)
            for k in before[label]
        }
        for label in pids
    }
    return {"load": figures, "per_packet": per, "counters": drops}


def phase_syscalls(
    load: Load, pids: dict[str, int], seconds: float
) -> dict[str, dict[str, dict[str, float]]]:
    """``perf trace -s`` per process during the load: {label: {thread/syscall: figures}}."""
    perf = shutil.which("perf")
    if perf is None:
        return {}
    traces = {
        label: subprocess.Popen(
            [perf, "trace", "-s", "-p", str(pid), "--", "sleep", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for label, pid in pids.items()
    }
    time.sleep(0.3)  # perf attaches
    load.start(seconds)
    figures = load.finish()
    packets = figures["packets"] or 1
    out: dict[str, dict[str, dict[str, float]]] = {"_load": {"load": figures}}
    for label, proc in traces.items():
        text, _ = proc.communicate(timeout=60)
        thread = "?"
        table: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            t = THREAD_LINE.match(line)
            if t:
                thread = f"{t.group(1)}[{t.group(2)}]"
                continue
            m = TRACE_LINE.match(line)
            if m:
                name, calls, errors, total_ms = (
                    m.group(1),
                    int(m.group(2)),
                    int(m.group(3)),
                    float(m.group(4)),
                )
                table[f"{thread} {name}"] = {
                    "per_packet": round(calls / packets, 3),
                    "errors_per_packet": round(errors / packets, 3),
                    "us_each": round(1000 * total_ms / calls, 2) if calls else 0.0,
                }
        out[label] = table
    return out


def phase_python(
    load: Load, pids: dict[str, int], seconds: float, top: int, keep: Path | None
) -> dict[str, list[tuple[float, str]]]:
    spy = py_spy()
    with tempfile.TemporaryDirectory(prefix="atnbench-path-") as tmp:
        outs = {label: Path(tmp) / f"{label}.txt" for label in pids}
        spies = {
            label: subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(round(seconds)),
                    "--rate",
                    "250",
                    "--native",
                    "--function",
                    "--format",
                    "raw",
                    "--output",
                    str(outs[label]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for label, pid in pids.items()
        }
        time.sleep(0.5)
        load.start(seconds)
        load.finish()
        result: dict[str, list[tuple[float, str]]] = {}
        for label, spy_proc in spies.items():
            _, err = spy_proc.communicate(timeout=seconds + 60)
            if not outs[label].exists():
                print(f"py-spy on {label} failed: {err.strip().splitlines()[:1]}", file=sys.stderr)
                continue
            text = outs[label].read_text()
            if keep is not None:
                (keep / f"{load.kind}-{label}.collapsed").write_text(text)
            own, _total, samples = aggregate(text)
            result[label] = [
                (round(100 * n / samples, 1), frame) for frame, n in own.most_common(top)
            ]
            result[label].insert(0, (float(samples), "(samples, idle excluded)"))
    return result


# --- one ping, hop by hop: perf's syscall and scheduler tracepoints -------------------------

NR_EPOLL = {7, 23, 232, 270, 271, 281}  # poll, select, epoll_wait, pselect6, ppoll, epoll_pwait
NR_UDP_SEND = {44, 46, 307}  # sendto, sendmsg, sendmmsg
NR_TAP_SEND = {1, 20}  # write, writev (to a fd above 2: not a log line)
NR_RECVMSG = 47
EVENT_RE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+(\S+):\s+(.*)$")


def path_of(target: Any) -> list[tuple[str, set[int]]]:
    """The request's hops: (process label, the syscalls that pass the packet on), ping to ping.

    The reply takes the same hops back; the last hop of each direction writes to a TAP."""
    pids = target.processes()
    if "tincd-a" in pids:
        forward = [("tincd-a", NR_UDP_SEND), ("tincd-b", NR_TAP_SEND)]
        back = [("tincd-b", NR_UDP_SEND), ("tincd-a", NR_TAP_SEND)]
    else:
        nodes = [f"node-{n}" for _, n in target.client_nodes]
        nodes = list(dict.fromkeys(nodes))
        forward = [("tok-a", NR_UDP_SEND)] + [(n, NR_UDP_SEND) for n in nodes]
        forward.append(("tok-b", NR_TAP_SEND))
        back = [("tok-b", NR_UDP_SEND)] + [(n, NR_UDP_SEND) for n in reversed(nodes)]
        back.append(("tok-a", NR_TAP_SEND))
    return forward + back


def parse_perf(text: str, tids: set[int]) -> dict[int, list[tuple[float, str, int, str]]]:
    """Events per thread: (time, kind, syscall number or woken tid, rest). kinds: enter, exit,
    wakeup (the thread was made runnable), on (it got a CPU)."""
    out: dict[int, list[tuple[float, str, int, str]]] = {t: [] for t in tids}
    for line in text.splitlines():
        m = EVENT_RE.match(line)
        if not m:
            continue
        tid, when, event, rest = int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        if event == "raw_syscalls:sys_enter" and tid in tids:
            nr = int(rest.split()[1])
            out[tid].append((when, "enter", nr, rest))
        elif event == "raw_syscalls:sys_exit" and tid in tids:
            nr = int(rest.split()[1])
            out[tid].append((when, "exit", nr, rest.rsplit("=", 1)[-1].strip()))
        elif event == "sched:sched_wakeup":
            w = re.search(r"pid=(\d+)", rest)
            if w and int(w.group(1)) in tids:
                out[int(w.group(1))].append((when, "wakeup", 0, ""))
        elif event == "sched:sched_switch":
            n = re.search(r"next_pid=(\d+)", rest)
            if n and int(n.group(1)) in tids:
                out[int(n.group(1))].append((when, "on", 0, ""))
    for events in out.values():  # perf script is time-ordered per CPU, not across CPUs
        events.sort(key=lambda e: e[0])
    return out


_TIMES: dict[int, list[float]] = {}
"""Event times per event list (by id), for bisecting: a flood run has thousands of pings."""


def _first(events: list[tuple[float, str, int, str]], after: float, until: float, pred: Any) -> Any:
    """The first event from ``after`` on matching ``pred``, unless it comes after ``until``."""
    times = _TIMES.get(id(events))
    if times is None or len(times) != len(events):
        times = _TIMES[id(events)] = [e[0] for e in events]
    for i in range(bisect.bisect_left(times, after), len(events)):
        e = events[i]
        if e[0] > until:
            return None
        if pred(e):
            return e
    return None


def hop_times(
    events: dict[int, list[tuple[float, str, int, str]]],
    ping_tid: int,
    path: list[tuple[int, str, set[int]]],
) -> list[dict[str, float]]:
    """Per ping, per hop (µs): ``runq`` (made runnable → on a CPU), ``wake`` (the previous
    hop's send returned → this process returned from epoll; includes runq), ``work`` (epoll
    returned → its send syscall entered: reads, Python, crypto), ``send`` (inside the send
    syscall: the kernel path to the next process's socket or the TAP)."""
    pings = []
    ping_events = events[ping_tid]
    starts = [e for e in ping_events if e[1] == "enter" and e[2] in NR_UDP_SEND]
    for i, start in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else start[0] + 0.5
        sent = _first(
            ping_events, start[0], until, lambda e, s=start: e[1] == "exit" and e[2] == s[2]
        )
        if sent is None:
            continue
        prev_exit = sent[0]
        hops: dict[str, float] = {"ping sendto": 1e6 * (sent[0] - start[0])}
        ok = True
        for k, (tid, label, nrs) in enumerate(path):
            ev = events[tid]
            woke = _first(ev, prev_exit, until, lambda e: e[1] == "exit" and e[2] in NR_EPOLL)
            if woke is None:
                ok = False
                break
            wakeup = _first(ev, prev_exit - 0.0005, woke[0], lambda e: e[1] == "wakeup")
            on = _first(ev, wakeup[0], woke[0], lambda e: e[1] == "on") if wakeup else None

            def is_send(e: tuple[float, str, int, str], nrs: set[int] = nrs) -> bool:
                if e[1] != "enter" or e[2] not in nrs:
                    return False
                return e[2] not in NR_TAP_SEND or int(e[3].split("(")[1].split(",")[0], 16) > 2

            send = _first(ev, woke[0], until, is_send)
            if send is None:
                ok = False
                break
            done = _first(ev, send[0], until, lambda e, s=send: e[1] == "exit" and e[2] == s[2])
            if done is None:
                ok = False
                break
            inside, calls, opened = 0.0, 0, 0.0
            times = _TIMES[id(ev)]
            lo, hi = bisect.bisect_left(times, woke[0]), bisect.bisect_left(times, send[0])
            for e in ev[lo:hi]:  # syscalls between the wake-up and the send: reads, EAGAINs
                if e[1] == "enter":
                    opened = e[0]
                elif e[1] == "exit" and opened:
                    inside += e[0] - opened
                    calls += 1
                    opened = 0.0
            name = f"{k + 1}. {label}"
            hops[f"{name} wake"] = 1e6 * (woke[0] - prev_exit)
            hops[f"{name} runq"] = 1e6 * (on[0] - wakeup[0]) if on and wakeup else 0.0
            hops[f"{name} work"] = 1e6 * (send[0] - woke[0])
            hops[f"{name} work in syscalls"] = 1e6 * inside
            hops[f"{name} syscalls in work"] = calls
            hops[f"{name} send"] = 1e6 * (done[0] - send[0])
            prev_exit = done[0]
        if not ok:
            continue
        got = _first(
            ping_events, prev_exit, until + 0.5,
            lambda e: e[1] == "exit" and e[2] == NR_RECVMSG and not e[3].startswith("-"),
        )  # fmt: skip
        if got is None:
            continue
        hops["ping wake (recvmsg returns)"] = 1e6 * (got[0] - prev_exit)
        hops["total (ping sendto → recvmsg)"] = 1e6 * (got[0] - start[0])
        pings.append(hops)
    return pings


def phase_timeline(
    target: Any, client: Host, addr: str, seconds: float, interval: float
) -> dict[str, Any]:
    """Single pings every ``interval`` s (0: ``ping -f``, the next as soon as the reply is back),
    traced system-wide with perf: the median µs per hop."""
    perf = shutil.which("perf")
    if perf is None:
        return {}
    pids = target.processes()
    path = path_of(target)
    with tempfile.TemporaryDirectory(prefix="atnbench-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        ping = client.popen(
            ["ping", "-n", "-q", *(["-i", str(interval)] if interval else ["-f"]),
             "-w", str(round(seconds + 2)), addr],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        subprocess.run(
            [perf, "record", "-q", "-a", "-o", str(data), "-e",
             "raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_wakeup,sched:sched_switch",
             "--", "sleep", str(seconds)],
            capture_output=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        ping.wait(timeout=seconds + 10)
        text = subprocess.run(
            [perf, "script", "-i", str(data), "-F", "tid,time,event,trace"],
            capture_output=True, text=True, timeout=300, check=False,
        ).stdout  # fmt: skip
    tids = {ping.pid, *pids.values()}
    events = parse_perf(text, tids)
    pings = hop_times(events, ping.pid, [(pids[label], label, nrs) for label, nrs in path])
    keys = list(pings[0]) if pings else []
    medians = {k: round(statistics.median(p[k] for p in pings), 1) for k in keys}
    return {"pings": len(pings), "median_us": medians}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="atenet-1node", choices=list(TARGETS))
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--loads", default="idle,ping,flood,udp64")
    parser.add_argument("--phases", default="plain,syscalls,timeline,python")
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="directory for py-spy's collapsed stacks")
    args = parser.parse_args(argv)
    target = TARGETS[args.target]()
    phases = args.phases.split(",")
    report: dict[str, Any] = {"target": args.target, "loadavg": [], "loads": {}}
    try:
        with Lab() as lab:
            client, server, addr = target.setup(lab)
            pids = target.processes()
            for kind in args.loads.split(","):
                load = Load(kind, client, server, addr)
                entry: dict[str, Any] = {}
                loadavg = Path("/proc/loadavg").read_text().split()[:3]
                report["loadavg"].append((kind, loadavg))
                if "plain" in phases:
                    entry["plain"] = phase_plain(load, pids, args.seconds, lab)
                    print(f"== {kind} plain: {json.dumps(entry['plain'], indent=1)}", flush=True)
                if "syscalls" in phases:
                    entry["syscalls"] = phase_syscalls(load, pids, args.seconds)
                    print(f"== {kind} syscalls: {json.dumps(entry['syscalls'], indent=1)}")
                if "timeline" in phases and kind in ("ping", "flood"):
                    gap = 0.05 if kind == "ping" else 0.0
                    entry["timeline"] = phase_timeline(target, client, addr, args.seconds, gap)
                    print(f"== timeline: {json.dumps(entry['timeline'], indent=1)}", flush=True)
                if "python" in phases and pids:
                    entry["python"] = phase_python(load, pids, args.seconds, args.top, args.keep)
                    for label, rows in entry["python"].items():
                        print(f"== {kind} py-spy {label}:")
                        for pct, frame in rows:
                            print(f"  {pct:6.1f}  {frame}")
                sys.stdout.flush()
                report["loads"][kind] = entry
    finally:
        target.teardown()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
