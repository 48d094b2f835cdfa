"""`tok`: create and manage networks and access keys, and (later) connect hosts to them.

Every command takes --store (or ATENET_STORE); errors are one line, without a traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import click
from rich.console import Console
from rich.table import Table

from atenet.chain.log import Chain
from atenet.chain.store import ChainStore
from atenet.cli.common import (
    connected_store,
    fail,
    group_store_option,
    json_option,
    print_json,
    run_async,
    run_loop,
    setup_logging,
    store_option,
)
from atenet.deployment import Deployment, deployment_path, load_or_create_owner, owner_key_path
from atenet.errors import AtenetError
from atenet.overlay.token import AccessToken
from atenet.owner import Owner, parse_duration

# Wide when piped, so ids are never cut in logs and scripts (which should use --json).
console = Console(width=None if sys.stdout.isatty() else 200)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@asynccontextmanager
async def owner_session(store_url: str | None) -> AsyncIterator[Owner]:
    store = await connected_store(store_url)
    try:
        yield Owner(store, load_or_create_owner())
    finally:
        await store.close()


async def resolve_deployment(store: ChainStore) -> Deployment:
    """The deployment networks are created for: this host's record, else the one published in
    the store (pinned on first use under tok's config, so a swapped record is noticed)."""
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
      sudo tok connect TOKEN                   # joins this host (see `tok connect --help`)
    """


# --------------------------------------------------------------------------- network


@main.group()
def network() -> None:
    """Create, list, show and delete networks."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", help="IPv4 network, e.g. 10.20.30.0/24 (default: a random 10.x.y.0/24).")
@click.option("--cidr6", help="IPv6 ULA /64, e.g. fd12:3456:789a:1::/64 (default: random).")
@click.option("--mtu", type=click.IntRange(576, 9000), default=1400, show_default=True)
@store_option
@json_option
@run_async
async def network_create(
    name: str, cidr: str | None, cidr6: str | None, mtu: int, store_url: str | None, as_json: bool
) -> None:
    """Create a network NAME owned by you, in the deployment's store."""
    async with owner_session(store_url) as owner:
        deployment = await resolve_deployment(owner.store)
        chain = await owner.create(deployment, name, cidr, cidr6, mtu)
        if as_json:
            print_json(chain.state.summary())
        else:
            s = chain.state.settings
            click.echo(f"created network {s.name} ({chain.network_id.hex()}) {s.cidr} {s.cidr6}")
            click.echo(f"next: tok key export {s.name} --label NAME")


@network.command("list")
@store_option
@json_option
@run_async
async def network_list(store_url: str | None, as_json: bool) -> None:
    """List your networks."""
    async with owner_session(store_url) as owner:
        chains = await owner.chains()
        if as_json:
            print_json([c.state.summary() for c in chains])
            return
        if not chains:
            click.echo("no networks yet: create one with `tok network create NAME`")
            return
        table = Table("name", "id", "cidr", "cidr6", "keys", "members", box=None)
        for c in chains:
            s = c.state
            active = sum(1 for k in s.keys.values() if not k.revoked)
            table.add_row(
                s.name,
                c.network_id.hex(),
                s.settings.cidr,
                s.settings.cidr6,
                str(active),
                str(len(s.members)),
            )
        console.print(table)


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
        summary = chain.state.summary()
        if as_json:
            print_json(summary)
            return
        s = chain.state.settings
        click.echo(f"network  {s.name}")
        click.echo(f"id       {summary['id']}")
        click.echo(f"ipv4     {s.cidr}")
        click.echo(f"ipv6     {s.cidr6}")
        click.echo(f"mtu      {s.mtu}")
        click.echo(f"events   {summary['seq']}")
        active = sum(not k["revoked"] for k in summary["keys"])
        click.echo(f"keys     {len(summary['keys'])} ({active} active)")
        for m in summary["members"]:
            click.echo(f"member   node {m['node_id']} {' '.join(m['endpoints'])}")
        for r in summary["routes"]:
            click.echo(f"route    -> {r['name'] or r['to']} (key {r['key_id']})")


