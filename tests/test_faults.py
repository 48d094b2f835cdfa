"""Faults, with real processes: the chain store killed and restarted under traffic, a node killed
with SIGKILL and restarted, and a store whose disk is full or read-only.

What must hold (issue 9, "A fault suite"):

* the data plane never waits for the store: frames keep flowing while nats-server is down, and a
  key revoked after it is back takes effect at the node within seconds;
* hosts on a node that was ``kill -9``'ed pass traffic again within seconds of its restart,
  without restarting ``tok connect``;
* a full disk or a read-only store makes ``tok`` and ``atenet`` exit with one line that says
  what is wrong and what to do, no traceback, and nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atenet.client.core import ClientCore
from atenet.overlay.token import AccessToken
from atenet.wire.ethernet import ethernet_frame
from tests.conftest import VENV_BIN, needs_root
from tests.support.loopback_node import free_port
from tests.support.nats_cluster import NatsCluster
from tests.support.netns import Lab
from tests.support.overlay import Overlay, wait_for_text


def cli(
    env: dict[str, str], prog: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / prog), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status != 0, stderr one line naming the problem (``words``), no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# ---------------------------------------------------------------------------- disk full / ro


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs of our own, unmounted in ``finally`` whatever happened."""
    with tempfile.TemporaryDirectory(prefix="atn-faults-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True
        )
        try:
            yield mnt
        finally:
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system is full."""
    path = directory / "filler"
    chunk = bytes(1 << 16)
    with path.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError):  # the last partial block: fill it byte by byte-ish
        with path.open("ab") as f:
            for _ in range(64):
                f.write(bytes(1024))
                f.flush()
    return path


def home_env(home: Path) -> dict[str, str]:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    return env


def run_node(env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``atenet run`` on loopback, expected to fail at start (or be stopped at ``timeout``)."""
    return cli(
        env,
        "atenet",
        "run",
        "--listen",
        "127.0.0.1",
        "--udp-port",
        str(free_port(socket.SOCK_DGRAM)),
        "--http-port",
        str(free_port()),
        timeout=timeout,
    )


@needs_root
def test_disk_full_store_fails_with_one_line_that_says_free_space_and_loses_nothing() -> None:
    with tmpfs("3m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        filler = fill(mnt)

        create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert_one_line_error(create, "disk is full", "free some space")
        node = run_node(env)
        assert_one_line_error(node, "disk is full", "free some space")

        filler.unlink()
        listing = cli(env, "tok", "network", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert [n["name"] for n in json.loads(listing.stdout)] == ["first"]
        again = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert again.returncode == 0, again.stderr


@needs_root
def test_disk_full_under_a_running_node_fails_the_owner_command_cleanly() -> None:
    """The node holds the store open (its WAL files exist), so SQLite gets further before the
    disk refuses: the append itself fails ("database or disk is full")."""
    with tmpfs("3m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        log = mnt.parent / "node.log"
        with log.open("wb") as out:
            node = subprocess.Popen(
                [
                    str(VENV_BIN / "atenet"),
                    "-v",
                    "run",
                    "--listen",
                    "127.0.0.1",
                    "--udp-port",
                    str(free_port(socket.SOCK_DGRAM)),
                    "--http-port",
                    str(free_port()),
                ],
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            wait_for_text(node, log, "serving on udp", 20)
            filler = fill(mnt)
            key = cli(
                env, "tok", "key", "export", "first", "--label", "x", "--node", "127.0.0.1:4799"
            )
            create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
            for proc in (key, create):
                assert_one_line_error(proc, "disk is full", "free some space")
            assert node.poll() is None, "the node died of a full disk"
            filler.unlink()
            again = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
            assert again.returncode == 0, again.stderr
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


@needs_root
def test_read_only_store_fails_with_one_line_that_says_make_it_writable() -> None:
    with tmpfs("16m") as mnt:
        env = home_env(mnt / "home")
        assert cli(env, "atenet", "init").returncode == 0
        assert (
            cli(env, "tok", "network", "create", "first", "--cidr", "10.1.0.0/24").returncode == 0
        )
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        create = cli(env, "tok", "network", "create", "second", "--cidr", "10.2.0.0/24")
        assert_one_line_error(create, "read-only", "make it writable")
        node = run_node(env)
        assert_one_line_error(node, "read-only", "make it writable")
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        listing = cli(env, "tok", "network", "list", "--json")
        assert [n["name"] for n in json.loads(listing.stdout)] == ["first"], listing.stderr
