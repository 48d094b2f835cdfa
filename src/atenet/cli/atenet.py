"""`atenet`: run and manage an atenet node.

\b
  atenet init   create this host's deployment (node authority + node keys)
  atenet up     the one-command main job: init, a default network, and the node
  atenet run    serve every network of the deployment (UDP + HTTP)
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import click

from atenet.chain.log import Chain
from atenet.chain.store import ChainStore, default_store_url
from atenet.cli.common import (
    connected_store,
    group_store_option,
    run_async,
    setup_logging,
    store_option,
)
from atenet.deployment import (
    Deployment,
    init_deployment,
    load_authority,
    load_node_key,
    load_or_create_owner,
)
from atenet.errors import AtenetError
from atenet.node.daemon import NodeDaemon
from atenet.node.http import serve_http
from atenet.owner import Owner
from atenet.paths import config_dir, write_private
from atenet.token import AccessToken

DEFAULT_NETWORK = "default"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atenet")
@group_store_option
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """atenet: a distributed virtual Ethernet switch.

    \b
    Start here:  atenet up          (everything on this machine, embedded store)
    Then:        tok network list   (and `tok --help`)
    """
    setup_logging(verbose)


async def publish_deployment(store: ChainStore, record: Deployment) -> None:
    """Put the deployment's public record in the store so a remote `tok` can find it."""
    await store.put_meta("deployment", record.encode())


async def do_init(store_url: str | None) -> tuple[ChainStore, Deployment, bool]:
    url = store_url or default_store_url()
    store = await connected_store(url)
    record, created = init_deployment(url)
    await publish_deployment(store, record)
    return store, record, created


@main.command()
@store_option
@run_async
async def init(store_url: str | None) -> None:
    """Create this host's deployment: node authority and node keys (kept, mode 0600, in the
    config dir), and the deployment record `tok` uses to create networks. Safe to run again."""
    store, record, created = await do_init(store_url)
    await store.close()
    verb = "created" if created else "already set up:"
    click.echo(f"deployment {record.id} {verb} (store {record.store})")


@main.command()
@store_option
@click.option(
    "--network",
    "network_name",
    default=DEFAULT_NETWORK,
    show_default=True,
    help="Name of the network to create (if absent) and serve.",
)
@click.option("--udp-port", type=click.IntRange(0, 65535), default=4799, show_default=True)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--http-listen", default="127.0.0.1", show_default=True, help="Address of the HTTP server."
)
@click.option("--advertise", metavar="HOST:PORT", help="Endpoint clients dial (default: guessed).")
@run_async
async def up(
    store_url: str | None,
    network_name: str,
    udp_port: int,
    http_port: int,
    http_listen: str,
    advertise: str | None,
) -> None:
    """The main job, in one command: set up this machine (deployment, embedded store, a default
    network, an access key) and run the node; prints how to join. Ctrl-C stops cleanly."""
    store, record, _ = await do_init(store_url)
    try:
        owner = Owner(store, load_or_create_owner())
        chains = [c for c in await owner.chains() if c.state.name == network_name]
        chain = chains[0] if chains else await owner.create(record, network_name)
        daemon = NodeDaemon(
            store, load_node_key(), load_authority(), udp_port=udp_port, advertise=advertise
        )

        async def announce(node: NodeDaemon) -> None:
            token = await up_token(owner, chain, str(node.advertise))
            s = chain.state.settings
            click.echo(f"store    {record.store}")
            click.echo(f"network  {s.name} {chain.network_id.hex()} {s.cidr} {s.cidr6}")
            click.echo(f"node     {node.node_id} udp {node.advertise}")
            if http_port:
                click.echo(f"status   http://{http_listen}:{http_port}/api/status")
            click.echo("join a Linux host (as root):")
            click.echo(f"  tok connect {token}")

        await serve_until_signal(daemon, http_listen, http_port, announce)
    finally:
        await store.close()


async def up_token(owner: Owner, chain: Chain, endpoint: str) -> str:
    """The access token `atenet up` prints: kept (0600) in the config dir and reused while its
    key is active and names this endpoint, so restarts do not pile up keys."""
    path = config_dir() / f"up-token-{chain.network_id.hex()}"
    if path.exists():
        try:
            token = AccessToken.decode(path.read_text())
        except AtenetError:
            token = None
        if token is not None and endpoint in token.endpoints:
            key = chain.state.keys.get(token.key_id)
            if key is not None and key.usable(time.time()) and key.secret == token.secret:
                return token.encode()
    token = await owner.export_key(chain, "atenet up", [endpoint])
    write_private(path, token.encode().encode())
    return token.encode()


@main.command()
@store_option
@click.option("--listen", default="0.0.0.0", show_default=True, help="UDP address to bind.")
@click.option(
    "--udp-port",
    type=click.IntRange(0, 65535),
    default=4799,
    show_default=True,
    help="UDP port for clients and peer nodes (0: any free port).",
)
@click.option(
    "--http-listen",
    default="127.0.0.1",
    show_default=True,
    help="Address of the HTTP server (status, metrics).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="HTTP port for /api/status and /metrics (0: no HTTP server).",
)
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    help="Endpoint other nodes and clients reach this node at "
    "(default: the --listen address or this host's address, and the UDP port).",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(0.2, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between liveness records; peers stop flooding to a node whose "
    "heartbeat is older than 3 intervals.",
)
@run_async
async def run(
    store_url: str | None,
    listen: str,
    udp_port: int,
    http_listen: str,
    http_port: int,
    advertise: str | None,
    heartbeat: float,
) -> None:
    """Serve every network of this deployment: one UDP socket for clients and peers, networks
    loaded on demand, counters over HTTP. SIGTERM or Ctrl-C leave cleanly."""
    store = await connected_store(store_url)
    try:
        daemon = NodeDaemon(
            store,
            load_node_key(),
            load_authority(),
            listen=listen,
            udp_port=udp_port,
            advertise=advertise,
            heartbeat=heartbeat,
        )
        await serve_until_signal(daemon, http_listen, http_port)
    finally:
        await store.close()


async def serve_until_signal(
    daemon: NodeDaemon, http_listen: str, http_port: int, on_ready: Any = None
) -> None:
    """Run the node until SIGTERM/SIGINT, then leave memberships and stop."""
    await daemon.start()
    runner = await serve_http(daemon, http_listen, http_port) if http_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(
        f"node {daemon.node_id} serving on udp {daemon.listen}:{daemon.udp_port} "
        f"(advertised {daemon.advertise})"
        + (f", http://{http_listen}:{http_port}/api/status" if http_port else ""),
        err=True,
    )
    try:
        if on_ready is not None:
            await on_ready(daemon)
        await stop.wait()
    finally:
        click.echo("stopping: leaving networks", err=True)
        await daemon.stop()
        if runner is not None:
            await runner.cleanup()


if __name__ == "__main__":
    main()