@network.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@store_option
@run_async
async def network_delete(name: str, yes: bool, store_url: str | None) -> None:
    """Delete a network and its chain. Nodes drop it; every access key stops working."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(name)
        if not yes and not click.confirm(f"delete network {chain.state.name!r} for good?"):
            raise AtenetError("not deleted")
        await owner.delete(chain)
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
@click.option("--expires", metavar="DURATION", help="Expire after e.g. 12h or 30d (default never).")
@store_option
@run_async
async def key_export(
    network_name: str,
    label: str,
    nodes: tuple[str, ...],
    expires: str | None,
    store_url: str | None,
) -> None:
    """Create a new access key for NETWORK and print its token (shown only this once)."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        endpoints = list(nodes) or await default_endpoints(owner.store, chain)
        for endpoint in endpoints:
            _check_endpoint(endpoint)
        token = await owner.export_key(
            chain, label, endpoints, parse_duration(expires) if expires else None
        )
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
    """Endpoints of the network's member nodes, then the nodes published in the store."""
    endpoints: list[str] = []
    for member in chain.state.members.values():
        endpoints.extend(e for e in member.endpoints if e not in endpoints)
    published = await store.get_meta("nodes")
    if published:
        try:
            for entry in json.loads(published).values():
                endpoints.extend(
                    e
                    for e in entry.get("endpoints", [])
                    if isinstance(e, str) and e not in endpoints
                )
        except (ValueError, AttributeError, TypeError, RecursionError):
            pass  # a damaged record (a store can hold anything): the members' endpoints stand
    return endpoints


@key.command("list")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def key_list(network_name: str, store_url: str | None, as_json: bool) -> None:
    """List NETWORK's access keys (never their secrets)."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        keys = [k.public_view() for k in chain.state.keys.values()]
        if as_json:
            print_json(keys)
            return
        if not keys:
            click.echo(f"no keys: export one with `tok key export {chain.state.name}`")
            return
        table = Table("id", "label", "created", "expires", "state", box=None)
        for k in keys:
            state = f"revoked {_when(k['revoked_at'])}" if k["revoked"] else "active"
            table.add_row(
                str(k["key_id"]), k["label"], _when(k["created"]), _when(k["expires"]), state
            )
        console.print(table)


@key.command("revoke")
@click.argument("network_name", metavar="NETWORK")
@click.argument("key_id", type=int)
@store_option
@run_async
async def key_revoke(network_name: str, key_id: int, store_url: str | None) -> None:
    """Revoke access key KEY_ID of NETWORK: nodes drop its traffic as soon as they see it."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        await owner.revoke_key(chain, key_id)
        click.echo(f"revoked key {key_id} of {chain.state.name}")


# --------------------------------------------------------------------------- routes


@main.group()
def route() -> None:
    """Routes from one network to another (used by the network's gateway)."""


@route.command("add")
@click.argument("network_name", metavar="NETWORK")
@click.argument("other", required=False, metavar="[OTHER_NETWORK]")
@click.option("--to", "token_text", metavar="TOKEN", help="The other network's access token.")
@store_option
@run_async
async def route_add(
    network_name: str, other: str | None, token_text: str | None, store_url: str | None
) -> None:
    """Route NETWORK to another network: by its access token (--to TOKEN), or, when you own
    both, by name (a key for the route is exported from OTHER_NETWORK for you)."""
    if (other is None) == (token_text is None):
        raise click.UsageError("give either OTHER_NETWORK or --to TOKEN")
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        if token_text is not None:
            token = AccessToken.decode(token_text)
            name = ""
        else:
            assert other is not None
            target = await owner.find(other)
            token = await owner.export_key(target, f"route from {chain.state.name}", [])
            name = target.state.name
        await owner.add_route(chain, token, name)
        click.echo(f"route {chain.state.name} -> {name or token.network_hex} added")


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
@store_option
@run_async
async def route_remove(network_name: str, other: str, store_url: str | None) -> None:
    """Remove NETWORK's route to OTHER_NETWORK (name or id prefix)."""
    async with owner_session(store_url) as owner:
        chain = await owner.find(network_name)
        await owner.remove_route(chain, other)
        click.echo(f"route {chain.state.name} -> {other} removed")


# --------------------------------------------------------------------------- connect


