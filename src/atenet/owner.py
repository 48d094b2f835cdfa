"""What a network's owner does with its chains: the logic behind `tok`, without the CLI.

Networks are found in the store by their genesis: an owner lists every chain and keeps those whose
genesis names its key. Names are looked up among those (an id or a unique id prefix works too).

Address policy (checked at `tok network create`; docs/cli.md, "tok: owner commands"): a network's
IPv4 CIDR must lie in private space (RFC 1918 or the RFC 6598 shared range 100.64.0.0/10) and be a
/16 or smaller, its IPv6 /64 must be unique-local (fc00::/7) — each unless ``force`` — and it may
never overlap another network of the same owner (hosts on both could not tell the two apart, and a
route between them would be ambiguous)."""

from __future__ import annotations

import ipaddress
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from atenet.addressing import random_ipv4_cidr, random_ula64
from atenet.chain import event as ev
from atenet.chain import rules
from atenet.chain.event import Kind
from atenet.chain.keys import Identity, b64, new_secret, short_id
from atenet.chain.log import Chain, Signer, create_network, first_event
from atenet.chain.state import DEFAULT_MTU, NetworkState, Route
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
        return " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in sorted(payload.items())
        )
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
        host = payload.get("host")
        return f"{payload.get('mac')} -> {payload.get('ip')}" + (f" ({host})" if host else "")
    return ""


