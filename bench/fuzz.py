"""Long-mode fuzzer: >= 1,000,000 mutated inputs per target, through the real parsers and cores.

Hypothesis (tests/test_fuzz.py) explores each target cleverly but runs ~1,000 inputs a second; this
runs a plain mutation fuzzer (random byte flips, truncations, extensions, insertions and JSON
tokens on valid seeds, plus some pure random bytes) at tens of thousands a second, over the same
targets (tests/support/fuzz_targets.py) and the same invariants: nothing raised but the documented
error types, nothing answered to junk, every junk packet counted as a drop.

Usage (from the repository root, with the project's venv)::

    PYTHONPATH=src python bench/fuzz.py                  # 1,000,000 inputs per target
    PYTHONPATH=src python bench/fuzz.py -n 100000 -k node --seed 7
    PYTHONPATH=src python bench/fuzz.py --json           # one JSON object per target

Prints, per target: inputs, inputs/s, crashes (goal 0) and the distinct outcomes (drop reasons,
error types) seen. Exit status 1 when any target crashed; the first crashing inputs are written
to ``--crash-dir`` (hex, one file per crash) so they can become hypothesis ``@example``s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fuzz_targets import (  # noqa: E402
    Crash,
    HelloFixture,
    Target,
    byte_targets,
    inputs,
    make_net,
    network_targets,
)

SLOW = {
    "node.websocket.hello": 0.02,
    "chain.NetworkState.apply": 0.05,
    "chain.owner_bodies": 0.05,
    "node.latest_records(store bytes)": 0.02,
    "node.heartbeats(node-signed JSON)": 0.02,
    "store.meta_nodes": 0.02,
}
"""Targets that verify signatures or run an event loop per input (~0.2-1 ms each): they get this
fraction of ``-n`` unless ``--full`` (1,000,000 of them alone would take 10-30 minutes)."""


KNOWN: dict[str, tuple[tuple[str, ...], str]] = {
    # "target name": (("text in the crash message", ...), "issue N.M (fixed on branch hX)"),
}
"""Crashes already filed and fixed on another branch: counted apart (``known``) until merged,
so that ``crashes`` stays the number of new ones (goal 0)."""


def is_known(target: str, crash: Crash) -> bool:
    patterns, _issue = KNOWN.get(target, ((), ""))
    return any(p in str(crash) for p in patterns)


def run_target(
    target: Target, count: int, seed: int, crash_dir: Path | None, max_crashes: int = 5
) -> dict[str, object]:
    rng = random.Random(f"{seed}:{target.name}")
    crashes = known = 0
    examples: list[str] = []
    source = inputs(rng, target.seeds)
    start = time.perf_counter()
    for i, data in enumerate(source):
        if i >= count:
            break
        try:
            target.run(data)
        except Crash as crash:
            if is_known(target.name, crash):
                known += 1
                continue
            crashes += 1
            if len(examples) < max_crashes:
                examples.append(f"{crash} input={data.hex()}")
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{target.name.replace('/', '_')}-{crashes}.hex"
                    (crash_dir / name).write_text(data.hex() + "\n" + str(crash) + "\n")
    elapsed = time.perf_counter() - start
    return {
        "target": target.name,
        "inputs": count,
        "seconds": round(elapsed, 2),
        "inputs_per_s": round(count / elapsed) if elapsed else 0,
        "crashes": crashes,
        "known": known,
        "known_issue": KNOWN[target.name][1] if known else "",
        "outcomes": sorted(target.reasons),
        "examples": examples,
    }


def known_note(result: dict[str, object]) -> str:
    return f" (+{result['known']} known: {result['known_issue']})" if result["known"] else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--inputs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("-k", "--only", default="", help="run targets whose name contains this")
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are repeatable)")
    parser.add_argument("--full", action="store_true", help="slow targets get all -n inputs too")
    parser.add_argument("--json", action="store_true", help="one JSON line per target")
    parser.add_argument("--crash-dir", type=Path, default=None, help="write crashing inputs here")
    args = parser.parse_args(argv)

    import asyncio
    import logging

    # Targets that reach the daemon log what they drop (e.g. "ignoring latest record"): quiet.
    logging.getLogger("atenet").setLevel(logging.ERROR)

    total_crashes = 0
    with tempfile.TemporaryDirectory(prefix="atenet-fuzz-") as tmp:
        net = asyncio.run(make_net(Path(tmp)))
        hello_dir = Path(tmp) / "hello"
        hello_dir.mkdir()
        hello = HelloFixture(hello_dir)
        try:
            from tests.support.fuzz_targets import (
                heartbeat_targets,
                hello_target,
                meta_nodes_target,
            )

            targets = [
                *byte_targets(),
                *network_targets(net),
                hello_target(hello),
                *heartbeat_targets(hello),
                meta_nodes_target(hello),
            ]
            for target in targets:
                if args.only and args.only not in target.name:
                    continue
                count = args.inputs
                if not args.full and target.name in SLOW:
                    count = max(1000, int(count * SLOW[target.name]))
                result = run_target(target, count, args.seed, args.crash_dir)
                total_crashes += int(result["crashes"])  # type: ignore[call-overload]
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    outcomes = result["outcomes"]
                    shown = ", ".join(outcomes[:12])  # type: ignore[index]
                    more = len(outcomes) - 12  # type: ignore[arg-type]
                    print(
                        f"{target.name:34} {result['inputs']:>9,} inputs "
                        f"{result['inputs_per_s']:>8,}/s  crashes {result['crashes']}"
                        f"{known_note(result)}  "
                        f"outcomes: {shown}{f' (+{more})' if more > 0 else ''}",
                        flush=True,
                    )
                    for example in result["examples"]:  # type: ignore[attr-defined]
                        print(f"    CRASH {example[:300]}", flush=True)
        finally:
            hello.close()
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
