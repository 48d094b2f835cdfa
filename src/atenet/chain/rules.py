"""What every event body must look like: the schema checks run on every append and replay.

The signature says *who* wrote an event; these checks say that what they wrote is well-formed.
Both matter because an owner's `tok` is not the only thing that can produce a signed event — an
older or buggy writer, or anyone holding the owner's key, can sign any JSON — and a node folds
what it replays into live state (a name goes into `/metrics` and the page, an ``expires`` into a
comparison on every packet). So :class:`~atenet.chain.state.NetworkState` refuses a body that
fails here as a tamper, naming the event, exactly like a bad signature.

The functions are pure and cheap (no cryptography import) so `tok` can run the same name and
label checks on its input before it signs anything.

Unknown fields are ignored (not refused): a newer `tok` may add a setting an older node does not
know, and that must not make the older node reject the whole chain.
"""

from __future__ import annotations

import binascii
import ipaddress
import math
from typing import Any

#: Network names: 1 to this many printable characters (no control or format characters, no
#: leading or trailing space). They reach `/metrics`, the page and terminals.
NAME_MAX = 64
#: Key and route labels: up to this many printable characters (may be empty).
LABEL_MAX = 128
MTU_MIN = 576
MTU_MAX = 9000
#: The DNS server a network's DHCP/RA announces unless the owner sets another (DESIGN.md).
DEFAULT_DNS = ("8.8.8.8",)
MAX_DNS = 4
#: Bounds on node-written lists and owner-written strings, so a replay allocates little.
MAX_ENDPOINTS = 32
MAX_ENDPOINT_LEN = 300
MAX_TOKEN_LEN = 8192
MAX_KEY_ID = 2**32 - 1  # the access token carries it as a u32
#: The learning switch's settings (docs/learning.md): default and allowed range of each. The
#: defaults are Linux's and OVS's (300 s, 8,192 MACs); 64 MACs a port is a host or a small
#: bridge behind it; one peer node at most half the table. The ranges keep a table's memory
#: bounded (an entry costs ~200 bytes: 1,048,576 is ~200 MiB at worst) and the age sane.
FDB_DEFAULTS = {"fdb_age": 300, "fdb_port_macs": 64, "fdb_peer_macs": 4096, "fdb_macs": 8192}
FDB_RANGES = {
    "fdb_age": (10, 86_400),
    "fdb_port_macs": (1, 65_536),
    "fdb_peer_macs": (1, 1_048_576),
    "fdb_macs": (1, 1_048_576),
}


def fdb_problem(field: str, value: object) -> str | None:
    """Why ``value`` is not acceptable for the switch setting ``field``, or None."""
    low, high = FDB_RANGES[field]
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        unit = " seconds" if field == "fdb_age" else ""
        return f"{field} {str(value)[:40]} is not an integer from {low:,} to {high:,}{unit}"
    return None


class BodyError(ValueError):
    """An event body that does not have the shape its kind requires (the message says how)."""


def name_problem(name: object) -> str | None:
    """Why ``name`` is not an acceptable network name, or None when it is."""
    if not isinstance(name, str):
        return f"the name is a {type(name).__name__}, not text"
    if not 1 <= len(name) <= NAME_MAX:
        return f"a network name must be 1 to {NAME_MAX} characters (got {len(name)})"
    if not name.isprintable():
        return "a network name must be printable text (no control or invisible characters)"
    if name != name.strip():
        return "a network name must not start or end with a space"
    return None


def label_problem(label: object) -> str | None:
    """Why ``label`` is not an acceptable key or route label, or None when it is."""
    if not isinstance(label, str):
        return f"the label is a {type(label).__name__}, not text"
    if len(label) > LABEL_MAX:
        return f"a label must be at most {LABEL_MAX} characters (got {len(label)})"
    if not label.isprintable():
        return "a label must be printable text (no control or invisible characters)"
    return None