def parse_duration(text: str) -> float:
    """'30d', '12h', '15m', '90s' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
        seconds = float(number) * unit
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):  # "inf" and "nan" parse as floats
        raise AtenetError(f"bad duration {text!r}: use e.g. 90s, 15m, 12h, 30d")
    return seconds


class RouteOverlap(AtenetError):
    """A route whose networks' CIDRs overlap (`tok route add` refuses it, exit 1)."""


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
        *,
        force: bool = False,
    ) -> Chain:
        """A new network. ``force`` accepts public IPv4 space, IPv4 prefixes shorter than
        /16 and a non-ULA IPv6 prefix; overlapping one of the owner's networks is never allowed."""
        if problem := rules.name_problem(name):
            raise AtenetError(problem)
        chains = await self.chains()
        if any(c.state.name == name for c in chains):
            raise AtenetError(f"you already have a network named {name!r}: pick another name")
        taken = [(c.state.name, c.state.settings) for c in chains]
        rng = random.SystemRandom()
        if cidr:
            net4 = check_cidr(cidr, 4, force)
            _refuse_overlap(net4, "cidr", taken)
        else:
            net4 = _random_free(lambda: random_ipv4_cidr(rng), "cidr", taken)
        if cidr6:
            net6 = check_cidr(cidr6, 6, force)
            _refuse_overlap(net6, "cidr6", taken)
        else:
            net6 = _random_free(lambda: random_ula64(rng), "cidr6", taken)
        return await create_network(
            self.store,
            self.identity,
            deployment,
            name=name,
            cidr=str(net4),
            cidr6=str(net6),
            mtu=mtu,
        )

    async def set_settings(
        self,
        chain: Chain,
        *,
        name: str | None = None,
        fdb: dict[str, int] | None = None,
        proxy_arp: bool | None = None,
        mtu: int | None = None,
        dns: list[str] | None = None,
        internet: bool | None = None,
        snooping: bool | None = None,
        nat_private: bool | None = None,
    ) -> dict[str, Any]:
        """Append a settings event with only the fields that change; return them ({} = none).

        Nodes follow the chain live and read settings when they answer a client, so a new MTU
        or DNS server reaches every client that connects afterwards."""
        await chain.catch_up()
        s = chain.state.settings
        change: dict[str, Any] = {}
        if name is not None and name != s.name:
            if problem := rules.name_problem(name):
                raise AtenetError(problem)
            if any(c.state.name == name for c in await self.chains()):
                raise AtenetError(f"you already have a network named {name!r}: pick another name")
            change["name"] = name
        if mtu is not None and mtu != s.mtu:
            if not rules.MTU_MIN <= mtu <= rules.MTU_MAX:
                raise AtenetError(f"mtu must be from {rules.MTU_MIN} to {rules.MTU_MAX}")
            change["mtu"] = mtu
        if dns is not None:
            servers = [str(ipaddress.ip_address(d)) if _is_ip(d) else d for d in dns]
            if problem := rules.dns_problem(servers):
                raise AtenetError(problem)
            if tuple(servers) != s.dns:
                change["dns"] = servers
        if internet is not None and internet != s.internet:
            change["internet"] = internet
        if nat_private is not None and nat_private != s.nat_private:
            change["nat_private"] = nat_private
        for field, value in (fdb or {}).items():  # the learning switch's table (rules.FDB_*)
            if problem := rules.fdb_problem(field, value):
                raise AtenetError(problem)
            if value != getattr(s, field):
                change[field] = value
        if proxy_arp is not None and proxy_arp != s.proxy_arp:
            change["proxy_arp"] = proxy_arp
        if snooping is not None and snooping != s.snooping:
            change["snooping"] = snooping
        if change:
            await chain.append(Kind.SETTINGS, change, self.signer)
        return change

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
        """A new key (``expires_in`` seconds from now, or never when None) and its token."""
        if expires_in is not None and not expires_in > 0:
            raise AtenetError(
                f"an expiry must lie in the future (got {expires_in:g} s): use e.g. 12h or 30d"
            )
        if problem := rules.label_problem(label):
            raise AtenetError(problem)
        await chain.catch_up()
        key_id = max(chain.state.keys, default=0) + 1
        secret = new_secret()
        expires = time.time() + expires_in if expires_in is not None else None
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

    async def add_route(
        self, chain: Chain, token: AccessToken, name: str = "", *, created_key: bool = False
    ) -> tuple[Route, bool]:
        """Route ``chain`` to the token's network; (route, True) when added, or the existing
        route and False when one to that network is already there (adding is idempotent).

        When the token's network is one of ours its CIDRs are known and overlaps are refused
        (:meth:`check_route`); another owner's chain is sealed to that owner and the node
        authority, so its CIDRs cannot be checked here."""
        if token.network_id == chain.network_id:
            raise AtenetError("a route must lead to another network, not to the same one")
        await chain.catch_up()
        existing = chain.state.routes.get(token.network_hex)
        if existing is not None:
            return existing, False
        if not created_key:  # add_route_to checked before it exported the key
            owned = {c.network_id.hex(): c for c in await self.chains()}
            target = owned.get(token.network_hex)
            if target is not None:
                check_route(chain, target, owned)
        await chain.append(
            Kind.ROUTE_ADD,
            {
                "to": token.network_hex,
                "name": name,
                "key_id": token.key_id,
                "token": token.encode(),
                "created_key": created_key,
            },
            self.signer,
        )
        return chain.state.routes[token.network_hex], True

    async def add_route_to(
        self, chain: Chain, target: Chain, owned: dict[str, Chain] | None = None
    ) -> tuple[Route, bool]:
        """Route ``chain`` to another network of this owner, exporting a key of ``target`` for
        the route only when no route to it exists yet (so adding twice makes one key).
        Overlapping CIDRs are refused before anything is written (:func:`check_route`)."""
        if target.network_id == chain.network_id:
            raise AtenetError("a route must lead to another network, not to the same one")
        await chain.catch_up()
        existing = chain.state.routes.get(target.network_id.hex())
        if existing is not None:
            await target.catch_up()
            key = target.state.keys.get(existing.key_id)
            if key is not None and key.usable(time.time()):
                return existing, False
            # Its key was revoked or expired: the route is dead. Replace it with a fresh key
            # rather than report a route that carries nothing.
            await chain.append(Kind.ROUTE_REMOVE, {"to": existing.to}, self.signer)
        if owned is None:
            owned = {c.network_id.hex(): c for c in await self.chains()}
        check_route(chain, target, owned)
        token = await self.export_key(target, f"route from {chain.state.name}", [])
        return await self.add_route(chain, token, target.state.name, created_key=True)

    async def add_routes_between(self, a: Chain, b: Chain) -> list[tuple[Chain, Route, bool]]:
        """Routes ``a`` -> ``b`` and ``b`` -> ``a`` (both ours): routes are directional and a
        reply must route back, so the owner of both gets both by default. Each direction is
        idempotent on its own (an existing one is returned with False and no new key); both are
        checked for overlaps before either is written, so a refused pair writes nothing."""
        if a.network_id == b.network_id:
            raise AtenetError("a route must lead to another network, not to the same one")
        await a.catch_up()
        await b.catch_up()
        owned = {c.network_id.hex(): c for c in await self.chains()}
        for src, dst in ((a, b), (b, a)):
            if dst.network_id.hex() not in src.state.routes:
                check_route(src, dst, owned)
        return [
            (a, *await self.add_route_to(a, b, owned)),
            (b, *await self.add_route_to(b, a, owned)),
        ]

    def _match_route(self, chain: Chain, other: str) -> list[Route]:
        other_l = other.lower()
        return [
            r for r in chain.state.routes.values() if r.name == other or r.to.startswith(other_l)
        ]

    async def remove_route(self, chain: Chain, other: str) -> tuple[Route, int | None]:
        """Remove the route to ``other`` (name or id prefix); when the route's key was exported
        for it (``tok route add A B``), revoke that key too. Returns the route and the revoked
        key id (None when the key was given by token and is not ours to revoke)."""
        matches = self._match_route(chain, other)
        if len(matches) != 1:
            known = ", ".join(r.name or r.to[:12] for r in chain.state.routes.values()) or "none"
            raise NotFound(
                f"no single route to {other!r} in {chain.state.name!r} (routes: {known})"
            )
        return await self._drop_route(chain, matches[0])

    async def _drop_route(self, chain: Chain, route: Route) -> tuple[Route, int | None]:
        await chain.append(Kind.ROUTE_REMOVE, {"to": route.to}, self.signer)
        if not route.created_key:
            return route, None
        target = next(
            (c for c in await self.chains() if c.network_id.hex() == route.to), None
        )  # gone when the other network was deleted: its keys went with it
        if target is None:
            return route, None
        key = target.state.keys.get(route.key_id)
        if key is None or key.revoked:
            return route, None
        await target.append(Kind.KEY_REVOKE, {"key_id": route.key_id}, self.signer)
        return route, route.key_id

    async def remove_routes_between(
        self, chain: Chain, other: str
    ) -> list[tuple[Chain, Route, int | None]]:
        """Remove ``chain``'s route to ``other`` (name or id prefix) and, when ``other`` is ours,
        its route back to ``chain``; revoke each key `route add` exported. Removes whichever
        of the two exists; NotFound when neither does."""
        await chain.catch_up()
        matches = self._match_route(chain, other)
        if len(matches) > 1:
            names = ", ".join(r.name or r.to[:12] for r in matches)
            raise NotFound(f"several routes of {chain.state.name!r} match {other!r}: {names}")
        owned = {c.network_id.hex(): c for c in await self.chains()}
        target: Chain | None
        if matches:
            target = owned.get(matches[0].to)
        else:  # no route there: OTHER may still be ours and route back
            try:
                target = await self.find(other)
            except AtenetError:
                target = None
        back = None
        if target is not None and target.network_id != chain.network_id:
            back = target.state.routes.get(chain.network_id.hex())
        if not matches and back is None:
            known = ", ".join(r.name or r.to[:12] for r in chain.state.routes.values()) or "none"
            raise NotFound(
                f"no route between {chain.state.name!r} and {other!r} in either direction "
                f"(routes of {chain.state.name!r}: {known})"
            )
        done = []
        if matches:
            done.append((chain, *await self._drop_route(chain, matches[0])))
        if target is not None and back is not None:
            done.append((target, *await self._drop_route(target, back)))
        return done

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


