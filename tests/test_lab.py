"""The namespace lab: hosts reach each other over the underlay and teardown leaves nothing."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.conftest import needs_root
from tests.support.netns import Lab, lab_namespaces_alive


def root_links() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


@needs_root
def test_two_hosts_ping_each_other_over_the_underlay(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    assert a.ip != b.ip
    assert a.ping(b.ip, count=2)
    assert b.ping(a.ip, count=2)


@needs_root
def test_unused_address_does_not_answer(lab: Lab) -> None:
    a = lab.add_host("a")
    assert not a.ping("10.201.0.250", count=1, timeout=1)


@needs_root
def test_hosts_live_in_their_own_namespaces_and_root_is_untouched() -> None:
    before = root_links()
    with Lab() as lab:
        a = lab.add_host("a")
        # Python code can run inside a host: it sees the host's devices, not the root's.
        inside = {name for _, name in a.call(socket.if_nameindex)}
        assert inside == {"lo", "eth0"}
        assert root_links() == before, "the lab must not create devices in the root namespace"


@needs_root
def test_teardown_kills_processes_and_removes_namespaces() -> None:
    with Lab() as lab:
        a = lab.add_host("a")
        sleeper = a.popen(["sleep", "60"])
        tag = lab.tag
        assert len(lab_namespaces_alive(tag)) == 2  # bridge + a
    assert sleeper.poll() is not None, "tracked process still running after teardown"
    assert lab_namespaces_alive(tag) == []


@needs_root
def test_teardown_runs_when_the_body_fails() -> None:
    with pytest.raises(subprocess.CalledProcessError), Lab() as lab:
        tag = lab.tag
        lab.add_host("a").run(["false"])
    assert lab_namespaces_alive(tag) == []


@needs_root
def test_two_labs_do_not_collide() -> None:
    with Lab() as one, Lab() as two:
        assert one.tag != two.tag
        a1, a2 = one.add_host("a"), two.add_host("a")
        assert a1.ns != a2.ns
        assert a1.ip == a2.ip  # same subnet, separate underlays
        assert a1.ping(a1.ip)