@main.command()
@click.argument("token_text", metavar="TOKEN", envvar="ATENET_TOKEN")
@click.option("--dev", default="atenet0", show_default=True, help="TAP device name.")
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for a node to answer before giving up.",
)
@click.option(
    "--no-offload",
    is_flag=True,
    help="Open the TAP without TSO/checksum offload (one frame per packet, as older versions).",
)
@click.option("--daemon", is_flag=True, help="Go to the background once connected.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="With --daemon: log here.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def connect(
    token_text: str,
    dev: str,
    wait: float,
    no_offload: bool,
    daemon: bool,
    log_file: str | None,
    verbose: int,
) -> None:
    """Join this Linux host to a network with an access TOKEN (or $ATENET_TOKEN).

    Creates a TAP device (needs root), gives it this host's stable MAC and the IPv4/IPv6
    addresses derived from it, and carries its frames, encrypted, to a node named in the token
    (failing over to the next one if it stops answering). Runs in the foreground until Ctrl-C;
    the TAP device is removed on exit.
    """
    setup_logging(verbose)
    token = _decode_token(token_text)
    if daemon:
        _daemonize(token_text, dev, wait, log_file, no_offload)
        return
    from atenet.client.connect import Connected, Connection

    def announce(info: Connected) -> None:
        click.echo(
            f"connected to {info.network or token.network_hex} via node {info.node}: "
            f"{info.dev} {info.ipv4} {info.ipv6} mac {info.mac} mtu {info.mtu}",
        )

    async def body() -> None:
        conn = Connection(token, dev, offload=not no_offload)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, conn.stop)
        await conn.run(wait, announce)

    try:
        run_loop(body())
    except AtenetError as exc:
        fail(str(exc))


def _decode_token(text: str) -> AccessToken:
    try:
        return AccessToken.decode(text)
    except AtenetError as exc:
        fail(str(exc))
        raise


def _daemonize(
    token_text: str, dev: str, wait: float, log_file: str | None, no_offload: bool = False
) -> None:
    """Start `tok connect` again in its own session; return once it has connected."""
    log_path = log_file or f"/tmp/tok-connect-{dev}.log"
    env = {**os.environ, "ATENET_TOKEN": token_text}
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "atenet.cli.tok", "connect", "--dev", dev, "--wait", str(wait)]
            + (["--no-offload"] if no_offload else []),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    assert child.stdout is not None
    line = child.stdout.readline().decode().strip()
    if not line.startswith("connected"):
        child.wait()
        fail(f"tok connect did not connect; see {log_path}")
    click.echo(f"{line} (pid {child.pid}, log {log_path})")


# --------------------------------------------------------------------------- status


@main.command()
@click.option(
    "--node",
    "node_url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="ATENET_NODE",
    help="The node's HTTP address (`atenet run --http-port`).",
)
@json_option
def status(node_url: str, as_json: bool) -> None:
    """A node's live counters: networks, ports, peers, and packets dropped by reason.

    A host whose packets the node drops gets no answer at all (no oracle), so this is where to
    look when `tok connect` says no node answered: `revoked_key`, `unknown_key`, `auth`,
    `replay`, `unknown_network` say why.
    """
    import urllib.error
    import urllib.request

    url = node_url.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        fail(f"cannot read {url}: {exc}; is `atenet run` running with that --http-port?")
        return
    if as_json:
        print_json(data)
        return
    click.echo(f"node {data['node']} at {data['endpoint']}, {data['datagrams']} datagrams in")
    if data["drops"]:
        click.echo("  dropped before any network: " + _drops(data["drops"]))
    for net in data["networks"]:
        click.echo(
            f"network {net['name']} ({net['id'][:12]}) {net['cidr']} "
            f"member={'yes' if net['member'] else 'no'} peers={','.join(net['peers']) or '-'}"
        )
        click.echo(f"  to peers {net['frames_to_peers']}  from peers {net['frames_from_peers']}")
        if net["drops"]:
            click.echo("  dropped: " + _drops(net["drops"]))
        for p in net["ports"]:
            click.echo(
                f"  port {p['name']}: in {p['frames_in']} out {p['frames_out']} drops {p['drops']}"
            )


def _drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()))


# --------------------------------------------------------------------------- monitor


@main.command()
@click.argument("network_name", metavar="[NETWORK]", required=False)
@click.option("--token", "token_text", metavar="TOKEN", help="Monitor with this access token.")
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
    pcap: str | None,
    count: int | None,
    wait: float,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Watch NETWORK's frames: one line each (time, MACs, protocol summary), or a pcap file.

    Joins as a passive port over UDP (no TAP, no root; it never sends a frame). As the owner,
    a key labelled "monitor" is exported once and kept in tok's config dir; others pass
    --token. Ctrl-C stops.
    """
    from atenet.client.monitor import monitor_token, run_command

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
            when = dt.datetime.fromtimestamp(line.time_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{line.seq:6} {when} {line.author:22} {line.kind:13} {line.summary}")


if __name__ == "__main__":
    main()
