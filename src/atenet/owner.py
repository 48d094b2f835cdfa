"""What a network's owner does with its chains: the logic behind `tok`, without the CLI.

Networks are found in the store by their genesis: an owner lists every chain and keeps those whose
genesis names its key. Names are looked up among those (an id or a unique id prefix works too).
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass
from typing import Any

from atenet.addressing import random_ipv4_cidr, random_ula64
from atenet.chain import event as ev
from atenet.chain.event import Kind
from atenet.chain.keys import Identity, b64, new_secret, short_id
from atenet.chain.log import Chain, Signer, create_network, first_event
from atenet.chain.state import DEFAULT_MTU, NetworkState
from atenet.chain.store import ChainStore
from atenet.deployment import Deployment
from atenet.errors import AtenetError, NotAllowed, NotFound
from atenet.overlay.token import AccessToken


@dataclass(frozen=True)
class LogLine:
    """One verified event, as `tok log` shows it."""

    seq: int
    time_ms: int
    author: str
    kind: str
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time_ms": self.time_ms,
            "author": self.author,
            "kind": self.kind,
            "summary": self.summary,
        }


def _summarize(kind: int, payload: dict[str, Any]) -> str:
    """A one-line, secret-free description of an event's payload."""
    if kind == Kind.GENESIS:
        return "network created"
    if kind == Kind.SETTINGS:
        return " ".join(f"{k}={payload[k]}" for k in sorted(payload))
    if kind == Kind.KEY_ADD:
        return f"key {payload.get('key_id')} label={payload.get('label', '')!r}"
    if kind == Kind.KEY_REVOKE:
        return f"key {payload.get('key_id')} revoked"
    if kind == Kind.ROUTE_ADD:
        return f"route to {payload.get('name') or payload.get('to')}"
    if kind == Kind.ROUTE_REMOVE:
        return f"route to {payload.get('to')} removed"
    if kind in (Kind.MEMBER_JOIN, Kind.MEMBER_LEAVE):
        return f"node {payload.get('node_id')} {' '.join(payload.get('endpoints', []))}".strip()
    if kind == Kind.LEASE:
        return f"{payload.get('mac')} -> {payload.get('ip')}"
    return ""


