"""Smoke test of bench/bench_scale.py (issue 11's simulation): the ``--quick`` run, as a user
runs it, prints its table, and a learned unicast frame costs 3 datagrams at every size while a
flooded one costs M·H+M-1 (no timing asserted: the machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_simulation_reports_three_datagrams_per_learned_unicast_frame() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--quick", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["results"]
    assert {(r["nodes"], r["hosts"]) for r in rows} == {(2, 1), (2, 2), (4, 1), (4, 2)}
    for r in rows:
        m, h = r["nodes"], r["hosts"]
        flood_cost = m * h + m - 1  # to every node, and each node to its hosts
        assert r["broadcast"]["datagrams"] == flood_cost
        assert r["broadcast"]["deliveries"] == m * h - 1
        if r["mode"] == "learned":
            assert r["unicast"]["datagrams"] == 3, r
            assert r["unicast"]["seals"] == 3 and r["unicast"]["deliveries"] == 1
        else:
            assert r["unicast"]["datagrams"] == flood_cost, r
        assert r["keys_derived"] == h  # its own hosts' keys only, of m * h
    assert not [f for f in report["goal_failures"] if "datagrams" in f]
