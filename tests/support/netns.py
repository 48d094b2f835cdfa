"""A throwaway network lab made of Linux network namespaces, for integration tests and the bench.

``Lab`` builds an isolated "underlay": one namespace holding a Linux bridge, and one namespace
per host, each joined to the bridge by a veth pair and given an address from a private test
subnet. Nothing is configured in the root namespace: every veth is created inside the bridge
namespace with its peer born directly in the host namespace, so the only trace a lab leaves on
the machine is its namespaces — and ``close()`` deletes those (which deletes their devices).

Names are unique per lab (pid + random tag), so parallel tests and sessions never collide, and
teardown runs in ``finally`` blocks, also on failure and Ctrl-C: processes first (by PID,
SIGTERM then SIGKILL), then namespaces.

Used by tests (the ``lab`` fixture) and by ``bench/run.py``, which puts the repository root on
``sys.path`` and does ``from tests.support.netns import Lab``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

try:  # the bench imports this module without needing pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

T = TypeVar("T")

UNDERLAY = ipaddress.IPv4Network("10.201.0.0/24")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

Cmd = str | Sequence[str]


def _argv(cmd: Cmd) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]


def _ip(*args: str) -> None:
    """Run one iproute2 command; a failure raises with iproute2's own message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _setns(ns: str) -> None:
    """Move the *calling thread* into namespace ``ns`` (os.setns only exists from Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a fresh thread that lives in namespace ``ns``; return its result.

    Network namespaces are per thread, so the caller's own namespace is never touched. Sockets
    and TAP fds opened by ``fn`` stay bound to ``ns`` and remain usable from any thread after.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            _setns(ns)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class Host:
    """One namespace on the lab's underlay: ``ns`` is its name, ``ip`` its underlay IPv4."""

    def __init__(self, lab: Lab, name: str, ns: str, ip: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ip = ip
        self.dev = "eth0"
        """The host's underlay interface (inside its namespace)."""

    def run(
        self, cmd: Cmd, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to completion in this namespace; output captured as text."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *_argv(cmd)], timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            )
        return proc

    def popen(self, cmd: Cmd, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` in this namespace; the lab stops it at teardown.

        ``ip netns exec`` execs the command in place, so the Popen's PID is the command's own.
        """
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *_argv(cmd)], **kw)
        self.lab._procs.append(proc)
        return proc

    def ping(self, addr: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``addr`` answers at least one of ``count`` pings within ``timeout`` seconds."""
        proc = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(max(1, round(timeout))),
             addr],
            check=False,
            timeout=timeout + 5,
        )  # fmt: skip
        return proc.returncode == 0

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a Python function inside this namespace (see :func:`in_netns`)."""
        return in_netns(self.ns, fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<Host {self.name} ns={self.ns} ip={self.ip}>"


class Lab:
    """An isolated underlay: a bridge namespace plus hosts added with :meth:`add_host`.

    Use as a context manager (or the ``lab`` pytest fixture); everything it created is removed
    on exit, whatever happened inside.
    """

    def __init__(self, subnet: str | ipaddress.IPv4Network = UNDERLAY) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self.tag = f"atnlab{os.getpid()}{secrets.token_hex(2)}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._addresses: Iterator[ipaddress.IPv4Address] = self.subnet.hosts()
        self._open = False
        self._gateway = ""

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the bridge namespace and its bridge ``br0``."""
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        self._open = True

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """Add namespace ``<tag>-<name>`` with ``eth0`` on the bridge and the next free address."""
        if not self._open:
            raise RuntimeError("Lab not started: use `with Lab() as lab:`")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists in this lab")
        ns = f"{self.tag}-{name}"
        ip = str(next(self._addresses))
        port = f"p{len(self.hosts)}"
        self._add_ns(ns)
        # Both veth ends are born inside lab namespaces: nothing ever appears in the root netns.
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", ns)  # fmt: skip
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        host = Host(self, name, ns, ip)
        self.hosts[name] = host
        return host

    def give_default_route(self, host: Host) -> str:
        """Give ``host`` a default route via the bridge side, as a machine on a LAN has: ``br0``
        gets the subnet's last address (once) and ``host`` routes everything through it.
        Returns the gateway address. Nothing leaves the lab: the bridge namespace has no route
        further out."""
        gateway = str(self.subnet.broadcast_address - 1)
        if not self._gateway:
            _ip("-n", self.bridge_ns, "addr", "add", f"{gateway}/{self.subnet.prefixlen}",
                "dev", "br0")  # fmt: skip
            self._gateway = gateway
        _ip("-n", host.ns, "route", "add", "default", "via", gateway, "dev", host.dev)
        return gateway

    def stop_process(self, proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
        """Stop one tracked process by PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        """Stop tracked processes, then delete every namespace this lab created."""
        self._open = False
        errors: list[str] = []
        for proc in list(reversed(self._procs)):
            try:
                self.stop_process(proc)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"pid {proc.pid}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                _ip("netns", "del", ns)
            except Exception as exc:
                errors.append(str(exc))
        self._namespaces.clear()
        self.hosts.clear()
        if errors:
            raise RuntimeError("lab teardown incomplete: " + "; ".join(errors))

    @property
    def namespaces(self) -> list[str]:
        """Namespaces currently owned by this lab (empty after :meth:`close`)."""
        return list(self._namespaces)


def lab_namespaces_alive(tag: str) -> list[str]:
    """Namespaces on the machine whose name starts with ``tag`` (for leak checks)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(tag)]


if pytest is not None:

    @pytest.fixture
    def lab() -> Iterator[Lab]:
        """A fresh :class:`Lab`, torn down after the test; skips the test when not root."""
        if os.geteuid() != 0:
            pytest.skip("needs root: creates network namespaces")
        with Lab() as the_lab:
            yield the_lab
