"""The HTTP guard's bookkeeping without sockets: who counts as loopback, how sources are
grouped for the per-address cap, and that released connections free their slots."""

from __future__ import annotations

import asyncio

from atenet.node.guard import Connection, HttpGuard, is_loopback, source_key


def test_loopback_and_source_grouping() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("") and not is_loopback("junk")
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


def conn(guard: HttpGuard, address: str) -> Connection:
    c = Connection(guard, asyncio.Protocol())
    c.address, c.source = address, source_key(address)
    return c


def test_caps_per_source_and_in_total_and_release() -> None:
    guard = HttpGuard(per_address=3, total=5)
    v6 = [conn(guard, f"2001:db8::{i}") for i in range(4)]
    assert [guard.admit(c) for c in v6] == [True, True, True, False]
    local = [conn(guard, "127.0.0.1") for _ in range(3)]
    assert [guard.admit(c) for c in local] == [True, True, False]  # exempt, but total is 5
    assert guard.drops == {"pending_per_address": 1, "pending_total": 1}
    guard.release(v6[0])
    assert guard.admit(conn(guard, "2001:db8::9"))
    assert guard.pending == 5 and guard.pending_by_address["2001:db8::/64"] == 3
