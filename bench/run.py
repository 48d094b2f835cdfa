"""Network benchmark: every row of issue 14's table, side by side with tinc, in one run.

    sudo .venv/bin/python bench/run.py [--runs 3] [--seconds 10] [--udp-seconds 5] [--quick]
                                       [--targets veth,tinc,...] [--json FILE] [--markdown FILE]

Interleaved rounds: round r builds every target once in fresh namespaces (see
tests/support/netns.py), in an order rotated by r, and measures one TCP stream with pings
alongside, idle pings and the 64-byte UDP packet rate. The table shows each figure's median and
range (min–max) over rounds, its ratio to tinc (the ratio of the medians, and in brackets the
range of the same-round ratios) and the issue's goal. See bench/README.md for every column.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netbench, targets

from netbench import Summary, bench_rounds
from rich.console import Console
from rich.table import Table
from targets import DEFAULT_TARGETS, TARGETS

console = Console()
if not console.is_terminal:  # piped to a file or CI log: do not squeeze the table into 80 columns
    console = Console(width=180)


@dataclass(frozen=True)
class Goal:
    """One of issue 14's goals: a bound on the ratio to tinc (``ratio``) or on the figure itself."""

    op: str
    """``>=`` or ``<=``."""
    value: float
    ratio: bool = True

    def met(self, figure: float) -> bool:
        return figure >= self.value if self.op == ">=" else figure <= self.value

    def __str__(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {self.value:g}×" if self.ratio else f"{sign} {self.value:g} %"


ONE, TWO = "atenet-1node", "atenet-2node"

METRICS: list[tuple[str, str, str, dict[str, Goal]]] = [
    # key, label, format, goal per target (from issue 14's table)
    ("tcp_mbps", "TCP, one stream, Mbit/s", ",.0f", {ONE: Goal(">=", 4), TWO: Goal(">=", 3)}),
    ("retransmits", "TCP retransmits", ",.0f", {}),
    ("idle_p50_ms", "idle ping RTT p50, ms", ".3f", {ONE: Goal("<=", 1.5), TWO: Goal("<=", 2)}),
    ("idle_p99_ms", "idle ping RTT p99, ms", ".3f", {}),
    ("load_p50_ms", "ping RTT p50 during TCP, ms", ".2f", {}),
    ("load_p99_ms", "ping RTT p99 during TCP, ms", ".2f", {ONE: Goal("<=", 1), TWO: Goal("<=", 1)}),
    ("udp_rx_pps", "64-byte UDP received/s", ",.0f", {ONE: Goal(">=", 1)}),
    ("udp_tx_pps", "64-byte UDP sent/s (iperf3 -c)", ",.0f", {}),
    ("udp_cpu_us_per_packet", "CPU µs / UDP packet received", ".1f", {}),
    (
        "veth_share_pct",
        "share of the veth ceiling, %",
        ".1f",
        {ONE: Goal(">=", 12, ratio=False), TWO: Goal(">=", 12, ratio=False)},
    ),
]
"""The rows. ``udp_cpu_us_per_packet`` is the target processes' CPU time during the UDP run
divided by the datagrams received (not defined for veth: no process)."""


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def paired_ratios(s: Summary, ref: Summary, key: str) -> list[float]:
    """The same round's figure of ``s`` divided by ``ref``'s, for rounds where both ran."""
    theirs = dict(zip(ref.rounds, ref.per_run.get(key, []), strict=False))
    out = []
    for rnd, value in zip(s.rounds, s.per_run.get(key, []), strict=False):
        base = theirs.get(rnd)
        if value is not None and base:
            out.append(value / base)
    return out


def ratio_to(s: Summary, ref: Summary | None, key: str) -> tuple[float | None, list[float]]:
    """(ratio of the medians, the same-round ratios) of ``s`` to ``ref``."""
    if ref is None:
        return None, []
    mine, base = s.median.get(key), ref.median.get(key)
    whole = mine / base if mine is not None and base else None
    return whole, paired_ratios(s, ref, key)


def figure_text(s: Summary, key: str, spec: str) -> str:
    median, span = s.median.get(key), s.range.get(key)
    if median is None:
        return "–"
    if span is None or s.runs < 2:
        return fmt(median, spec)
    return f"{fmt(median, spec)} ({fmt(span[0], spec)}–{fmt(span[1], spec)})"


def rows(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    """The table as text: a header and one row per metric (shared by the console and markdown)."""
    by_name = {s.target: s for s in summaries}
    tinc = by_name.get("tinc")
    compared = [s for s in summaries if s.target not in ("tinc", "veth")]
    header = ["measure", *(s.target for s in summaries)]
    header += [f"{s.target} ÷ tinc" for s in compared] + ["goal", "met?"]
    out = []
    for key, label, spec, goals in METRICS:
        row = [label, *(figure_text(s, key, spec) for s in summaries)]
        verdicts, goal_texts = [], []
        for s in compared:
            whole, paired = ratio_to(s, tinc, key)
            text = fmt_ratio(whole)
            if len(paired) > 1:
                text += f" ({fmt_ratio(min(paired))}–{fmt_ratio(max(paired))})"
            row.append(text)
            goal = goals.get(s.target)
            if goal is None:
                continue
            figure = whole if goal.ratio else s.median.get(key)
            goal_texts.append(f"{s.target.removeprefix('atenet-')} {goal}")
            if figure is None:
                verdicts.append("?")
            else:
                verdicts.append("met" if goal.met(figure) else "MISSED")
        row += ["; ".join(goal_texts) or "", " / ".join(verdicts)]
        out.append(row)
    return header, out


def goal_report(summaries: list[Summary]) -> list[dict[str, Any]]:
    """Each goal, the figure it is judged on and whether it is met (for ``--json``)."""
    by_name = {s.target: s for s in summaries}
    report = []
    for key, _, _, goals in METRICS:
        for target, goal in goals.items():
            s = by_name.get(target)
            if s is None:
                continue
            figure = ratio_to(s, by_name.get("tinc"), key)[0] if goal.ratio else s.median.get(key)
            report.append(
                {
                    "metric": key,
                    "target": target,
                    "goal": str(goal),
                    "figure": figure,
                    "met": None if figure is None else goal.met(figure),
                }
            )
    return report


def console_table(summaries: list[Summary], title: str) -> Table:
    header, body = rows(summaries)
    table = Table(title=title, show_lines=True)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    return table


def markdown(summaries: list[Summary]) -> str:
    header, body = rows(summaries)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def details(s: Summary) -> list[str]:
    """CPU per process (TCP and UDP runs) and where the 64-byte datagrams went (median deltas)."""
    lines = [f"{s.target}:"]
    if s.cpu_pct:
        tcp = ", ".join(f"{k} {v:.0f}%" for k, v in s.cpu_pct.items())
        per = ", ".join(f"{k} {v:,.0f}" for k, v in s.cpu_pct_per_gbps.items())
        lines.append(f"  CPU during TCP (% of a core): {tcp}; per Gbit/s: {per}")
    if s.udp_cpu_pct:
        udp = ", ".join(f"{k} {v:.0f}%" for k, v in s.udp_cpu_pct.items())
        lines.append(f"  CPU during 64-byte UDP (% of a core): {udp}")
    shown = {
        k: v
        for k, v in s.udp_drops.items()
        if not k.split(":")[1].startswith("lo.")
        and (not k.startswith("br:") or "drop" in k or "error" in k.lower())
    }
    if shown:
        lines.append("  64-byte UDP run, counters moved (median over runs):")
        lines += [f"    {k} {v:,.0f}" for k, v in shown.items()]
    return lines


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
    parser.add_argument(
        "--runs", "--rounds", type=int, default=3, help="interleaved rounds (default 3)"
    )
    parser.add_argument("--seconds", type=float, default=10, help="iperf3 TCP run, s (10)")
    parser.add_argument("--udp-seconds", type=float, default=5, help="64-byte UDP run, s (5)")
    parser.add_argument("--idle-pings", type=int, default=50, help="idle pings per run (50)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 round, 3 s TCP, 2 s UDP, 10 pings"
    )
    parser.add_argument("--json", type=Path, help="also write all results (incl. raw) here")
    parser.add_argument("--markdown", type=Path, help="also write the main table as markdown")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)})",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.udp_seconds, args.idle_pings = 1, 3.0, 2.0, 10
    if args.runs < 1 or args.seconds < 2 or args.udp_seconds < 0 or args.idle_pings < 1:
        parser.error("--runs >= 1, --seconds >= 2, --udp-seconds >= 0, --idle-pings >= 1")
    return args


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
    if unknown or not names:
        console.print(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    meta = machine() | {
        "rounds": args.runs,
        "seconds": args.seconds,
        "udp_seconds": args.udp_seconds,
        "idle_pings": args.idle_pings,
        "targets": names,
    }
    for name in names:
        console.print(f"[bold]{name}[/bold]: {TARGETS[name].description}")
    try:
        summaries, errors = bench_rounds(
            {name: TARGETS[name] for name in names},
            args.runs,
            args.seconds,
            args.udp_seconds,
            args.idle_pings,
            console.print,
        )
    except KeyboardInterrupt:
        console.print("interrupted: labs torn down")
        return 130
    meta["loadavg_at_end"] = os.getloadavg()
    load = f"load {meta['loadavg_at_start'][0]:.2f} → {meta['loadavg_at_end'][0]:.2f}"
    title = (
        f"atenet network bench: medians (min–max) over {args.runs} interleaved round(s), "
        f"ratios to tinc; {load}"
    )
    console.print(console_table(summaries, title))
    for s in summaries:
        console.print("\n".join(details(s)), markup=False, highlight=False)
    for error in errors:
        console.print(f"[red]failed[/red]: {error}")
    if args.markdown:
        args.markdown.write_text(f"{title}\n\n{markdown(summaries)}\n")
        console.print(f"markdown table written to {args.markdown}")
    if args.json:
        result = {
            "meta": meta,
            "goals": goal_report(summaries),
            "errors": errors,
            "results": [s.as_dict() for s in summaries],
        }
        args.json.write_text(json.dumps(result, indent=2))
        console.print(f"results written to {args.json}")
    missing = [n for n in names if n not in {s.target for s in summaries}]
    if missing:
        console.print(f"no run of {', '.join(missing)} succeeded")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
