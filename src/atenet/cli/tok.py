"""`tok`: create and manage networks and access keys, and connect hosts to them.

Every command takes --store (or ATENET_STORE); errors are one line, without a traceback.

Start-up time matters (`tok --help`, `tok network list` in scripts): this module imports only
click and cheap standard modules at the top; the chain, cryptography, asyncio and the stores are
imported inside the commands that use them (docs/cli.md, "Start-up time").
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import click

from atenet.cli.common import (
    connected_store,
    fail,
    group_store_option,
    json_option,
    print_json,
    run_async,
    run_loop,
    store_option,
)
from atenet.errors import AtenetError
from atenet.overlay.token import AccessToken

if TYPE_CHECKING:
    from atenet.chain.log import Chain
    from atenet.chain.state import NetworkState
    from atenet.chain.store import ChainStore
    from atenet.deployment import Deployment
    from atenet.owner import Owner


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, two spaces apart, never cut (scripts should use --json). Plain
    text rather than rich: importing rich costs more than the rest of `tok network list`."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@asynccontextmanager
async def owner_session(store_url: str | None, *, create: bool = False) -> AsyncIterator[Owner]:
    """The owner's view of the store. Only ``create`` commands may create a missing SQLite
    store file; the others refuse it (a mistyped path is not an empty store)."""
    from atenet.deployment import load_or_create_owner
    from atenet.owner import Owner

    store = await connected_store(store_url, create=create)
    try:
        yield Owner(store, load_or_create_owner())
    finally:
        await store.close()


async def resolve_deployment(store: ChainStore) -> Deployment:
    """The deployment networks are created for: this host's record, else the one published in
    the store (pinned on first use under tok's config, so a swapped record is noticed)."""
    from atenet.deployment import Deployment, deployment_path, owner_key_path

    local = deployment_path()
    if local.exists():
        return Deployment.decode(local.read_bytes(), str(local))
    pinned = owner_key_path().parent / "deployment.json"
    published = await store.get_meta("deployment")
    if published is None:
        if pinned.exists():
            return Deployment.decode(pinned.read_bytes(), str(pinned))
        raise AtenetError(
            f"no deployment found on this host or in {store.url}: run `atenet init` on a node first"
        )
    record = Deployment.decode(published, f"{store.url} (meta 'deployment')")
    if pinned.exists():
        known = Deployment.decode(pinned.read_bytes(), str(pinned))
        if known.authority_sign != record.authority_sign:
            raise AtenetError(
                f"the deployment record in {store.url} changed since first use (pinned in "
                f"{pinned}): refusing to hand network keys to an unknown authority"
            )
    else:
        pinned.write_bytes(record.encode())
    return record


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atenet")
@group_store_option
def main() -> None:
    """Manage atenet virtual networks: networks, access keys, routes, and the chain's log.

    \b
    Quick start:
      tok network create office
      tok key export office --label laptop     # prints an access token
      sudo tok connect --token-file FILE       # joins this host (see `tok connect --help`)
      tok nc --token-file FILE 10.x.y.z 80     # no root: a TCP connection from a mio session

    Exit codes: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
    """


# --------------------------------------------------------------------------- network


@main.group()
def network() -> None:
    """Create, list, show, change and delete networks."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", help="IPv4 network, e.g. 10.20.30.0/24 (default: a random 10.x.y.0/24).")
@click.option("--cidr6", help="IPv6 ULA /64, e.g. fd12:3456:789a:1::/64 (default: random).")
@click.option("--mtu", type=click.IntRange(576, 9000), default=1400, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Accept public IPv4 space, an IPv4 network larger than /16, or a non-ULA IPv6 /64.",
)
@store_option
@json_option
@run_async
async def network_create(
    name: str,
    cidr: str | None,
    cidr6: str | None,
    mtu: int,
    force: bool,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Create a network NAME (1-64 printable characters) owned by you, in the deployment's
    store. Its IPv4 CIDR must be private (10/8, 172.16/12, 192.168/16, 100.64/10) and at most a
    /16, its IPv6 /64 unique-local, and neither may overlap another of your networks."""
    async with owner_session(store_url, create=True) as owner:
        deployment = await resolve_deployment(owner.store)
        chain = await owner.create(deployment, name, cidr, cidr6, mtu, force=force)
        if as_json:
            print_json(chain.state.summary(time.time()))
        else:
            s = chain.state.settings
            click.echo(f"created network {s.name} ({chain.network_id.hex()}) {s.cidr} {s.cidr6}")
            click.echo(f"next: tok key export {s.name} --label NAME")


@network.command("list")
@store_option
@json_option
def network_list(store_url: str | None, as_json: bool) -> None:
    """List your networks."""
    from atenet.cli.common import existing_sqlite

    try:
        sqlite = existing_sqlite(store_url)
        if sqlite is not None:
            # A local file: replay it without asyncio (atenet.chain.quick says why).
            from atenet.chain.quick import owned_states
            from atenet.deployment import load_or_create_owner

            states = owned_states(sqlite[1], sqlite[0], load_or_create_owner())
        else:
            states = run_loop(_owned_states(store_url))
    except AtenetError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        sys.exit(130)
    now = time.time()
    if as_json:
        print_json([s.summary(now) for s in states])
        return
    if not states:
        click.echo("no networks yet: create one with `tok network create NAME`")
        return
    rows = []
    for s in states:
        rows.append(
            (
                s.name,
                s.network_id.hex(),
                s.settings.cidr,
                s.settings.cidr6,
                str(len(s.active_keys(now))),
                str(len(s.members)),
            )
        )
    _table(("name", "id", "cidr", "cidr6", "keys", "members"), rows)


async def _owned_states(store_url: str | None) -> list[NetworkState]:
    async with owner_session(store_url) as owner:
        return [c.state for c in await owner.chains()]


@network.command("show")
@click.argument("name")
@store_option
@json_option
@run_async
async def network_show(name: str, store_url: str | None, as_json: bool) -> None:
    """Show a network: settings, keys, member nodes, routes."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(name)
        await chain.load_latest()
        summary = chain.state.summary(time.time())
        if as_json:
            print_json(summary)
            return
        s = chain.state.settings
        click.echo(f"network  {s.name}")
        click.echo(f"id       {summary['id']}")
        click.echo(f"ipv4     {s.cidr}")
        click.echo(f"ipv6     {s.cidr6}")
        click.echo(f"mtu      {s.mtu}")
        click.echo(f"dns      {' '.join(s.dns)}")
        private = ", private ranges too" if s.internet and s.nat_private else ""
        click.echo(f"internet {'on' if s.internet else 'off'}{private}")
        click.echo(
            f"fdb      age {s.fdb_age} s, MACs {s.fdb_macs:,}, per port {s.fdb_port_macs:,}, "
            f"per peer node {s.fdb_peer_macs:,}"
        )
        click.echo(f"proxy    ARP/ND {'on' if s.proxy_arp else 'off'}")
        click.echo(f"snooping {'on' if s.snooping else 'off'}")
        click.echo(f"events   {summary['seq']}")
        active = sum(k["state"] == "active" for k in summary["keys"])
        click.echo(f"keys     {len(summary['keys'])} ({active} active)")
        for m in summary["members"]:
            click.echo(f"member   node {m['node_id']} {' '.join(m['endpoints'])}")
        for r in summary["routes"]:
            click.echo(f"route    -> {r['name'] or r['to']} (key {r['key_id']})")


@network.command("set")
@click.argument("name")
@click.option("--name", "new_name", metavar="NEW_NAME", help="Rename the network.")
@click.option("--mtu", type=click.IntRange(576, 9000), help="MTU clients configure.")
@click.option(
    "--dns",
    multiple=True,
    metavar="ADDRESS",
    help="DNS server (IPv4 or IPv6) the network's DHCP/RA will announce; repeat for several "
    "(up to 4). Default 8.8.8.8.",
)
@click.option(
    "--internet",
    type=click.Choice(["on", "off"]),
    help="NAT to the internet through the nodes' own addresses (default off); on also makes "
    "DHCP and RA offer the gateway as default router (docs/nat.md).",
)
@click.option(
    "--nat-private",
    type=click.Choice(["on", "off"]),
    help="With --internet on: let NAT reach private-range destinations (10/8, 192.168/16, "
    "fc00::/7, ...: the node's own LAN). Default off.",
)
@click.option(
    "--fdb-age",
    type=int,
    metavar="SECONDS",
    help="Forget a learned MAC this long after its last frame (10-86400; default 300).",
)
@click.option(
    "--fdb-macs",
    type=int,
    metavar="N",
    help="MACs each node's switch learns for the network (default 8192).",
)
@click.option(
    "--fdb-port-macs",
    type=int,
    metavar="N",
    help="MACs one local port (a host) may teach a node's switch (default 64).",
)
@click.option(
    "--fdb-peer-macs",
    type=int,
    metavar="N",
    help="MACs a node learns behind one other node (default 4096). Lowering a bound evicts "
    "nothing: learning stops until entries age out.",
)
@click.option(
    "--proxy-arp",
    type=click.Choice(["on", "off"]),
    help="Each node's gateway answers ARP and neighbour solicitations from its ports for "
    "hosts on other nodes it heard lately, so those requests do not cross nodes (default off).",
)
@click.option(
    "--snooping",
    type=click.Choice(["on", "off"]),
    help="IGMP/MLD snooping (default on): multicast goes only to the hosts that joined its "
    "group. Off floods every multicast frame to every host.",
)
@store_option
@json_option
@run_async
async def network_set(
    name: str,
    new_name: str | None,
    mtu: int | None,
    dns: tuple[str, ...],
    internet: str | None,
    snooping: str | None,
    store_url: str | None,
    as_json: bool,
    proxy_arp: str | None,
    nat_private: str | None,
    **fdb_options: int | None,
) -> None:
    """Change NAME's settings live: nodes follow the chain and hand the new values to every
    client that connects afterwards (connected clients keep theirs until they reconnect).
    The --fdb-* bounds of the learning switch apply at once on every node, keeping what it
    learned (docs/learning.md). --internet reaches IPv6 hosts at once (the gateways advertise
    again) and DHCP clients at their next renewal (docs/nat.md)."""
    fdb = {k: v for k, v in fdb_options.items() if v is not None}
    unchanged = new_name is None and mtu is None and not dns and internet is None
    unchanged = unchanged and nat_private is None
    if unchanged and snooping is None and not fdb and proxy_arp is None:
        raise click.UsageError(
            "nothing to change: give --name, --mtu, --dns, --internet, --nat-private, "
            "--snooping, --proxy-arp or an --fdb-* option"
        )
    async with owner_session(store_url) as owner:
        chain = await owner.find(name)
        change = await owner.set_settings(
            chain,
            name=new_name,
            fdb=fdb,
            proxy_arp=None if proxy_arp is None else proxy_arp == "on",
            mtu=mtu,
            dns=list(dns) if dns else None,
            internet=None if internet is None else internet == "on",
            snooping=None if snooping is None else snooping == "on",
            nat_private=None if nat_private is None else nat_private == "on",
        )
        if as_json:
            print_json({"network": chain.network_id.hex(), "changed": change})
        elif change:
            changes = " ".join(
                f"{k}={','.join(v) if isinstance(v, list) else v}"
                for k, v in sorted(change.items())
            )
            click.echo(f"network {chain.state.name}: {changes}")
        else:
            click.echo(f"network {chain.state.name}: nothing changed")


@network.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@store_option
@json_option
@run_async
async def network_delete(name: str, yes: bool, store_url: str | None, as_json: bool) -> None:
    """Delete a network and its chain. Nodes drop it; every access key stops working."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(name)
        if not yes and not click.confirm(f"delete network {chain.state.name!r} for good?"):
            raise AtenetError("not deleted")
        await owner.delete(chain)
        if as_json:
            print_json({"id": chain.network_id.hex(), "name": chain.state.name, "deleted": True})
        else:
            click.echo(f"deleted network {chain.state.name} ({chain.network_id.hex()})")


# --------------------------------------------------------------------------- keys


@main.group()
def key() -> None:
    """Export, list and revoke access keys (one per person or device)."""


@key.command("export")
@click.argument("network_name", metavar="NETWORK")
@click.option("--label", default="", help="Who or what the key is for (shown by `key list`).")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="HOST:PORT",
    help="Node endpoint the token dials (repeat for fail-over). Default: the network's member "
    "nodes and the deployment's published nodes.",
)
@click.option(
    "--expires",
    metavar="DURATION",
    help="Expire after e.g. 12h or 30d, counted from now; must be positive (default never).",
)
@store_option
@json_option
@run_async
async def key_export(
    network_name: str,
    label: str,
    nodes: tuple[str, ...],
    expires: str | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Create a new access key for NETWORK and print its token (shown only this once)."""
    from atenet.owner import parse_duration

    expires_in = parse_duration(expires) if expires is not None else None
    if expires_in is not None and not expires_in > 0:
        raise AtenetError(f"--expires {expires} is not in the future: use e.g. 12h or 30d")
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        endpoints = list(nodes) or await default_endpoints(owner.store, chain)
        for endpoint in endpoints:
            _check_endpoint(endpoint)
        token = await owner.export_key(chain, label, endpoints, expires_in)
        if as_json:
            access_key = chain.state.keys[token.key_id]
            print_json(
                {
                    "network": chain.network_id.hex(),
                    "network_name": chain.state.name,
                    "key_id": token.key_id,
                    "label": access_key.label,
                    "expires": access_key.expires,
                    "endpoints": list(token.endpoints),
                    "token": token.encode(),
                }
            )
        else:
            click.echo(token.encode())
        if not endpoints:
            click.echo(
                "warning: the token names no node endpoint; pass --node HOST:PORT "
                "(or start a node with `atenet run`) so clients know where to connect",
                err=True,
            )


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AtenetError(f"bad node endpoint {endpoint!r}: use HOST:PORT, e.g. 192.0.2.7:4799")


async def default_endpoints(store: ChainStore, chain: Chain) -> list[str]:
    """Endpoints of the network's member nodes, then the live nodes published in the store
    (entries older than ``NODE_RECORD_MAX_AGE`` belong to nodes that are gone: skipped)."""
    import time

    from atenet.deployment import published_endpoints

    endpoints: list[str] = []
    for member in chain.state.members.values():
        endpoints.extend(e for e in member.endpoints if e not in endpoints)
    published = published_endpoints(await store.get_meta("nodes"), time.time())
    endpoints.extend(e for e in published if e not in endpoints)
    return endpoints


@key.command("list")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def key_list(network_name: str, store_url: str | None, as_json: bool) -> None:
    """List NETWORK's access keys (never their secrets), each active, expired or revoked."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        now = time.time()
        keys = [k.public_view(now) for k in chain.state.keys.values()]
        if as_json:
            print_json(keys)
            return
        if not keys:
            click.echo(f"no keys: export one with `tok key export {chain.state.name}`")
            return
        rows = []
        for k in keys:
            state = k["state"]
            if state == "revoked":
                state = f"revoked {_when(k['revoked_at'])}"
            rows.append(
                (str(k["key_id"]), k["label"], _when(k["created"]), _when(k["expires"]), state)
            )
        _table(("id", "label", "created", "expires", "state"), rows)


@key.command("revoke")
@click.argument("network_name", metavar="NETWORK")
@click.argument("key_id", type=int)
@store_option
@json_option
@run_async
async def key_revoke(network_name: str, key_id: int, store_url: str | None, as_json: bool) -> None:
    """Revoke access key KEY_ID of NETWORK: nodes drop its traffic as soon as they see it."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        await owner.revoke_key(chain, key_id)
        if as_json:
            revoked = chain.state.keys[key_id]
            print_json(
                {
                    "network": chain.network_id.hex(),
                    "key_id": key_id,
                    "label": revoked.label,
                    "state": "revoked",
                    "revoked_at": revoked.revoked_at,
                }
            )
        else:
            click.echo(f"revoked key {key_id} of {chain.state.name}")


# --------------------------------------------------------------------------- routes


@main.group()
def route() -> None:
    """Routes from one network to another (used by the network's gateway)."""


def _route_json(network: Chain, r: Any) -> dict[str, Any]:
    return {
        "network": network.network_id.hex(),
        "to": r.to,
        "name": r.name,
        "key_id": r.key_id,
        "added": r.added,
        "created_key": r.created_key,
    }


@route.command("add")
@click.argument("network_name", metavar="NETWORK")
@click.argument("other", required=False, metavar="[OTHER_NETWORK]")
@click.option("--to", "token_text", metavar="TOKEN", help="The other network's access token.")
@click.option(
    "--one-way",
    is_flag=True,
    help="Only NETWORK -> OTHER_NETWORK (by default, when you own both, both directions).",
)
@store_option
@json_option
@run_async
async def route_add(
    network_name: str,
    other: str | None,
    token_text: str | None,
    one_way: bool,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Route NETWORK to another network you own, by name, in both directions (replies need the
    way back): a key of each network is exported for the route into the other, and revoked by
    `tok route remove`. --one-way adds NETWORK -> OTHER_NETWORK only. With --to TOKEN (another
    owner's network) only NETWORK -> that network can be added; its owner adds the way back.

    Overlapping CIDRs are refused (exit 1): neither network may overlap the other, nor another
    network either one already routes to.

    Idempotent: a direction that already exists is not added again (no second key either); it
    says so and exits 0 (--json: "added": false for it)."""
    if (other is None) == (token_text is None):
        raise click.UsageError("give either OTHER_NETWORK or --to TOKEN")
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        foreign = False
        if token_text is not None:
            token = AccessToken.decode(token_text)
            r, added = await owner.add_route(chain, token)
            results = [(chain, r, added)]
            owned = {c.network_id.hex() for c in await owner.chains()}
            foreign = token.network_hex not in owned
        elif one_way:
            assert other is not None
            results = [(chain, *await owner.add_route_to(chain, await owner.find(other)))]
        else:
            assert other is not None
            results = await owner.add_routes_between(chain, await owner.find(other))
        if as_json:
            routes = [{**_route_json(c, r), "added": added} for c, r, added in results]
            print_json(
                {
                    **routes[0],
                    "added": any(added for _c, _r, added in results),
                    "both_ways": len(routes) == 2,
                    "routes": routes,
                }
            )
            return
        for c, r, added in results:
            if added:
                click.echo(f"route {c.state.name} -> {r.name or r.to} added (key {r.key_id})")
            else:
                click.echo(
                    f"route {c.state.name} -> {r.name or r.to} exists (key {r.key_id}): "
                    "nothing added"
                )
        if foreign:
            click.echo(
                "one way only: that network is not yours; its owner adds the route back "
                "(`tok route add THEIR_NETWORK --to TOKEN` with a key of "
                f"{chain.state.name})"
            )


@route.command("list")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def route_list(network_name: str, store_url: str | None, as_json: bool) -> None:
    """List NETWORK's routes."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        routes = [
            {"to": r.to, "name": r.name, "key_id": r.key_id, "added": r.added}
            for r in chain.state.routes.values()
        ]
        if as_json:
            print_json(routes)
            return
        if not routes:
            click.echo("no routes")
        for r in routes:
            click.echo(f"{r['name'] or '-':20} {r['to']}  key {r['key_id']}  {_when(r['added'])}")


@route.command("remove")
@click.argument("network_name", metavar="NETWORK")
@click.argument("other", metavar="OTHER_NETWORK")
@click.option("--one-way", is_flag=True, help="Only NETWORK -> OTHER_NETWORK, not the route back.")
@store_option
@json_option
@run_async
async def route_remove(
    network_name: str, other: str, one_way: bool, store_url: str | None, as_json: bool
) -> None:
    """Remove the routes between NETWORK and OTHER_NETWORK (name or id prefix), both
    directions (--one-way: NETWORK -> OTHER_NETWORK only). A key that `tok route add`
    exported for a route is revoked with it; a key given with --to TOKEN is left alone."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        if one_way:
            results = [(chain, *await owner.remove_route(chain, other))]
        else:
            results = await owner.remove_routes_between(chain, other)
        if as_json:
            routes = [
                {**_route_json(c, r), "removed": True, "revoked_key": revoked}
                for c, r, revoked in results
            ]
            print_json({**routes[0], "routes": routes})
            return
        for c, r, revoked in results:
            target = r.name or r.to
            extra = f", key {revoked} of {target} revoked" if revoked is not None else ""
            click.echo(f"route {c.state.name} -> {target} removed{extra}")


# --------------------------------------------------------------------------- host side


def _add_client_commands() -> None:
    """connect, disconnect, status, ping: the commands a client host runs (cli/tok_client.py)."""
    from atenet.cli.tok_client import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_client_commands()


def _add_mio_commands() -> None:
    """nc, serve: stdin/stdout over a mio session (cli/tok_mio.py, docs/mio.md)."""
    from atenet.cli.tok_mio import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_mio_commands()


# --------------------------------------------------------------------------- monitor


@main.command()
@click.argument("network_name", metavar="[NETWORK]", required=False)
@click.option(
    "--token",
    "token_text",
    metavar="TOKEN",
    envvar="ATENET_TOKEN",
    help="Monitor with this access token (env: ATENET_TOKEN). On the command line every local "
    "user can read it: prefer --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="PATH",
    help="Read the access token from PATH ('-': stdin).",
)
@click.option(
    "--pcap",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write a pcap file (tshark/Wireshark) instead of text; '-' writes it to stdout.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after N frames.")
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for a node to answer (at start, or after it went silent).",
)
@store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame (JSON Lines).")
def monitor(
    network_name: str | None,
    token_text: str | None,
    token_file: str | None,
    pcap: str | None,
    count: int | None,
    wait: float,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Watch NETWORK's frames: one line each (time, MACs, protocol summary), or a pcap file.

    Joins as a passive port over UDP (no TAP, no root; it never sends a frame). As the owner,
    a key labelled "monitor" is exported once and kept in tok's config dir; others pass
    --token-file (or ATENET_TOKEN). Ctrl-C stops.
    """
    from atenet.cli.tok_client import ARGV_WARNING, in_argv, read_token_file
    from atenet.client.monitor import monitor_token, run_command

    ctx = click.get_current_context()
    if token_file is not None:
        if in_argv(ctx):
            raise click.UsageError("give the token once: --token or --token-file, not both")
        try:
            token_text = read_token_file(token_file)
        except AtenetError as exc:
            fail(str(exc))
    elif token_text and in_argv(ctx):
        # Only a real token is worth the warning: a typo gets its one-line error alone.
        try:
            AccessToken.decode(token_text)
        except AtenetError as exc:
            fail(str(exc))
        click.echo(ARGV_WARNING, err=True)

    async def owner_token() -> AccessToken:
        async with owner_session(store_url) as owner:
            chain = await owner.find(network_name or "")
            return await monitor_token(owner, chain, await default_endpoints(owner.store, chain))

    try:
        run_loop(run_command(network_name, token_text, owner_token, pcap, count, wait, as_json))
    except AtenetError as exc:
        fail(str(exc))


# --------------------------------------------------------------------------- log


@main.command("log")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def log_cmd(network_name: str, store_url: str | None, as_json: bool) -> None:
    """Print NETWORK's chain, verifying every event (seq, time, author, kind)."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        lines = await owner.log(chain.network_id)
        if as_json:
            print_json([line.to_json() for line in lines])
            return
        for line in lines:
            when = _when(line.time_ms / 1000)
            click.echo(f"{line.seq:6} {when} {line.author:22} {line.kind:13} {line.summary}")


from atenet.cli.tok_hosts import hosts  # noqa: E402  (its own module: `tok hosts`)

main.add_command(hosts)

from atenet.cli.tok_lease import lease  # noqa: E402  (its own module: `tok lease`)

main.add_command(lease)

if __name__ == "__main__":
    main()
