"""The materialized state of one network, and the trust rules that guard it.

:class:`NetworkState` is sans-I/O: feed it events in order with :meth:`NetworkState.apply` and it
checks each one completely before changing anything (hash chain, signature, who may write what,
payload decryption) — raising :class:`~atenet.errors.ChainInvalid` that names the event and the
failed check. The same code runs on every append and on every replay, so a store that is tampered
with can deny service but cannot forge configuration.

Trust rules:

* the **owner** (named by the genesis event) writes GENESIS, SETTINGS, KEY_ADD, KEY_REVOKE,
  ROUTE_ADD, ROUTE_REMOVE and DELETED;
* the **node authority** (also named by genesis), or a node key it certified, writes LEASE and
  DIAG;
* a **membership** record (MEMBER_JOIN / MEMBER_LEAVE) must be signed by the certified node key
  it is about: the record's ``node_id`` must be the signer's own id;
* every body has the shape its kind requires (:mod:`atenet.chain.rules`), a key id is added once
  and never again (re-adding would un-revoke it), and only an existing key can be revoked.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atenet.chain import event as ev
from atenet.chain import rules
from atenet.chain.event import Event, Kind
from atenet.chain.keys import (
    b64,
    cert_valid,
    raw_public,
    short_id,
    unb64,
    unwrap,
    verify_signature,
)
from atenet.chain.leases import LeaseTable, Pool
from atenet.errors import ChainInvalid, NotAllowed

OWNER_KINDS = frozenset(
    {
        Kind.GENESIS,
        Kind.SETTINGS,
        Kind.KEY_ADD,
        Kind.KEY_REVOKE,
        Kind.ROUTE_ADD,
        Kind.ROUTE_REMOVE,
        Kind.DELETED,
    }
)
NODE_KINDS = frozenset({Kind.LEASE, Kind.DIAG})
MEMBER_KINDS = frozenset({Kind.MEMBER_JOIN, Kind.MEMBER_LEAVE})
DEFAULT_MTU = 1400


@dataclass
class AccessKey:
    key_id: int
    label: str
    created: float
    expires: float | None
    secret: bytes
    revoked: bool = False
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return not self.revoked and (self.expires is None or now < self.expires)

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked`` (revoked wins: it is the owner's last word)."""
        if self.revoked:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def public_view(self, now: float | None = None) -> dict[str, Any]:
        """Everything but the secret (for listings), with the key's state at ``now`` (default:
        the wall clock)."""
        if now is None:
            now = time.time()
        return {
            "key_id": self.key_id,
            "label": self.label,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "state": self.state(now),
        }


@dataclass
class Member:
    node_id: str
    public: bytes
    endpoints: list[str]
    since: float
    seq: int


@dataclass
class Route:
    to: str  # the other network's id, hex
    name: str
    key_id: int
    token: str
    added: float
    created_key: bool = False  # the key was exported for this route (revoked when it goes)


@dataclass
class Settings:
    name: str = ""
    cidr: str = ""
    cidr6: str = ""
    mtu: int = DEFAULT_MTU
    #: DNS servers the network's DHCP/RA will announce (the router is not built yet).
    dns: tuple[str, ...] = rules.DEFAULT_DNS
    #: Whether the gateway NATs to the internet (docs/nat.md); DHCP and RA then also offer the
    #: gateway as default router. Off by default: the node's address is its operator's.
    internet: bool = False
    #: With ``internet``: whether NAT may also reach private-range destinations (RFC 1918,
    #: 100.64/10, fc00::/7, …), i.e. the node's own LAN. Off by default for the same reason.
    nat_private: bool = False
    #: The learning switch's table on every node (docs/learning.md): entry age in seconds,
    #: MACs per local port, per peer node and in all, per network per node.
    fdb_age: int = rules.FDB_DEFAULTS["fdb_age"]
    fdb_port_macs: int = rules.FDB_DEFAULTS["fdb_port_macs"]
    fdb_peer_macs: int = rules.FDB_DEFAULTS["fdb_peer_macs"]
    fdb_macs: int = rules.FDB_DEFAULTS["fdb_macs"]
    #: The gateway answers ARP / NS for hosts on other nodes from the snooped table.
    proxy_arp: bool = False
    #: IGMP/MLD snooping (switch/mcast.py): multicast only to joined ports; off floods it all.
    snooping: bool = True