def parse_duration(text: str) -> float:
    """'30d', '12h', '15m', '90s' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise AtenetError(f"bad duration {text!r}: use e.g. 90s, 15m, 12h, 30d") from None


class Owner:
    """An owner's view of one store."""

    def __init__(self, store: ChainStore, identity: Identity) -> None:
        self.store = store
        self.identity = identity
        self.signer = Signer(identity.sign)

    async def chains(self) -> list[Chain]:
        """Every live network this owner owns, loaded and verified."""
        mine = []
        for network_id in await self.store.list_chains():
            genesis = await first_event(self.store, network_id)
            if genesis is None or genesis.author != self.identity.sign_public:
                continue
            chain = Chain(self.store, network_id, [self.identity.box])
            await chain.load()
            if not chain.state.deleted:
                mine.append(chain)
        return sorted(mine, key=lambda c: (c.state.name, c.state.created))

    async def find(self, name: str) -> Chain:
        """A network by name, id, or unique id prefix (at least 4 hex digits)."""
        chains = await self.chains()
        by_name = [c for c in chains if c.state.name == name]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            ids = ", ".join(c.network_id.hex()[:12] for c in by_name)
            raise AtenetError(f"several networks are named {name!r} ({ids}): give an id instead")
        lowered = name.lower()
        by_id = [c for c in chains if len(lowered) >= 4 and c.network_id.hex().startswith(lowered)]
        if len(by_id) == 1:
            return by_id[0]
        if len(lowered) >= 4:
            for network_id in await self.store.list_chains():
                if network_id.hex().startswith(lowered):
                    raise NotAllowed(
                        f"network {network_id.hex()} is not yours: only its owner can manage it "
                        f"(your key is {self.identity.id})"
                    )
        known = ", ".join(c.state.name for c in chains) or "none yet"
        raise NotFound(
            f"unknown network {name!r} (yours in {self.store.url}: {known}); "
            "create one with `tok network create NAME`"
        )

    async def create(
        self,
        deployment: Deployment,
        name: str,
        cidr: str | None = None,
        cidr6: str | None = None,
        mtu: int = DEFAULT_MTU,
    ) -> Chain:
        if not name or len(name) > 64:
            raise AtenetError("a network name must be 1 to 64 characters")
        if any(c.state.name == name for c in await self.chains()):
            raise AtenetError(f"you already have a network named {name!r}: pick another name")
        rng = random.SystemRandom()
        cidr = str(_parse_net(cidr, 4)) if cidr else random_ipv4_cidr(rng)
        cidr6 = str(_parse_net(cidr6, 6)) if cidr6 else random_ula64(rng)
        return await create_network(
            self.store, self.identity, deployment, name=name, cidr=cidr, cidr6=cidr6, mtu=mtu
        )

    async def delete(self, chain: Chain) -> None:
        """Tombstone the chain (nodes following it drop the network), then remove its data."""
        await chain.append(Kind.DELETED, {}, self.signer)
        await self.store.delete_chain(chain.network_id)

    async def export_key(
        self,
        chain: Chain,
        label: str,
        endpoints: list[str],
        expires_in: float | None = None,
    ) -> AccessToken:
        await chain.catch_up()
        key_id = max(chain.state.keys, default=0) + 1
        secret = new_secret()
        expires = time.time() + expires_in if expires_in else None
        await chain.append(
            Kind.KEY_ADD,
            {"key_id": key_id, "label": label, "secret": b64(secret), "expires": expires},
            self.signer,
        )
        return AccessToken(chain.network_id, key_id, secret, tuple(endpoints))

    async def revoke_key(self, chain: Chain, key_id: int) -> None:
        key = chain.state.keys.get(key_id)
        if key is None:
            known = ", ".join(str(k) for k in chain.state.keys) or "none"
            raise NotFound(f"network {chain.state.name!r} has no key {key_id} (keys: {known})")
        if key.revoked:
            raise AtenetError(f"key {key_id} of {chain.state.name!r} is already revoked")
        await chain.append(Kind.KEY_REVOKE, {"key_id": key_id}, self.signer)

    async def add_route(self, chain: Chain, token: AccessToken, name: str = "") -> None:
        if token.network_id == chain.network_id:
            raise AtenetError("a route must lead to another network, not to the same one")
        await chain.append(
            Kind.ROUTE_ADD,
            {
                "to": token.network_hex,
                "name": name,
                "key_id": token.key_id,
                "token": token.encode(),
            },
            self.signer,
        )

    async def remove_route(self, chain: Chain, other: str) -> None:
        other_l = other.lower()
        matches = [
            r for r in chain.state.routes.values() if r.name == other or r.to.startswith(other_l)
        ]
        if len(matches) != 1:
            known = ", ".join(r.name or r.to[:12] for r in chain.state.routes.values()) or "none"
            raise NotFound(
                f"no single route to {other!r} in {chain.state.name!r} (routes: {known})"
            )
        await chain.append(Kind.ROUTE_REMOVE, {"to": matches[0].to}, self.signer)

    async def log(self, network_id: bytes) -> list[LogLine]:
        """Replay the chain from the start, verifying each event; raise at the first bad one."""
        state = NetworkState(network_id, [self.identity.box])
        lines = []
        async for _seq, blob in self.store.read(network_id, 1):
            event = ev.decode(blob)
            payload = state.apply(event)
            author = "owner" if event.author == state.owner else _author_name(state, event)
            lines.append(
                LogLine(
                    event.seq,
                    event.time_ms,
                    author,
                    event.kind_name,
                    _summarize(event.kind, payload),
                )
            )
        return lines


def _author_name(state: NetworkState, event: ev.Event) -> str:
    if event.author == state.authority:
        return "authority"
    return f"node {short_id(event.author)}"


def _parse_net(text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AtenetError(
            f"bad CIDR {text!r}: use e.g. 10.1.2.0/24 or fd12:3456:789a:1::/64"
        ) from None
    if net.version != version:
        raise AtenetError(f"{text} is not an IPv{version} network")
    if version == 4 and net.prefixlen > 30:
        raise AtenetError(f"{text} is too small: an IPv4 network needs at least a /30")
    if version == 6 and net.prefixlen != 64:
        raise AtenetError(f"{text}: the IPv6 network must be a /64 (addresses are hashed into it)")
    return net
