"""Profile an atenet process under iperf3 load with py-spy; print its top functions.

    sudo .venv/bin/python bench/profile_node.py [--target atenet-1node] [--process node-n1]
                                                [--seconds 5] [--top 15] [--out FILE]

Builds the target in a throwaway namespace lab exactly as ``bench/run.py`` does, starts one
iperf3 TCP stream client -> server through it, and after a second of warm-up samples the chosen
process (``node-n1``, ``node-n2``, ``tok-a``, ``tok-b``) with ``py-spy record`` for
``--seconds``. The samples are aggregated per function (``py-spy --function``), idle time (the
event loop waiting in epoll) excluded, and printed twice: by *self* time (samples where the
function is the innermost frame) and by *total* time (samples where it is anywhere on the
stack). py-spy runs ``--nonblocking`` so it does not pause the process it measures.

Needs root, iperf3 and py-spy (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # netbench, targets

from netbench import Lab, wait_listening
from targets import TARGETS, AtenetTarget


def py_spy() -> str:
    """Path of py-spy: next to this interpreter (the venv) or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.is_file() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


def aggregate(collapsed: str) -> tuple[Counter[str], Counter[str], int]:
    """(self samples, total samples, all samples) per frame from py-spy's raw collapsed stacks.

    Each line is ``frame;frame;...;innermost COUNT``; the first frame is the thread name.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:] or stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own, total, samples


def report(title: str, counts: Counter[str], samples: int, top: int) -> str:
    lines = [f"{title} ({samples} samples)", f"{'%':>6}  {'samples':>7}  function (file:line)"]
    for frame, count in counts.most_common(top):
        lines.append(f"{100 * count / samples:6.1f}  {count:7d}  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    atenet_targets = [n for n, t in TARGETS.items() if issubclass(t, AtenetTarget)]
    parser.add_argument("--target", default="atenet-1node", choices=atenet_targets)
    parser.add_argument("--process", default="node-n1", help="node-n1, node-n2, tok-a, tok-b")
    parser.add_argument("--seconds", type=float, default=5.0, help="sampling time")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also keep py-spy's raw collapsed stacks here")
    args = parser.parse_args(argv)
    spy = py_spy()
    target = TARGETS[args.target]()
    assert isinstance(target, AtenetTarget)
    try:
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="atnbench-prof-") as tmp:
            client, server, addr = target.setup(lab)
            pids = target.processes()
            if args.process not in pids:
                raise SystemExit(f"no process {args.process!r} in {args.target}: {sorted(pids)}")
            iperf_s = server.popen(
                ["iperf3", "-s", "-1", "-p", "5201"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_listening(server, 5201)
            load_seconds = args.seconds + 3
            iperf_c = client.popen(
                ["iperf3", "-c", addr, "-p", "5201", "-t", str(load_seconds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            time.sleep(1.0)  # past slow start
            raw = Path(args.out or Path(tmp) / "profile.txt")
            subprocess.run(
                [spy, "record", "--pid", str(pids[args.process]), "--duration",
                 str(round(args.seconds)), "--rate", str(args.rate), "--nonblocking",
                 "--function", "--format", "raw", "--output", str(raw)],
                check=True, capture_output=True, timeout=args.seconds + 60,
            )  # fmt: skip
            out, _ = iperf_c.communicate(timeout=load_seconds + 30)
            lab.stop_process(iperf_s)
            summary = [line for line in out.splitlines() if "receiver" in line]
            own, total, samples = aggregate(raw.read_text())
    finally:
        target.teardown()
    print(f"{args.process} of {args.target} under iperf3 load: {' '.join(summary)}")
    if not samples:
        print("no samples (was the process busy?)")
        return 1
    print(report("by self time", own, samples, args.top))
    print()
    print(report("by total time (on the stack)", total, samples, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