Net = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv4 space a network may use without --force: RFC 1918 and RFC 6598 (carrier-grade NAT).
PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
#: The largest IPv4 network (shortest prefix) allowed without --force: 65,534 hosts is already
#: far more than one Ethernet segment carries, and a shorter prefix takes over routes that the
#: host's other networks (Docker, VPNs, the LAN) are likely to use.
MIN_PREFIX4 = 16
ULA = ipaddress.IPv6Network("fc00::/7")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_cidr(text: str, version: int, force: bool = False) -> Net:
    """Parse and check a network's CIDR against the address policy (module docstring)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AtenetError(
            f"bad CIDR {text!r}: use e.g. 10.1.2.0/24 or fd12:3456:789a:1::/64"
        ) from None
    if net.version != version:
        raise AtenetError(f"{text} is not an IPv{version} network")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise AtenetError(f"{net} is loopback, link-local or multicast space: it cannot be used")
    if isinstance(net, ipaddress.IPv4Network):
        if net.prefixlen > 30:
            raise AtenetError(f"{text} is too small: an IPv4 network needs at least a /30")
        if net.is_reserved or net.subnet_of(ipaddress.IPv4Network("0.0.0.0/8")):
            raise AtenetError(f"{net} is reserved IPv4 space: it cannot be used")
        if not force and not any(net.subnet_of(p) for p in PRIVATE_V4):
            raise AtenetError(
                f"{net} is public IPv4 space (use 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 "
                "or 100.64.0.0/10); add --force only if you own it"
            )
        if not force and net.prefixlen < MIN_PREFIX4:
            raise AtenetError(
                f"{net} is too large: a network is at most a /{MIN_PREFIX4} (add --force to "
                "override)"
            )
    else:
        if net.prefixlen != 64:
            raise AtenetError(
                f"{text}: the IPv6 network must be a /64 (addresses are hashed into it)"
            )
        if not force and not net.subnet_of(ULA):
            raise AtenetError(
                f"{net} is not unique-local IPv6 (fc00::/7, e.g. fd12:3456:789a:1::/64); "
                "add --force only if you own it"
            )
    return net


def _refuse_overlap(net: Net, field: str, taken: list[tuple[str, Any]]) -> None:
    for name, settings in taken:
        other = getattr(settings, field)
        try:
            other_net = ipaddress.ip_network(other, strict=False)
        except ValueError:
            continue
        if other_net.version == net.version and net.overlaps(other_net):  # type: ignore[arg-type]
            raise AtenetError(
                f"{net} overlaps your network {name!r} ({other_net}): pick another CIDR"
            )


def _nets(name: str, settings: Any) -> list[tuple[str, Net]]:
    nets: list[tuple[str, Net]] = []
    for text in (settings.cidr, settings.cidr6):
        try:
            nets.append((name, ipaddress.ip_network(text, strict=False)))
        except ValueError:
            continue  # no IPv6 prefix, say
    return nets


def check_route(chain: Chain, target: Chain, owned: dict[str, Chain]) -> None:
    """Refuse a route ``chain`` -> ``target`` when an IPv4 or IPv6 CIDR of ``target`` overlaps
    one of ``chain``'s own or of another network ``chain`` already routes to: the gateway picks
    the network a packet goes to by its destination address, so an address in two of them
    would be ambiguous. Routed networks that are not ours (``owned``: ours by id hex) have
    chains we cannot read, so they are not checked."""
    mine = _nets(chain.state.name, chain.state.settings)
    for route in chain.state.routes.values():
        routed = owned.get(route.to)
        if routed is not None and route.to != target.network_id.hex():
            mine += _nets(routed.state.name, routed.state.settings)
    for _, net in _nets(target.state.name, target.state.settings):
        for name, other in mine:
            if other.version == net.version and net.overlaps(other):  # type: ignore[arg-type]
                via = "" if name == chain.state.name else f", which {chain.state.name!r} routes to"
                raise RouteOverlap(
                    f"cannot route {chain.state.name!r} to {target.state.name!r}: its {net} "
                    f"overlaps {other} of {name!r}{via} (an address in both would be ambiguous)"
                )


def _random_free(pick: Any, field: str, taken: list[tuple[str, Any]]) -> Net:
    """A random CIDR from ``pick()`` that overlaps none of the owner's networks."""
    for _ in range(200):
        net = ipaddress.ip_network(pick())
        try:
            _refuse_overlap(net, field, taken)
        except AtenetError:
            continue
        return net
    raise AtenetError(f"could not find a free {field}: give one with --{field}")
