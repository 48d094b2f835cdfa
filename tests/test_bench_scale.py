"""bench/bench_scale.py's quick mode runs (a smoke test: the real figures are in bench/RESULTS.md)
and shows the learning switch's point: a unicast frame crosses 3 datagrams at every size, where
flooding it costs M·H + M − 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_scale_bench_meets_its_goals(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "goals: met" in run.stdout
    for r in json.loads(out.read_text()):
        m, h = r["M"], r["H"]
        assert r["learned"]["unicast"]["datagrams"] == 3
        assert r["learned"]["unicast"]["delivered"] == 1
        assert r["flood"]["unicast"]["datagrams"] == m * h + m - 1
