"""Real DHCP clients for the lab tests: busybox ``udhcpc`` and ISC ``dhclient`` on a device in a
lab namespace, each with a script that configures the device like a distribution's would and
logs one line per event to a file the test reads (tests/test_dhcp.py, tests/test_dhcp_lab.py).

The scripts never touch the host's /etc/resolv.conf: they only log the DNS servers they got.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Host

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this on each event; configure like a distribution script and log what we got.
event="$1"
case "$event" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" broadcast "$broadcast" dev "$interface"
    # A default route only when offered (the network has internet access); option 121's too.
    if [ -n "$router" ]; then ip route replace default via "$router" dev "$interface"
    else ip route del default dev "$interface" 2>/dev/null; fi
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    echo "$event ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu lease=$lease" >> "$LOG" ;;
esac
"""

DHCLIENT_SCRIPT = """#!/bin/sh
# dhclient-script stand-in: configure the TAP and log, never touching /etc/resolv.conf.
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip -4 addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    if [ -n "$new_routers" ]; then ip route replace default via "$new_routers" dev "$interface"
    else ip route del default dev "$interface" 2>/dev/null; fi
    echo "$reason ip=$new_ip_address mask=$new_subnet_mask router=$new_routers" \
      "dns=$new_domain_name_servers mtu=$new_interface_mtu" >> "$LOG" ;;
esac
"""


def need(*programs: str) -> None:
    """Skip the test when a client program is missing (scripts/setup.sh installs them)."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/setup.sh installs them)")


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def start_udhcpc(host: Host, dev: str, tmp: Path, log: Path, *extra: str) -> subprocess.Popen[Any]:
    """busybox udhcpc in the foreground on ``dev``: 5 discovers 1 s apart, then retry."""
    script = write_script(tmp / "udhcpc.sh", UDHCPC_SCRIPT)
    return host.popen(
        ["env", f"LOG={log}", "busybox", "udhcpc", "-f", "-i", dev, "-s", str(script),
         "-t", "5", "-T", "1", *extra],
    )  # fmt: skip


def start_dhclient(
    host: Host, dev: str, tmp: Path, log: Path, name: str = "dhclient"
) -> subprocess.Popen[Any]:
    """ISC dhclient in the foreground on ``dev``, its lease file ``tmp/NAME.leases`` and its
    stderr in ``tmp/NAME.err``. dhclient runs its script with an empty environment, so the log
    path goes into the script's text."""
    script = write_script(
        tmp / f"{name}.sh", DHCLIENT_SCRIPT.replace('"$LOG"', shlex.quote(str(log)))
    )
    argv = ["dhclient", "-4", "-d", "-v", "-sf", str(script), "-lf", str(tmp / f"{name}.leases"),
            "-pf", str(tmp / f"{name}.pid"), dev]  # fmt: skip
    with open(tmp / f"{name}.err", "a") as err:  # the child keeps its own copy
        return host.popen(argv, stderr=err)


def wait_for_lines(path: Path, n: int, timeout: float = 20) -> list[str]:
    """The file's lines once it has ``n`` (or what it has after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            break
        time.sleep(0.1)
    return path.read_text().splitlines() if path.exists() else []


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM (a DHCP client then exits without releasing its lease), SIGKILL if it lingers."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