def dns_problem(servers: object) -> str | None:
    """Why ``servers`` is not a list of 1..MAX_DNS IP addresses, or None."""
    if not isinstance(servers, list) or not 1 <= len(servers) <= MAX_DNS:
        return f"dns must be a list of 1 to {MAX_DNS} addresses"
    for server in servers:
        if not isinstance(server, str):
            return "dns addresses must be text"
        try:
            ipaddress.ip_address(server)
        except ValueError:
            return f"dns server {server[:60]!r} is not an IPv4 or IPv6 address"
    return None


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass; True is not a key id


def _text(p: dict[str, Any], field: str, limit: int, *, required: bool = True) -> None:
    if field not in p:
        if required:
            raise BodyError(f"{field} is missing")
        return
    value = p[field]
    if not isinstance(value, str):
        raise BodyError(f"{field} is a {type(value).__name__}, not text")
    if len(value) > limit:
        raise BodyError(f"{field} is {len(value)} characters, more than {limit}")


def _key_id(p: dict[str, Any]) -> None:
    value = p.get("key_id")
    if not _is_int(value) or not 1 <= value <= MAX_KEY_ID:
        raise BodyError(f"key_id {str(value)[:40]} is not an integer from 1 to {MAX_KEY_ID}")


def _b64_bytes(value: object, size: int, field: str) -> None:
    import base64

    if not isinstance(value, str) or len(value) > 4 * size:
        raise BodyError(f"{field} is not base64 text")
    try:
        raw = base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise BodyError(f"{field} is not valid base64") from None
    if len(raw) != size:
        raise BodyError(f"{field} is {len(raw)} bytes, not {size}")


def _network_hex(p: dict[str, Any], field: str) -> None:
    value = p.get(field)
    if not isinstance(value, str) or len(value) != 32:
        raise BodyError(f"{field} is not a network id (32 hex digits)")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise BodyError(f"{field} is not a network id (32 hex digits)") from None


def _settings(p: dict[str, Any]) -> None:
    if "name" in p and (problem := name_problem(p["name"])):
        raise BodyError(problem)
    for field, version in (("cidr", 4), ("cidr6", 6)):
        if field not in p:
            continue
        value = p[field]
        try:
            if not isinstance(value, str):
                raise ValueError
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise BodyError(f"{field} {str(value)[:60]!r} is not a network") from None
        if net.version != version:
            raise BodyError(f"{field} {value} is not an IPv{version} network")
    if "mtu" in p and not (_is_int(p["mtu"]) and MTU_MIN <= p["mtu"] <= MTU_MAX):
        raise BodyError(f"mtu {str(p['mtu'])[:40]} is not an integer from {MTU_MIN} to {MTU_MAX}")
    if "dns" in p and (problem := dns_problem(p["dns"])):
        raise BodyError(problem)
    for flag in ("internet", "nat_private"):
        if flag in p and not isinstance(p[flag], bool):
            raise BodyError(f"{flag} is not true or false")
    for field in FDB_RANGES:
        if field in p and (problem := fdb_problem(field, p[field])):
            raise BodyError(problem)
    if "proxy_arp" in p and not isinstance(p["proxy_arp"], bool):
        raise BodyError("proxy_arp is not true or false")
    if "snooping" in p and not isinstance(p["snooping"], bool):
        raise BodyError("snooping is not true or false")


def _key_add(p: dict[str, Any]) -> None:
    _key_id(p)
    if "label" in p and (problem := label_problem(p["label"])):
        raise BodyError(problem)
    _b64_bytes(p.get("secret"), 32, "secret")
    expires = p.get("expires")
    if expires is not None and not (
        isinstance(expires, int | float)
        and not isinstance(expires, bool)
        and math.isfinite(expires)
        and expires > 0
    ):
        raise BodyError(f"expires {str(expires)[:40]} is neither null nor a Unix time")


def _route_add(p: dict[str, Any]) -> None:
    _network_hex(p, "to")
    _key_id(p)
    if "name" in p and p["name"] != "" and (problem := name_problem(p["name"])):
        raise BodyError(f"route name: {problem}")
    _text(p, "token", MAX_TOKEN_LEN)
    if "created_key" in p and not isinstance(p["created_key"], bool):
        raise BodyError("created_key is not true or false")


