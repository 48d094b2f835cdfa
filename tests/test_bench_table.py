"""bench/run.py's table (issue 14): medians and ranges per target, the ratio to tinc from the
medians with the same-round ratios beside it, the veth share, and each goal judged "met" or
"MISSED" — from synthetic runs, so no root, no network and no timing is involved."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from netbench import RunResult, Target, UdpResult, summarize, veth_share  # noqa: E402


class Named(Target):
    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, lab: object) -> tuple[object, object, str]:  # pragma: no cover - unused
        raise NotImplementedError


def result(rnd: int, mbps: float, idle: list[float], load: list[float], udp: int) -> RunResult:
    return RunResult(
        throughput_mbps=mbps,
        retransmits=0,
        idle_rtt_ms=idle,
        load_rtt_ms=load,
        udp=UdpResult(sent=udp * 4, received=udp, seconds=1.0),
        round=rnd,
    )


def summaries() -> list[run.Summary]:
    runs = {
        "veth": [result(0, 10_000, [0.05], [0.1], 40_000), result(1, 8_000, [0.05], [0.1], 40_000)],
        "tinc": [result(0, 300, [0.4], [20.0], 30_000), result(1, 200, [0.4], [10.0], 30_000)],
        "atenet-1node": [
            result(0, 1_500, [0.5, 0.6, 5.0], [10.0], 31_000),
            result(1, 900, [0.6, 0.7, 0.8], [30.0], 32_000),
        ],
    }
    shares = veth_share(runs)
    return [summarize(Named(n), r, shares[n]) for n, r in runs.items()]


def test_table_shows_median_range_ratio_and_verdict_per_goal() -> None:
    header, rows = run.rows(summaries())
    assert header == [
        "measure", "veth", "tinc", "atenet-1node", "atenet-1node ÷ tinc", "goal", "met?",
    ]  # fmt: skip
    by_label = {row[0]: row for row in rows}
    tcp = by_label["TCP, one stream, Mbit/s"]
    # median (min–max); ratio of medians 1200/250 = 4.8x, same-round ratios 5x and 4.5x
    assert tcp[3] == "1,200 (900–1,500)"
    assert tcp[4] == "4.80× (4.50×–5.00×)"
    assert tcp[5:] == ["1node ≥ 4×", "met"]
    idle = by_label["idle ping RTT p50, ms"]  # per-run p50 first: 0.6 and 0.7 -> 0.65
    assert idle[3] == "0.650 (0.600–0.700)" and idle[5:] == ["1node ≤ 1.5×", "MISSED"]
    loaded = by_label["ping RTT p99 during TCP, ms"]  # 20 ms vs 15 ms: 1.33x, goal <= 1x
    assert loaded[4].startswith("1.33×") and loaded[6] == "MISSED"
    assert by_label["64-byte UDP received/s"][6] == "met"  # 31,500 vs 30,000
    share = by_label["share of the veth ceiling, %"]  # 15 % and 11.25 % of the same round's veth
    assert share[3] == "13.1 (11.2–15.0)" and share[5:] == ["1node ≥ 12 %", "met"]
    verdicts = {(g["metric"], g["target"]): g["met"] for g in run.goal_report(summaries())}
    assert verdicts[("tcp_mbps", "atenet-1node")] is True
    assert verdicts[("idle_p50_ms", "atenet-1node")] is False


def test_quick_and_bad_arguments() -> None:
    args = run.parse_args(["--quick"])
    assert (args.runs, args.seconds, args.udp_seconds, args.idle_pings) == (1, 3.0, 2.0, 10)
    assert run.parse_args([]).targets == "veth,tinc,atenet-1node,atenet-2node"
