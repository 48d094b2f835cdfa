"""Hash-derived addresses: fixed formulas, never a reserved address, always inside the CIDR."""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atenet import addressing
from atenet.errors import AtenetError

NETWORK_ID = bytes(range(16))
MAC = bytes.fromhex("02aabbccddee")

network_ids = st.binary(min_size=16, max_size=16)
macs = st.binary(min_size=6, max_size=6)


def test_stable_mac_is_the_documented_formula() -> None:
    # Pinned so an accidental change of formula (which renumbers every deployed host) fails.
    digest = hashlib.sha256(b"atenet/v1 mac" + NETWORK_ID + b"host-1").digest()
    expected = bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]
    assert addressing.stable_mac(NETWORK_ID, b"host-1") == expected


@given(network_ids, st.binary(max_size=40))
def test_stable_mac_is_locally_administered_unicast(network_id: bytes, host_key: bytes) -> None:
    mac = addressing.stable_mac(network_id, host_key)
    assert len(mac) == 6
    assert mac[0] & 0x02, "locally administered bit must be set"
    assert not mac[0] & 0x01, "group bit must be clear"
    assert mac == addressing.stable_mac(network_id, host_key)


def test_stable_mac_differs_per_network_and_per_host() -> None:
    other_network = bytes(16)
    assert addressing.stable_mac(NETWORK_ID, b"a") != addressing.stable_mac(NETWORK_ID, b"b")
    assert addressing.stable_mac(NETWORK_ID, b"a") != addressing.stable_mac(other_network, b"a")


def test_host_identity_reads_the_first_non_empty_machine_id(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    machine_id = tmp_path / "machine-id"
    machine_id.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    missing = tmp_path / "missing"
    assert addressing.host_identity((missing, empty, machine_id)) == (
        b"0123456789abcdef0123456789abcdef"
    )


def test_host_identity_falls_back_to_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addressing.socket, "gethostname", lambda: "box-7")
    assert addressing.host_identity((tmp_path / "missing",)) == b"box-7"


def test_ipv4_for_is_the_documented_formula() -> None:
    digest = hashlib.sha256(b"atenet/v1 ipv4" + NETWORK_ID + MAC).digest()
    host = 2 + int.from_bytes(digest, "big") % 253
    assert addressing.ipv4_for(NETWORK_ID, MAC, "10.9.8.0/24") == IPv4Interface(f"10.9.8.{host}/24")


@pytest.mark.parametrize("cidr", ["10.1.2.0/24", "172.16.0.0/16", "192.168.7.4/30", "10.0.0.16/28"])
@given(network_id=network_ids, mac=macs)
def test_ipv4_for_stays_inside_and_avoids_reserved(
    cidr: str, network_id: bytes, mac: bytes
) -> None:
    network = IPv4Network(cidr)
    address = addressing.ipv4_for(network_id, mac, cidr)
    assert address.network == network
    assert address.ip in network
    assert address.ip not in (
        network.network_address,
        network.broadcast_address,
        addressing.gateway_v4(cidr).ip,
    )
    assert address == addressing.ipv4_for(network_id, mac, cidr)


def test_ipv4_for_a_30_has_exactly_one_host() -> None:
    picks = {
        addressing.ipv4_for(NETWORK_ID, bytes([2, 0, 0, 0, 0, i]), "10.0.0.4/30") for i in range(20)
    }
    assert picks == {IPv4Interface("10.0.0.6/30")}


def test_ipv4_for_spreads_over_the_whole_range() -> None:
    cidr = "10.0.0.16/28"  # 13 candidates: .18 .. .30
    picks = {
        addressing.ipv4_for(NETWORK_ID, bytes([2, 0, 0, 0, 0, i]), cidr).ip for i in range(200)
    }
    assert {int(p) & 0xFF for p in picks} == set(range(18, 31))


@pytest.mark.parametrize("cidr", ["10.0.0.0/31", "10.0.0.1/32", "10.0.0.1/24", "fd00::/64", "nope"])
def test_ipv4_for_rejects_unusable_networks(cidr: str) -> None:
    with pytest.raises(AtenetError):
        addressing.ipv4_for(NETWORK_ID, MAC, cidr)


def test_gateways_are_the_first_addresses() -> None:
    assert addressing.gateway_v4("10.4.5.0/24") == IPv4Interface("10.4.5.1/24")
    assert addressing.gateway_v4("172.16.0.0/12") == IPv4Interface("172.16.0.1/12")
    assert addressing.gateway_v6("fd01:2:3:4::/64") == IPv6Interface("fd01:2:3:4::1/64")


def test_ipv6_for_is_the_documented_formula() -> None:
    digest = hashlib.sha256(b"atenet/v1 ipv6" + NETWORK_ID + MAC).digest()
    address = addressing.ipv6_for(NETWORK_ID, MAC, "fd01:2:3:4::/64")
    assert address.network == IPv6Network("fd01:2:3:4::/64")
    assert address.ip.packed[8:] == digest[:8]


@given(network_ids, macs)
def test_ipv6_for_stays_in_the_64_and_avoids_reserved(network_id: bytes, mac: bytes) -> None:
    cidr6 = "fd9a:bc12:3456:7::/64"
    address = addressing.ipv6_for(network_id, mac, cidr6)
    assert address.network == IPv6Network(cidr6)
    assert int(address.ip) & (2**64 - 1) >= 2
    assert address == addressing.ipv6_for(network_id, mac, cidr6)


def test_ipv6_for_maps_reserved_interface_ids_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addressing, "_digest", lambda *parts: bytes(7) + b"\x01" + bytes(24))
    assert addressing.ipv6_for(NETWORK_ID, MAC, "fd00::/64").ip.exploded.endswith("0000:0003")


@pytest.mark.parametrize("cidr6", ["fd00::/48", "fd00::/96", "10.0.0.0/24", "fd00::1/64"])
def test_ipv6_for_wants_a_64(cidr6: str) -> None:
    with pytest.raises(AtenetError):
        addressing.ipv6_for(NETWORK_ID, MAC, cidr6)


def test_random_ipv4_cidr_is_a_10_slash_24_and_seeded() -> None:
    cidrs = {addressing.random_ipv4_cidr(random.Random(seed)) for seed in range(50)}
    assert len(cidrs) > 40
    for cidr in cidrs:
        network = IPv4Network(cidr)
        assert network.prefixlen == 24
        assert network.subnet_of(IPv4Network("10.0.0.0/8"))
    assert addressing.random_ipv4_cidr(random.Random(1)) == addressing.random_ipv4_cidr(
        random.Random(1)
    )


def test_random_ula64_is_an_rfc4193_64() -> None:
    cidrs = {addressing.random_ula64(random.Random(seed)) for seed in range(50)}
    assert len(cidrs) == 50
    for cidr in cidrs:
        network = IPv6Network(cidr)
        assert network.prefixlen == 64
        assert network.network_address.packed[0] == 0xFD  # L bit set: locally assigned
        assert addressing.ipv6_for(NETWORK_ID, MAC, cidr).network == network