@dataclass
class NetworkState:
    """Everything the chain of one network says, as of event ``seq``."""

    network_id: bytes
    readers: list[X25519PrivateKey] = field(default_factory=list, repr=False)
    seq: int = 0
    head: bytes = ev.ZERO_HASH
    owner: bytes = b""
    owner_box: bytes = b""
    authority: bytes = b""
    authority_box: bytes = b""
    data_key: bytes | None = field(default=None, repr=False)
    created: float = 0.0
    settings: Settings = field(default_factory=Settings)
    keys: dict[int, AccessKey] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    #: DHCP bindings folded from the lease events (chain/leases.py), keyed by IPv4 text.
    lease_table: LeaseTable = field(default_factory=LeaseTable, repr=False)
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: bool = False
    _aead: AESGCM | None = field(default=None, repr=False)

    @property
    def leases(self) -> dict[str, dict[str, Any]]:
        """The DHCP bindings that won, by IPv4 text: the lease payload plus ``seq`` and
        ``time`` (see :mod:`atenet.chain.leases`)."""
        return self.lease_table.by_ip

    # ---------------------------------------------------------------- checking

    def _fail(self, event_seq: int, what: str) -> ChainInvalid:
        return ChainInvalid(self.network_id, event_seq, what)

    def _check_author(self, e: Event, seq: int) -> None:
        kind = e.kind
        if kind in OWNER_KINDS:
            if e.author != self.owner:
                raise self._fail(
                    seq, f"{e.kind_name} signed by {short_id(e.author)}, not by the owner"
                )
            if e.cert:
                raise self._fail(seq, "owner events carry no node certificate")
        elif kind in NODE_KINDS or kind in MEMBER_KINDS:
            if e.author == self.authority and kind in NODE_KINDS:
                return
            if not e.cert or not cert_valid(e.cert, self.authority, e.author):
                raise self._fail(
                    seq,
                    f"{e.kind_name} signed by {short_id(e.author)}, "
                    "a key the node authority did not certify",
                )
        else:
            raise self._fail(seq, f"unknown event kind {kind}")

    def verify(self, e: Event, *, latest: bool = False) -> dict[str, Any]:
        """Check an event against the chain so far and the trust rules; return its payload.

        Changes nothing. ``latest`` checks a record kept beside the chain (seq 0, no hash link).
        """
        seq = e.seq
        if e.network_id != self.network_id:
            raise self._fail(seq, f"belongs to another chain ({e.network_id.hex()[:12]}…)")
        if latest:
            if seq != 0 or e.kind != Kind.DIAG:
                raise self._fail(seq, "latest records must be seq-0 diagnostics")
        else:
            if seq != self.seq + 1:
                raise self._fail(
                    seq, f"out of order: expected event {self.seq + 1} (events missing or swapped)"
                )
            if e.prev != self.head:
                raise self._fail(
                    seq,
                    "previous-hash mismatch (an event before it was altered, dropped or swapped)",
                )
            if seq == 1 and e.kind != Kind.GENESIS:
                raise self._fail(seq, "the first event is not a genesis")
            if seq > 1 and e.kind == Kind.GENESIS:
                raise self._fail(seq, "a second genesis")
        if not verify_signature(e.author, e.signature, e.signed_part):
            raise self._fail(seq, "bad signature (the event's bytes were altered)")
        if e.kind == Kind.GENESIS:
            return self._genesis_payload(e)
        if self.deleted:
            raise self._fail(seq, "event after the network was deleted")
        self._check_author(e, seq)
        payload = self._decrypt(e, seq)
        self._check_body(e, payload, seq)
        if e.kind in MEMBER_KINDS and payload.get("node_id") != short_id(e.author):
            raise self._fail(
                seq,
                f"membership record for node {payload.get('node_id')} "
                f"signed by node {short_id(e.author)}",
            )
        return payload

    def _check_body(self, e: Event, payload: dict[str, Any], seq: int) -> None:
        """The body's shape (rules.check_body), then what depends on the chain so far."""
        try:
            rules.check_body(e.kind, payload)
        except rules.BodyError as exc:
            raise self._fail(seq, f"{e.kind_name} body is malformed: {exc}") from None
        if e.kind == Kind.KEY_ADD and payload["key_id"] in self.keys:
            raise self._fail(
                seq, f"key_add reuses key id {payload['key_id']} (a key id is never re-added)"
            )
        if e.kind == Kind.KEY_REVOKE and payload["key_id"] not in self.keys:
            raise self._fail(
                seq, f"key_revoke names key {payload['key_id']}, which was never added"
            )

    def _genesis_payload(self, e: Event) -> dict[str, Any]:
        try:
            payload = json.loads(e.body)
            rules.check_genesis(payload)
            owner = unb64(payload["owner"]["sign"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # deep nesting
            raise self._fail(e.seq, f"genesis does not parse: {exc}") from None
        if owner != e.author:
            raise self._fail(e.seq, "genesis not signed by the owner it names")
        return payload

    def _decrypt(self, e: Event, seq: int) -> dict[str, Any]:
        if self._aead is None:
            raise NotAllowed(
                f"cannot read network {self.network_id.hex()}: "
                "this key is neither its owner nor its node authority"
            )
        body = e.body
        if len(body) < 12 + 16:
            raise self._fail(seq, "encrypted body too short")
        try:
            plain = self._aead.decrypt(body[:12], body[12:], e.aad)
            payload = json.loads(plain)
        except InvalidTag:
            raise self._fail(
                seq, "payload does not decrypt (altered, or another chain's)"
            ) from None
        except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting
            raise self._fail(seq, f"payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise self._fail(seq, "payload is not an object")
        return payload

    # ---------------------------------------------------------------- applying

    def apply(self, e: Event) -> dict[str, Any]:
        """Verify ``e`` as the next event and fold it into the state; return its payload."""
        payload = self.verify(e)
        try:
            self._fold(e, payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(e.seq, f"{e.kind_name} payload is malformed: {exc!r}") from None
        self.seq = e.seq
        self.head = e.hash
        return payload

    def apply_latest(self, e: Event) -> dict[str, Any]:
        """Verify and fold a diagnostics record kept beside the chain."""
        payload = self.verify(e, latest=True)
        node = short_id(e.author) if e.author != self.authority else "authority"
        self.diagnostics[node] = {**payload, "time_ms": e.time_ms}
        return payload

    def _fold(self, e: Event, p: dict[str, Any]) -> None:
        kind = e.kind
        when = e.time_ms / 1000
        if kind == Kind.GENESIS:
            self.owner = unb64(p["owner"]["sign"])
            self.owner_box = unb64(p["owner"]["box"])
            self.authority = unb64(p["authority"]["sign"])
            self.authority_box = unb64(p["authority"]["box"])
            self.created = when
            for wrapped in p["wrapped"].values():
                for box in self.readers:
                    key = unwrap(unb64(wrapped), box)
                    if key is not None:
                        self.data_key = key
                        self._aead = AESGCM(key)
                        break
        elif kind == Kind.SETTINGS:
            s = self.settings
            # A settings event names only what changes (`tok network set`); the rest stays.
            self.settings = Settings(
                name=str(p.get("name", s.name)),
                cidr=str(p.get("cidr", s.cidr)),
                cidr6=str(p.get("cidr6", s.cidr6)),
                mtu=int(p.get("mtu", s.mtu)),
                dns=tuple(p.get("dns", s.dns)),
                internet=bool(p.get("internet", s.internet)),
                nat_private=bool(p.get("nat_private", s.nat_private)),
                **{f: int(p.get(f, getattr(s, f))) for f in rules.FDB_DEFAULTS},
                proxy_arp=bool(p.get("proxy_arp", s.proxy_arp)),
                snooping=bool(p.get("snooping", s.snooping)),
            )
        elif kind == Kind.KEY_ADD:
            kid = int(p["key_id"])
            expires = p.get("expires")
            self.keys[kid] = AccessKey(
                kid,
                str(p.get("label", "")),
                when,
                None if expires is None else float(expires),
                unb64(p["secret"]),
            )
        elif kind == Kind.KEY_REVOKE:
            key = self.keys[int(p["key_id"])]
            if not key.revoked:  # a second revocation changes nothing, not even the time
                key.revoked = True
                key.revoked_at = when
        elif kind == Kind.ROUTE_ADD:
            self.routes[p["to"]] = Route(
                p["to"],
                str(p.get("name", "")),
                int(p["key_id"]),
                str(p["token"]),
                when,
                bool(p.get("created_key", False)),
            )
        elif kind == Kind.ROUTE_REMOVE:
            self.routes.pop(p["to"], None)
        elif kind == Kind.MEMBER_JOIN:
            node = p["node_id"]
            self.members[node] = Member(node, e.author, list(p["endpoints"]), when, e.seq)
        elif kind == Kind.MEMBER_LEAVE:
            self.members.pop(p["node_id"], None)
        elif kind == Kind.LEASE:
            self.lease_table.apply(e.seq, when, p, Pool.of(self.settings.cidr))
        elif kind == Kind.DELETED:
            self.deleted = True
        elif kind == Kind.DIAG:
            raise ValueError("diagnostics are kept beside the chain, not in it")

    # ---------------------------------------------------------------- writing

    def build(
        self,
        kind: Kind,
        payload: dict[str, Any],
        signer: Ed25519PrivateKey,
        now_ms: int,
        cert: bytes = b"",
        *,
        latest: bool = False,
    ) -> bytes:
        """Encrypt and sign ``payload`` as the next event (or a seq-0 latest record)."""
        if self._aead is None:
            raise NotAllowed(f"cannot write network {self.network_id.hex()}: no data key")
        seq, prev = (0, ev.ZERO_HASH) if latest else (self.seq + 1, self.head)
        header = ev.encode_unsigned(
            kind, self.network_id, seq, prev, now_ms, raw_public(signer.public_key()), cert
        )
        plain = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        nonce = os.urandom(12)
        body_len = 12 + len(plain) + 16
        body = nonce + self._aead.encrypt(nonce, plain, ev.aad_for(header, body_len))
        return ev.assemble(header, body, signer.sign)

    # ---------------------------------------------------------------- views

    @property
    def name(self) -> str:
        return self.settings.name

    def active_keys(self, now: float) -> list[AccessKey]:
        return [k for k in self.keys.values() if k.usable(now)]

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-friendly view without secrets (for `tok network show --json`); key states as
        of ``now`` (default: the wall clock)."""
        if now is None:
            now = time.time()
        return {
            "id": self.network_id.hex(),
            "name": self.settings.name,
            "cidr": self.settings.cidr,
            "cidr6": self.settings.cidr6,
            "mtu": self.settings.mtu,
            "dns": list(self.settings.dns),
            "internet": self.settings.internet,
            "nat_private": self.settings.nat_private,
            **{f: getattr(self.settings, f) for f in rules.FDB_DEFAULTS},
            "proxy_arp": self.settings.proxy_arp,
            "snooping": self.settings.snooping,
            "owner": short_id(self.owner),
            "created": self.created,
            "seq": self.seq,
            "keys": [k.public_view(now) for k in self.keys.values()],
            "members": [
                {"node_id": m.node_id, "endpoints": m.endpoints, "since": m.since}
                for m in self.members.values()
            ],
            "routes": [
                {
                    "to": r.to,
                    "name": r.name,
                    "key_id": r.key_id,
                    "added": r.added,
                    "created_key": r.created_key,
                }
                for r in self.routes.values()
            ],
            "leases": self.lease_table.values(),
            "diagnostics": self.diagnostics,
        }


def build_genesis(
    network_id: bytes,
    owner_sign: Ed25519PrivateKey,
    owner_box_public: bytes,
    authority_sign_public: bytes,
    authority_box_public: bytes,
    data_key: bytes,
    now_ms: int,
) -> bytes:
    """The first event of a new chain: who owns it, who runs it, and the wrapped data key."""
    from atenet.chain.keys import wrap

    owner_public = raw_public(owner_sign.public_key())
    body = json.dumps(
        {
            "owner": {"sign": b64(owner_public), "box": b64(owner_box_public)},
            "authority": {"sign": b64(authority_sign_public), "box": b64(authority_box_public)},
            "wrapped": {
                "owner": b64(wrap(data_key, owner_box_public)),
                "authority": b64(wrap(data_key, authority_box_public)),
            },
        },
        sort_keys=True,
    ).encode()
    header = ev.encode_unsigned(
        Kind.GENESIS, network_id, 1, ev.ZERO_HASH, now_ms, owner_public, b""
    )
    return ev.assemble(header, body, owner_sign.sign)
