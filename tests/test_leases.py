"""The chain's lease fold (chain/leases.py): every reader resolves lease events the same way."""

from __future__ import annotations

import pytest

from atenet.chain.event import Kind
from atenet.chain.leases import LeaseTable, Pool
from atenet.chain.rules import BodyError, check_body
from atenet.router.dhcp import DhcpServer, Lease

POOL = Pool.of("10.9.8.0/24")
M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def lease(mac: str, ip: str, **extra: object) -> dict[str, object]:
    return {"mac": mac, "ip": ip, "host": "", "node": "n1", "expires": 2e9, **extra}


def test_first_binding_of_an_address_wins_and_reclaims_takes_it_over() -> None:
    table = LeaseTable()
    assert table.apply(3, 1.0, lease(M1, "10.9.8.5"), POOL)
    assert not table.apply(4, 2.0, lease(M2, "10.9.8.5"), POOL)  # the other node lost the race
    assert table.by_ip["10.9.8.5"]["mac"] == M1 and table.by_ip["10.9.8.5"]["seq"] == 3
    assert table.apply(5, 3.0, lease(M2, "10.9.8.5", reclaims=3), POOL)  # names the holder
    assert table.by_ip["10.9.8.5"]["mac"] == M2
    assert table.apply(6, 4.0, lease(M1, "10.9.8.6"), POOL)
    assert table.apply(7, 5.0, lease(M1, "10.9.8.7"), POOL)  # M1 moves: its old address frees
    assert sorted(table.by_ip) == ["10.9.8.5", "10.9.8.7"]
    assert table.ignored == 1


@pytest.mark.parametrize(
    "ip,mac", [("10.9.8.1", M1), ("10.9.8.0", M1), ("10.9.8.255", M1), ("10.9.9.5", M1),
               ("10.9.8.5", "03:00:00:00:00:01")],
)  # fmt: skip
def test_bindings_outside_the_pool_or_for_multicast_macs_bind_nothing(ip: str, mac: str) -> None:
    table = LeaseTable()
    assert not table.apply(3, 1.0, lease(mac, ip), POOL)
    assert table.by_ip == {} and table.ignored == 1


def test_the_dhcp_server_seeded_from_the_fold_agrees_with_one_that_replayed_every_event() -> None:
    events = [
        (3, lease(M1, "10.9.8.5")),
        (4, lease(M2, "10.9.8.5")),
        (5, lease(M2, "10.9.8.9")),
        (6, lease(M1, "10.9.8.5", reclaims=3)),
    ]
    table = LeaseTable()
    replayed = DhcpServer(b"\x01" * 16, "10.9.8.0/24", "10.9.8.1", b"\x02" * 6, 1400)
    for seq, payload in events:
        table.apply(seq, 0.0, payload, POOL)
        replayed.apply_bindings([Lease.from_payload(seq, payload)], 0.0)
    seeded = DhcpServer(b"\x01" * 16, "10.9.8.0/24", "10.9.8.1", b"\x02" * 6, 1400)
    seeded.seed([Lease.from_payload(r["seq"], r) for r in table.values()], 6)
    assert seeded.leases() == replayed.leases()
    assert seeded.last_seq == 6


@pytest.mark.parametrize(
    "payload",
    [
        {"mac": "nope", "ip": "10.9.8.5", "expires": 1.0},
        {"mac": M1, "ip": "10.9.8", "expires": 1.0},
        {"mac": M1, "ip": "10.9.8.5", "expires": float("inf")},
        {"mac": M1, "ip": "10.9.8.5", "expires": True},
        {"mac": M1, "ip": "10.9.8.5", "expires": 1.0, "host": "x" * 65},
        {"mac": M1, "ip": "10.9.8.5", "expires": 1.0, "host": "a\nb"},
        {"mac": M1, "ip": "10.9.8.5", "expires": 1.0, "reclaims": 0},
        {"mac": M1, "ip": "10.9.8.5", "expires": 1.0, "reclaims": "3"},
    ],
)
def test_malformed_lease_bodies_are_refused(payload: dict[str, object]) -> None:
    with pytest.raises(BodyError):
        check_body(Kind.LEASE, payload)
