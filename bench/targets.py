"""The things the bench compares. Add a target: subclass ``Target`` and list it in ``TARGETS``.

* ``veth``  — host A to host B straight over the lab's underlay: the kernel's own path, the
  ceiling no overlay can beat on this machine.
* ``tinc``  — tinc 1.0 in switch mode (a userspace Ethernet switch over UDP, like atenet): the
  reference overlay to beat.
* ``pyrelay`` — two TAP devices joined by a Python loop: the floor cost of a Python TAP path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netbench import Host, Lab, Target  # netbench puts the repo root on sys.path

OVERLAY_PREFIX = "10.202.0"


class VethTarget(Target):
    name = "veth"
    description = "bare veth + Linux bridge (kernel path, the physical limit)"

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        a, b = lab.add_host("a"), lab.add_host("b")
        if not a.ping(b.ip, count=1, timeout=3):
            raise RuntimeError("underlay does not forward: veth/bridge setup failed")
        return a, b, b.ip


def ensure_tincd() -> str:
    """Path of tincd; installs the Debian package when root and missing."""
    found = shutil.which("tincd") or (Path("/usr/sbin/tincd").is_file() and "/usr/sbin/tincd")
    if found:
        return str(found)
    subprocess.run(["apt-get", "install", "-y", "-q", "tinc"], check=True, timeout=600)
    found = shutil.which("tincd") or "/usr/sbin/tincd"
    return str(found)


PMTU_RE = re.compile(r" (\S+) at \S+ .*? pmtu (\d+) \(min (\d+) max (\d+)\)")


class TincTarget(Target):
    """Two tincd 1.0 daemons in switch mode, one per host namespace, default cipher and digest.

    Each daemon gets its own config dir (RSA keys made by ``tincd -K``), its own TAP (named by
    ``Interface``) and an overlay address set by ``tinc-up``. ``a`` connects to ``b`` over the
    underlay. Before measuring, the bench waits until tinc's path-MTU discovery has settled:
    until then tinc 1.0 sends large packets over its TCP meta connection, not UDP.
    """

    name = "tinc"
    description = "tinc 1.0 switch mode, 2 daemons, default cipher/digest (aes-256-cbc/sha256)"

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pids: dict[str, int] = {}

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        tincd = ensure_tincd()
        a, b = lab.add_host("a"), lab.add_host("b")
        self._tmp = tempfile.TemporaryDirectory(prefix="atnbench-tinc-")
        root = Path(self._tmp.name)
        nodes = {"a": (a, f"{OVERLAY_PREFIX}.1"), "b": (b, f"{OVERLAY_PREFIX}.2")}
        for node, (host, overlay) in nodes.items():
            conf = root / node
            (conf / "hosts").mkdir(parents=True)
            lines = [f"Name = {node}", "Mode = switch", "Interface = tinc0"]
            if node == "a":
                lines.append("ConnectTo = b")
            (conf / "tinc.conf").write_text("\n".join(lines) + "\n")
            (conf / "hosts" / node).write_text(f"Address = {host.ip}\nPort = 655\n")
            up = conf / "tinc-up"
            up.write_text(
                f"#!/bin/sh\nip addr add {overlay}/24 dev $INTERFACE\nip link set $INTERFACE up\n"
            )
            up.chmod(0o755)
            # -K asks for file names only on a terminal; with stdin closed it uses the defaults.
            subprocess.run(
                [tincd, "-c", str(conf), "-K2048"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=True,
                timeout=60,
            )
        for node in nodes:  # each side needs the other's host file (with its public key)
            other = "b" if node == "a" else "a"
            shutil.copy(root / other / "hosts" / other, root / node / "hosts" / other)
        for node, (host, _) in nodes.items():
            conf = root / node
            proc = host.popen(
                [tincd, "-c", str(conf), "-D", "-d0", f"--pidfile={conf}/tincd.pid",
                 f"--logfile={conf}/tincd.log"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self._pids[f"tincd-{node}"] = proc.pid
        server_ip = nodes["b"][1]
        self._wait_ready(a, b, server_ip, root)
        return a, b, server_ip

    def _wait_ready(
        self, a: Host, b: Host, server_ip: str, root: Path, timeout: float = 30
    ) -> None:
        end = time.monotonic() + timeout
        while not a.ping(server_ip, count=1, timeout=1):
            if time.monotonic() > end:
                log = (root / "a" / "tincd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tinc overlay never came up; tincd-a log:\n{log}")
        # SIGUSR2 makes tinc 1.0 log its node list with each node's path-MTU state.
        for node, peer in (("a", "b"), ("b", "a")):
            pid, log = self._pids[f"tincd-{node}"], root / node / "tincd.log"
            while True:
                os.kill(pid, signal.SIGUSR2)
                time.sleep(0.5)
                states = {m[0]: (int(m[2]), int(m[3])) for m in PMTU_RE.findall(log.read_text())}
                lo_hi = states.get(peer)
                if lo_hi and lo_hi[0] > 0 and lo_hi[0] >= lo_hi[1]:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"tinc path MTU {node}->{peer} never settled: {lo_hi}")
                # Traffic keeps the probes going; a ping also refreshes the UDP path.
                a.ping(server_ip, count=1, timeout=1)

    def processes(self) -> dict[str, int]:
        return dict(self._pids)

    def teardown(self) -> None:
        # The lab stops the daemons (it tracks their Popen); only the config dir is ours.
        self._pids.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class PyRelayTarget(Target):
    """Two TAPs (one per host) joined by one Python process (``bench/taprelay.py``)."""

    name = "pyrelay"
    description = "two TAPs joined by a Python read_batch/write loop (no UDP, no crypto)"

    def __init__(self) -> None:
        self._pids: dict[str, int] = {}

    def setup(self, lab: Lab) -> tuple[Host, Host, str]:
        a, b = lab.add_host("a"), lab.add_host("b")
        script = Path(__file__).resolve().parent / "taprelay.py"
        proc = a.popen(
            [sys.executable, str(script), a.ns, f"{OVERLAY_PREFIX}.1/24",
             b.ns, f"{OVERLAY_PREFIX}.2/24"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("taprelay.py did not start (see its stderr)")
        self._pids["relay"] = proc.pid
        server_ip = f"{OVERLAY_PREFIX}.2"
        if not a.ping(server_ip, count=3, timeout=5):
            raise RuntimeError("no ping through the Python relay")
        return a, b, server_ip

    def processes(self) -> dict[str, int]:
        return dict(self._pids)


TARGETS: dict[str, type[Target]] = {
    VethTarget.name: VethTarget,
    TincTarget.name: TincTarget,
    PyRelayTarget.name: PyRelayTarget,
}
"""Registry: ``--targets`` picks from these, in this order. Later: atenet-1node, atenet-2node."""
