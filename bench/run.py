"""Network benchmark: throughput, latency and CPU of each target, side by side, in one run.

    sudo .venv/bin/python bench/run.py [--runs 3] [--seconds 10] [--json FILE] [--targets veth,tinc]

Every target is built in its own throwaway namespace lab (see tests/support/netns.py), measured
``--runs`` times, and reported as medians, with each figure's ratio to tinc and to the bare veth.
See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netbench, targets

from netbench import Summary, bench_target
from rich.console import Console
from rich.table import Table
from targets import TARGETS

console = Console()
if not console.is_terminal:  # piped to a file or CI log: do not squeeze the table into 80 columns
    console = Console(width=140)


def ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "–"
    r = value / ref
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def cell(value: float | None, fmt: str, refs: dict[str, float | None]) -> str:
    """A figure and, below it, its ratio to each reference target present in this run."""
    if value is None:
        return "–"
    text = format(value, fmt)
    ratios = " ".join(f"{ratio(value, ref)}{name[0]}" for name, ref in refs.items())
    return f"{text}\n[dim]{ratios}[/dim]" if ratios else text


def table(summaries: list[Summary]) -> Table:
    by_name = {s.target: s for s in summaries}
    references = [name for name in ("tinc", "veth") if name in by_name]
    metrics: list[tuple[str, str, str]] = [
        ("Mbit/s", "throughput_mbps", ",.0f"),
        ("retr", "retransmits", ".0f"),
        ("idle p50 ms", "idle_rtt_median_ms", ".3f"),
        ("idle p99 ms", "idle_rtt_p99_ms", ".3f"),
        ("load p50 ms", "load_rtt_median_ms", ".2f"),
        ("load p99 ms", "load_rtt_p99_ms", ".2f"),
    ]
    ref_note = "".join(f", {n[0]} = ×{n}" for n in references)
    out = Table(title=f"atenet network bench (medians{ref_note})", show_lines=True)
    out.add_column("target")
    for header, _, _ in metrics:
        out.add_column(header, justify="right")
    out.add_column("CPU % of a core", justify="left")
    out.add_column("CPU %/Gbit/s", justify="right")
    for s in summaries:
        row = [s.target]
        for _, attr, fmt in metrics:
            refs = {n: getattr(by_name[n], attr) for n in references}
            row.append(cell(getattr(s, attr), fmt, refs))
        cpu_lines = [f"{k} {v:.0f}%" for k, v in s.cpu_pct.items()]
        if "total" in s.cpu_pct_per_gbps:  # one line per process, aligned with the next column
            cpu_lines.append(f"total {sum(s.cpu_pct.values()):.0f}%")
        row.append("\n".join(cpu_lines) or "–")
        row.append("\n".join(f"{v:,.0f}" for v in s.cpu_pct_per_gbps.values()) or "–")
        out.add_row(*row)
    return out


def machine() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per target (median is shown)")
    parser.add_argument("--seconds", type=float, default=10, help="iperf3 duration per run")
    parser.add_argument("--json", type=Path, help="also write all results (incl. raw) here")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so every lab's finally-teardown runs on SIGTERM too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        console.print("bench/run.py needs root to create network namespaces: run it with sudo")
        return 2
    if not shutil.which("iperf3"):
        console.print("iperf3 is missing: apt-get install iperf3")
        return 2
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        console.print(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    meta = machine() | {"runs": args.runs, "seconds": args.seconds}
    summaries: list[Summary] = []
    try:
        for name in names:
            console.print(f"[bold]{name}[/bold]: {TARGETS[name].description}")
            summaries.append(bench_target(TARGETS[name](), args.runs, args.seconds, console.print))
    except KeyboardInterrupt:
        console.print("interrupted: labs torn down")
        return 130
    console.print(table(summaries))
    if args.json:
        args.json.write_text(
            json.dumps({"meta": meta, "results": [s.as_dict() for s in summaries]}, indent=2)
        )
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