def _member_join(p: dict[str, Any]) -> None:
    _text(p, "node_id", 64)
    endpoints = p.get("endpoints")
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise BodyError(f"endpoints is not a list of at most {MAX_ENDPOINTS}")
    for endpoint in endpoints:
        if not isinstance(endpoint, str) or len(endpoint) > MAX_ENDPOINT_LEN:
            raise BodyError("an endpoint is not a host:port text")


#: A lease's host name (DHCP option 12) and node id: at most this many characters.
LEASE_TEXT_MAX = 64


def _lease(p: dict[str, Any]) -> None:
    """A DHCP binding a node wrote (router/dhcp.py ``Bind.payload``)."""
    mac = p.get("mac")
    parts = mac.replace("-", ":").split(":") if isinstance(mac, str) else []
    if len(parts) != 6 or not all(len(x) == 2 and _is_hex(x) for x in parts):
        raise BodyError(f"mac {str(mac)[:40]} is not a MAC address")
    ip = p.get("ip")
    try:
        ipaddress.IPv4Address(ip)  # type: ignore[arg-type]
    except ValueError:
        raise BodyError(f"ip {str(ip)[:40]} is not an IPv4 address") from None
    for field in ("host", "node"):
        _text(p, field, LEASE_TEXT_MAX, required=False)
        if not str(p.get(field, "")).isprintable():
            raise BodyError(f"{field} is not printable text")
    expires = p.get("expires")
    is_number = isinstance(expires, int | float) and not isinstance(expires, bool)
    if not (is_number and math.isfinite(expires) and expires >= 0):  # type: ignore[arg-type]
        raise BodyError(f"expires {str(expires)[:40]} is not a Unix time")
    reclaims = p.get("reclaims")
    if reclaims is not None and not (_is_int(reclaims) and reclaims >= 1):
        raise BodyError(f"reclaims {str(reclaims)[:40]} is not an event number")


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def check_body(kind: int, p: dict[str, Any]) -> None:
    """Raise :class:`BodyError` when payload ``p`` of an event of ``kind`` is malformed.

    Stateless shape checks only; what depends on the chain so far (a key id already used, a
    revocation of a key that does not exist) is checked by NetworkState."""
    from atenet.chain.event import Kind

    if kind == Kind.SETTINGS:
        _settings(p)
    elif kind == Kind.KEY_ADD:
        _key_add(p)
    elif kind == Kind.KEY_REVOKE:
        _key_id(p)
    elif kind == Kind.ROUTE_ADD:
        _route_add(p)
    elif kind == Kind.ROUTE_REMOVE:
        _network_hex(p, "to")
    elif kind == Kind.MEMBER_JOIN:
        _member_join(p)
    elif kind == Kind.MEMBER_LEAVE:
        _text(p, "node_id", 64)
    elif kind == Kind.LEASE:
        _lease(p)
    # GENESIS is checked where it is parsed; DELETED and DIAG carry nothing the state keeps.


def check_genesis(p: object) -> None:
    """The clear genesis body: owner/authority sign+box keys and the wrapped data keys."""
    if not isinstance(p, dict):
        raise BodyError("genesis is not an object")
    for who in ("owner", "authority"):
        keys = p.get(who)
        if not isinstance(keys, dict):
            raise BodyError(f"genesis has no {who} keys")
        _b64_bytes(keys.get("sign"), 32, f"{who}.sign")
        _b64_bytes(keys.get("box"), 32, f"{who}.box")
    wrapped = p.get("wrapped")
    if not isinstance(wrapped, dict) or not wrapped or len(wrapped) > 8:
        raise BodyError("genesis has no wrapped data keys")
    for value in wrapped.values():
        if not isinstance(value, str) or len(value) > 1024:
            raise BodyError("a wrapped data key is not base64 text")
