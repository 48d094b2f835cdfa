"""`atenet`: run and manage an atenet node.

\b
  atenet init   create this host's deployment (node authority + node keys)
  atenet up     the one-command main job: init, a default network, and the node
  atenet run    serve every network of the deployment (UDP + HTTP)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from atenet.node.core import MAX_PORTS_PER_ADDRESS, MAX_PORTS_PER_KEY, PORT_RATE, PortLimits
from atenet.node.daemon import MEMBER_GRACE, NodeDaemon
from atenet.node.http import serve_http, tls_context
from atenet.overlay.token import AccessToken
from atenet.owner import Owner
from atenet.paths import config_dir, write_private

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


@dataclass(frozen=True)
class HttpConfig:
    """The node's HTTP server: web page, WebSocket ports, status and metrics."""

    listen: str
    port: int
    tls_cert: str | None
    tls_key: str | None
    ws_heartbeat: float

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.listen}:{self.port}"


def http_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The HTTP options `run` and `up` share, bundled into one ``http`` argument."""

    @functools.wraps(fn)
    def wrapper(*args: Any, http_listen: str, http_port: int, tls_cert: str | None,
                tls_key: str | None, ws_heartbeat: float, **kwargs: Any) -> Any:  # fmt: skip
        config = HttpConfig(http_listen, http_port, tls_cert, tls_key, ws_heartbeat)
        return fn(*args, http=config, **kwargs)

    for option in reversed([
        click.option("--http-listen", default="127.0.0.1", show_default=True,
                     help="Address of the HTTP server (web page, WebSockets, status, metrics); "
                     "0.0.0.0 to let other machines' browsers join."),
        click.option("--http-port", type=click.IntRange(0, 65535), default=8080,
                     show_default=True, help="HTTP port (0: no HTTP server)."),
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="Serve HTTPS/wss: "
                     "PEM certificate (recommended: tokens travel in WebSocket URLs)."),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key."),
        click.option("--ws-heartbeat", type=click.FloatRange(1, 3600), default=20.0,
                     show_default=True, help="Seconds between WebSocket pings; a client that "
                     "does not answer within half of it is closed."),
    ]):  # fmt: skip
        wrapper = option(wrapper)
    return wrapper


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
@click.option("--advertise", metavar="HOST:PORT", help="Endpoint clients dial (default: guessed).")
@click.option("--quiet", is_flag=True, help="No live status line.")
@http_options
@run_async
async def up(
    store_url: str | None,
    network_name: str,
    udp_port: int,
    advertise: str | None,
    quiet: bool,
    http: HttpConfig,
) -> None:
    """The main job, in one command: set up this machine (deployment, embedded store, a default
    network, an access key) and run the node; prints how to join. Ctrl-C stops cleanly."""
    store, record, _ = await do_init(store_url)
    try:
        owner = Owner(store, load_or_create_owner())
        chains = [c for c in await owner.chains() if c.state.name == network_name]
        chain = chains[0] if chains else await owner.create(record, network_name)
        daemon = NodeDaemon(
            store, load_node_key(), load_authority(), udp_port=udp_port, advertise=advertise,
            lock_dir=config_dir(),
        )  # fmt: skip

        async def announce(node: NodeDaemon) -> None:
            # Load the network first, so its status shows before the first client arrives.
            await node.ensure_network(chain.network_id)
            token = await up_token(owner, chain, str(node.advertise))
            s = chain.state.settings
            click.echo(f"store    {record.store}")
            click.echo(f"network  {s.name} {chain.network_id.hex()} {s.cidr} {s.cidr6}")
            click.echo(f"node     {node.node_id} udp {node.advertise}")
            if http.port:
                click.echo(f"status   {http.base_url}/api/status")
                click.echo("open in a browser to join:")
                click.echo(f"{http.base_url}/#{token}")
            click.echo("join a Linux host (as root):")
            click.echo(f"  tok connect {token}", nl=True)
            if not quiet and sys.stdout.isatty():
                await live_status(node, chain.network_id)

        await serve_until_signal(daemon, http, announce)
    finally:
        await store.close()


async def live_status(node: NodeDaemon, network_id: bytes) -> None:
    """A compact status line (members, ports, traffic) updated in place until stopped."""
    from rich.live import Live

    last = (0, 0, time.monotonic())
    with Live(refresh_per_second=2, transient=True) as live:
        while True:
            runtime = node.core.networks.get(network_id)
            frames = sum(p.frames_in for p in runtime.switch.ports.values()) if runtime else 0
            drops = sum(runtime.drops.values()) if runtime else 0
            now = time.monotonic()
            rate = (frames - last[0]) / max(now - last[2], 1e-6)
            last = (frames, drops, now)
            members = len(runtime.state.members) if runtime and runtime.state else 0
            ports = len(runtime.switch) if runtime else 0
            kinds = (
                ", ".join(sorted({p.kind for p in runtime.switch.ports.values()}))
                if runtime
                else ""
            )
            live.update(
                f"[bold]live[/]  members {members}  ports {ports} {kinds}  "
                f"frames in {frames} ({rate:.0f}/s)  drops {drops}"
            )
            await asyncio.sleep(0.5)


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
            await chain.catch_up()
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
@click.option(
    "--member-grace",
    type=click.FloatRange(0, 86400),
    default=MEMBER_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="Stay a member of a network this long after its last local client left, so a page "
    "reload or a reconnect writes no leave/join pair into the chain.",
)
@click.option(
    "--max-ports-per-key",
    type=click.IntRange(1, 1_000_000),
    default=MAX_PORTS_PER_KEY,
    show_default=True,
    help="UDP client sessions one access key may hold on this node.",
)
@click.option(
    "--max-ports-per-address",
    type=click.IntRange(1, 1_000_000),
    default=MAX_PORTS_PER_ADDRESS,
    show_default=True,
    help="UDP client sessions from one source IP address on this node.",
)
@click.option(
    "--port-rate",
    type=click.FloatRange(1, 1e9),
    default=PORT_RATE,
    show_default=True,
    metavar="PPS",
    help="Packets per second one client session may send; the excess is dropped before "
    "decryption (counted as port_rate).",
)
@http_options
@run_async
async def run(
    store_url: str | None,
    listen: str,
    udp_port: int,
    advertise: str | None,
    heartbeat: float,
    member_grace: float,
    max_ports_per_key: int,
    max_ports_per_address: int,
    port_rate: float,
    http: HttpConfig,
) -> None:
    """Serve every network of this deployment: one UDP socket for clients and peers, networks
    loaded on demand, WebSocket ports and counters over HTTP. SIGTERM or Ctrl-C leave cleanly."""
    store = await connected_store(store_url)
    try:
        daemon = NodeDaemon(
            store, load_node_key(), load_authority(), listen=listen, udp_port=udp_port,
            advertise=advertise, heartbeat=heartbeat, member_grace=member_grace,
            limits=PortLimits(max_ports_per_key, max_ports_per_address, port_rate, port_rate / 10),
            lock_dir=config_dir(),
        )  # fmt: skip
        await serve_until_signal(daemon, http)
    finally:
        await store.close()


async def serve_until_signal(daemon: NodeDaemon, http: HttpConfig, on_ready: Any = None) -> None:
    """Run the node until SIGTERM/SIGINT, then leave memberships and stop."""
    tls = tls_context(http.tls_cert, http.tls_key)
    await daemon.start()
    runner = None
    if http.port:
        runner = await serve_http(
            daemon, http.listen, http.port, tls=tls, ws_heartbeat=http.ws_heartbeat
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(
        f"node {daemon.node_id} serving on udp {daemon.listen}:{daemon.udp_port} "
        f"(advertised {daemon.advertise})" + (f", {http.base_url}/" if http.port else ""),
        err=True,
    )
    ready = asyncio.ensure_future(on_ready(daemon)) if on_ready is not None else None
    try:
        await stop.wait()
    finally:
        if ready is not None:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ready
        click.echo("stopping: leaving networks", err=True)
        await daemon.stop()
        if runner is not None:
            await runner.cleanup()


if __name__ == "__main__":
    main()
