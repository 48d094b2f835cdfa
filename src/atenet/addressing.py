"""Static addresses derived by hash, so every node and client agrees without coordination.

Before DHCP exists, a client's MAC and IP addresses are pure functions of the network id, the
host's identity and the network's CIDRs. Any party that knows those inputs computes the same
result: the client configures it, the gateway can predict it. The exact formulas, the
collision odds and what to do on a collision are in ``docs/addressing.md``; changing a formula
changes every deployed address, hence the ``atenet/v1`` domain-separation tags.

Every function here is pure except :func:`host_identity`, which reads the machine id.
"""

from __future__ import annotations

import hashlib
import random
import socket
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

from atenet.errors import AtenetError

__all__ = [
    "gateway_link_local",
    "gateway_mac",
    "gateway_v4",
    "gateway_v6",
    "host_identity",
    "ipv4_for",
    "ipv6_for",
    "random_ipv4_cidr",
    "random_ula64",
    "stable_mac",
]

_MAC_TAG = b"atenet/v1 mac"
_IPV4_TAG = b"atenet/v1 ipv4"
_IPV6_TAG = b"atenet/v1 ipv6"
_GATEWAY_MAC_TAG = b"atenet/v1 gateway mac"

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
"""Where systemd and D-Bus keep the per-installation random id, in the order tried."""


def _digest(tag: bytes, *parts: bytes) -> bytes:
    return hashlib.sha256(b"".join((tag, *parts))).digest()


def host_identity(paths: tuple[Path, ...] = MACHINE_ID_PATHS) -> bytes:
    """A stable per-machine key: the machine id, or the host name when there is none.

    The machine id (``/etc/machine-id``) survives reboots and renames, which is what keeps a
    host's MAC and addresses fixed. Containers and minimal images may lack it (or share one
    cloned id); then the host name is the best stable value left. Whitespace is stripped.
    """
    for path in paths:
        try:
            value = path.read_bytes().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname().encode()


def stable_mac(network_id: bytes, host_key: bytes) -> bytes:
    """The MAC of ``host_key``'s port on ``network_id``: 6 bytes, locally administered unicast.

    = SHA-256(b"atenet/v1 mac" + network_id + host_key)[:6] with bit 0x02 of the first octet
    set (locally administered, so it cannot clash with a vendor's address) and bit 0x01
    cleared (unicast).

    If that happens to equal the network's :func:`gateway_mac` (a 2**-46 chance), the hash is
    taken again over ``host_key + b"\\x00"``: a client must never share the gateway's MAC.
    """
    mac = _local_unicast(_digest(_MAC_TAG, network_id, host_key))
    if mac == gateway_mac(network_id):
        mac = _local_unicast(_digest(_MAC_TAG, network_id, host_key + b"\x00"))
    return mac


def _local_unicast(digest: bytes) -> bytes:
    mac = bytearray(digest[:6])
    mac[0] = (mac[0] | 0x02) & 0xFE
    return bytes(mac)


def gateway_mac(network_id: bytes) -> bytes:
    """The MAC of the network's gateway (the ethereal interface): the same on every node.

    = SHA-256(b"atenet/v1 gateway mac" + network_id)[:6], locally administered unicast like
    :func:`stable_mac`. Every node computes it alone, so a client that moves to another node
    keeps a valid ARP / neighbour entry for its router.
    """
    return _local_unicast(_digest(_GATEWAY_MAC_TAG, network_id))


def gateway_link_local(network_id: bytes) -> IPv6Address:
    """The gateway's IPv6 link-local address: fe80::/64 + the modified EUI-64 of its MAC.

    RFC 4291 appendix A: insert ff:fe in the middle of the MAC and flip the universal/local
    bit. Router advertisements must come from a link-local address (RFC 4861 §4.2), and
    clients install this one as their IPv6 default router.
    """
    mac = gateway_mac(network_id)
    eui = bytes((mac[0] ^ 0x02, mac[1], mac[2], 0xFF, 0xFE, mac[3], mac[4], mac[5]))
    return IPv6Address(b"\xfe\x80" + bytes(6) + eui)


def _network_v4(cidr: str) -> IPv4Network:
    try:
        return IPv4Network(cidr)
    except ValueError as err:
        raise AtenetError(
            f"not an IPv4 network: {cidr!r} ({err}); write it like 10.1.2.0/24"
        ) from None


def _network_v6(cidr6: str) -> IPv6Network:
    try:
        network = IPv6Network(cidr6)
    except ValueError as err:
        raise AtenetError(
            f"not an IPv6 network: {cidr6!r} ({err}); write it like fd12:3456:789a::/64"
        ) from None
    if network.prefixlen != 64:
        raise AtenetError(f"IPv6 network {cidr6} must be a /64 (interface ids are 64 bits)")
    return network


def gateway_v4(cidr: str) -> IPv4Interface:
    """The gateway's address: the first usable host (``.1`` of a /24), with the prefix length."""
    network = _network_v4(cidr)
    if network.prefixlen > 30:
        raise AtenetError(f"IPv4 network {cidr} is too small: use a /30 or larger")
    return IPv4Interface((network.network_address + 1, network.prefixlen))


def gateway_v6(cidr6: str) -> IPv6Interface:
    """The gateway's address: interface id ``::1`` in the /64."""
    network = _network_v6(cidr6)
    return IPv6Interface((network.network_address + 1, 64))


def ipv4_for(network_id: bytes, mac: bytes, cidr: str) -> IPv4Interface:
    """The static IPv4 address of ``mac`` on ``network_id``, inside ``cidr``.

    Candidates are the hosts from network + 2 up to broadcast - 1 (network, gateway and
    broadcast excluded); the pick is SHA-256(b"atenet/v1 ipv4" + network_id + mac) read as a
    big-endian integer, modulo the number of candidates.
    """
    network = _network_v4(cidr)
    if network.prefixlen > 30:
        raise AtenetError(f"IPv4 network {cidr} is too small for hosts: use a /30 or larger")
    candidates = network.num_addresses - 3
    pick = int.from_bytes(_digest(_IPV4_TAG, network_id, mac), "big") % candidates
    address = IPv4Address(int(network.network_address) + 2 + pick)
    return IPv4Interface((address, network.prefixlen))


def ipv6_for(network_id: bytes, mac: bytes, cidr6: str) -> IPv6Interface:
    """The static IPv6 address of ``mac`` on ``network_id``, inside the /64 ``cidr6``.

    Interface id = SHA-256(b"atenet/v1 ipv6" + network_id + mac)[:8]; the ids 0 (subnet-router
    anycast) and 1 (the gateway) map to 2 and 3 instead, a 2**-63 chance kept for correctness.
    """
    network = _network_v6(cidr6)
    iid = int.from_bytes(_digest(_IPV6_TAG, network_id, mac)[:8], "big")
    if iid < 2:
        iid += 2
    return IPv6Interface((IPv6Address(int(network.network_address) | iid), 64))


def random_ipv4_cidr(rng: random.Random) -> str:
    """A fresh ``10.x.y.0/24`` for a new network; pass ``random.SystemRandom()`` in production."""
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24"


def random_ula64(rng: random.Random) -> str:
    """A fresh unique-local /64 (RFC 4193): ``fd`` + 40-bit random global id + 16-bit subnet id.

    The subnet id is random too: one network is one /64, so nothing is gained by numbering.
    """
    prefix = (0xFD << 56) | rng.getrandbits(56)
    return str(IPv6Network((prefix << 64, 64)))
