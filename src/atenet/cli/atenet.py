"""`atenet`: run and manage an atenet node.

\b
  atenet init   create this host's deployment (node authority + node keys)
  atenet up     the one-command main job: init, a default network, and the node
  atenet run    serve every network of the deployment (UDP + HTTP)
  atenet install-service   systemd units for the node and for `tok connect`
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from atenet.chain.log import Chain
from atenet.chain.store import ChainStore, default_store_url
from atenet.cli.common import (
    connected_store,
    fail,
    group_store_option,
    json_option,
    print_json,
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
from atenet.overlay.token import AccessToken
from atenet.owner import Owner
from atenet.paths import config_dir, write_private
from atenet.switch.core import STORM_RATE

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
@json_option
@run_async
async def init(store_url: str | None, as_json: bool) -> None:
    """Create this host's deployment: node authority and node keys (kept, mode 0600, in the
    config dir), and the deployment record `tok` uses to create networks. Safe to run again."""
    store, record, created = await do_init(store_url)
    await store.close()
    if as_json:
        print_json(
            {
                "deployment": record.id,
                "created": created,
                "store": record.store,
                "node_id": load_node_key().node_id,
                "config_dir": str(config_dir()),
            }
        )
        return
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
        """The URL of the listening address, or of loopback when listening on every address."""
        return self.url_for("127.0.0.1" if self.all_addresses else self.listen)

    @property
    def all_addresses(self) -> bool:
        return self.listen in ("0.0.0.0", "", "::")

    def url_for(self, host: str) -> str:
        scheme = "https" if self.tls_cert else "http"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return f"{scheme}://{host}:{self.port}"

    def public_url(self, advertised_host: str) -> str:
        """The URL other machines' browsers use: the advertised host when listening on every
        address (``http://0.0.0.0:8080`` is no address a browser can open)."""
        return self.url_for(advertised_host if self.all_addresses else self.listen)


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
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    help="Endpoint tokens name, i.e. where clients dial this node (comma-separated for several). "
    "Default: this host's address on its default route.",
)
@click.option("--quiet", is_flag=True, help="No live status line.")
@json_option
@http_options
@run_async
async def up(
    store_url: str | None,
    network_name: str,
    udp_port: int,
    advertise: str | None,
    quiet: bool,
    as_json: bool,
    http: HttpConfig,
) -> None:
    """The main job, in one command: set up this machine (deployment, embedded store, a default
    network, an access key) and run the node; prints how to join. Ctrl-C stops cleanly.

    With --json, prints one JSON object (node, endpoints, URLs, token) once the node serves,
    then keeps running."""
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
            endpoints = list(node.advertised.endpoints)
            token, token_file = await up_token(owner, chain, endpoints)
            s = chain.state.settings
            host = endpoints[0].rpartition(":")[0]
            page = f"{http.public_url(host)}/#{token}" if http.port else None
            local_page = f"{http.base_url}/#{token}" if http.port else None
            connect = f"ATENET_TOKEN={token} tok connect"
            if as_json:
                print_line_json(
                    {
                        **_started(node, http, store),
                        "network": {
                            "name": s.name,
                            "id": chain.network_id.hex(),
                            "cidr": s.cidr,
                            "cidr6": s.cidr6,
                        },
                        "page_url": page,
                        "page_url_local": local_page,
                        "token": token,
                        "token_file": str(token_file),
                        "connect_command": connect,
                    }
                )
                return
            click.echo(f"store    {record.store}")
            click.echo(f"network  {s.name} {chain.network_id.hex()} {s.cidr} {s.cidr6}")
            click.echo(f"node     {node.node_id} udp {' '.join(endpoints)}")
            if http.port:
                click.echo(f"status   {http.base_url}/api/status")
                if page != local_page:
                    click.echo("open in a browser to join, from another machine:")
                    click.echo(page)
                    click.echo("or on this machine:")
                else:
                    click.echo("open in a browser on this machine to join:")
                click.echo(local_page)
            click.echo("join a Linux host (as root), from anywhere that reaches the node:")
            click.echo(f"  {connect}")
            click.echo(f"or on this machine:  tok connect --token-file {token_file}")
            if not quiet and sys.stdout.isatty():
                await live_status(node, chain.network_id)

        await serve_until_signal(daemon, http, announce)
    finally:
        await store.close()


def print_line_json(data: dict[str, Any]) -> None:
    """One JSON object on one line, flushed: a script reads the first line of a command that
    keeps running (``atenet run --json | head -1``)."""
    click.echo(json.dumps(data, sort_keys=True))
    sys.stdout.flush()


def _started(node: NodeDaemon, http: HttpConfig, store: ChainStore) -> dict[str, Any]:
    """What `up --json` and `run --json` print about the running node."""
    host = node.advertised.endpoints[0].rpartition(":")[0]
    return {
        "node_id": node.node_id,
        "endpoints": list(node.advertised.endpoints),
        "advertised_from": node.advertised.source,
        "listen": f"{node.listen}:{node.udp_port}",
        "store": store.url,
        "http_url": f"{http.public_url(host)}/" if http.port else None,
        "status_url": f"{http.base_url}/api/status" if http.port else None,
        "nat": node.core.nat,
    }


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


async def up_token(owner: Owner, chain: Chain, endpoints: list[str]) -> tuple[str, Path]:
    """The access token `atenet up` prints, and the file (0600, in the config dir) that keeps
    it: reused while its key is active and names these endpoints, so restarts do not pile up
    keys (and a token naming an old address is replaced)."""
    path = config_dir() / f"up-token-{chain.network_id.hex()}"
    if path.exists():
        try:
            token = AccessToken.decode(path.read_text())
        except AtenetError:
            token = None
        if token is not None and list(token.endpoints) == endpoints:
            await chain.catch_up()
            key = chain.state.keys.get(token.key_id)
            if key is not None and key.usable(time.time()) and key.secret == token.secret:
                return token.encode(), path
    token = await owner.export_key(chain, "atenet up", endpoints)
    write_private(path, token.encode().encode())
    return token.encode(), path


@main.command()
@store_option
@click.option(
    "--listen",
    default="0.0.0.0",
    show_default=True,
    help="UDP address to bind (an address other than 0.0.0.0 is also what tokens name).",
)
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
    help="Endpoint other nodes and clients reach this node at, comma-separated for several "
    "(default: the --listen address, else this host's address on its default route, else "
    "every global address; the UDP port when PORT is left out).",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(0.2, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between liveness records; peers stop flooding to a node whose "
    "heartbeat is older than 3 intervals.",
)
@json_option
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
@click.option(
    "--storm-rate",
    type=click.FloatRange(0, 1e9),
    default=STORM_RATE,
    show_default=True,
    metavar="FPS",
    help="Frames per second one port may flood (broadcast, unknown unicast, unregistered "
    "multicast); the excess is dropped (storm_drops). 0: no limit.",
)
@click.option(
    "--no-nat",
    is_flag=True,
    help="Give no network internet access through this node, whatever its owner set "
    "(`tok network set --internet on`): no NAT, and DHCP/RA offer no default route.",
)
@http_options
@run_async
async def run(
    store_url: str | None,
    listen: str,
    udp_port: int,
    advertise: str | None,
    heartbeat: float,
    as_json: bool,
    member_grace: float,
    max_ports_per_key: int,
    max_ports_per_address: int,
    port_rate: float,
    storm_rate: float,
    no_nat: bool,
    http: HttpConfig,
) -> None:
    """Serve every network of this deployment: one UDP socket for clients and peers, networks
    loaded on demand, WebSocket ports and counters over HTTP. SIGTERM or Ctrl-C leave cleanly.

    With --json, prints one JSON object (node id, endpoints, URLs) once the node serves."""
    store = await connected_store(store_url)
    try:
        daemon = NodeDaemon(
            store, load_node_key(), load_authority(), listen=listen, udp_port=udp_port,
            advertise=advertise, heartbeat=heartbeat, member_grace=member_grace,
            limits=PortLimits(
                max_ports_per_key, max_ports_per_address, port_rate, port_rate / 10, storm_rate
            ),
            lock_dir=config_dir(), nat=not no_nat,
        )  # fmt: skip

        async def announce(node: NodeDaemon) -> None:
            if as_json:
                print_line_json(_started(node, http, store))

        await serve_until_signal(daemon, http, announce)
    finally:
        await store.close()


def advertise_notice(daemon: NodeDaemon) -> str:
    """The loud line saying which address tokens carry, why, and how to change it."""
    adv = daemon.advertised
    names = ", ".join(adv.endpoints)
    if adv.source == "loopback":
        return (
            f"warning: this host has no address but loopback: tokens name {names}, which only "
            "this machine can reach; pass --advertise HOST:PORT with an address clients reach"
        )
    why = {
        "--advertise": "as given by --advertise",
        "--listen": "the --listen address",
        "default route": "this host's address on its default route",
        "global addresses": "every global address: this host has no default route",
    }.get(adv.source, adv.source)
    notice = f"tokens name this node as {names} ({why})"
    if adv.loopback_only:
        return f"{notice}; only this machine can reach it"
    if adv.source in ("--advertise", "--listen"):
        return notice
    return f"{notice}; clients must reach it there, else pass --advertise HOST:PORT"


def fast_path_notice() -> str:
    """Which data path this process runs: an operator comparing nodes' figures, or chasing a
    bug into the compiled code, needs to know (docs/fastpath.md; ATENET_PURE=1 turns it off)."""
    from atenet.fast import FAST, fast_status

    if FAST is None:
        return f"fast path: {fast_status()}"
    return f"fast path: {fast_status()}; small packets sealed by {FAST.small_aead()}"


async def serve_until_signal(daemon: NodeDaemon, http: HttpConfig, on_ready: Any = None) -> None:
    """Run the node until SIGTERM/SIGINT, then leave memberships and stop.

    The node is published in the store ("nodes" record) only once every socket, UDP and HTTP,
    is bound: a start that fails leaves the endpoint a working node published untouched."""
    # Imported here, not at the top: aiohttp's server takes ~0.5 s to import, which every other
    # `atenet` command (init, up, install-service) would pay for nothing.
    from atenet.node.http import serve_http, tls_context

    tls = tls_context(http.tls_cert, http.tls_key)
    await daemon.start(publish=False)
    runner = None
    try:
        if http.port:
            runner = await serve_http(
                daemon, http.listen, http.port, tls=tls, ws_heartbeat=http.ws_heartbeat
            )
        await daemon.publish()
    except BaseException:
        if runner is not None:
            await runner.cleanup()
        await daemon.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(
        f"node {daemon.node_id} serving on udp {daemon.listen}:{daemon.udp_port} "
        f"(advertised {daemon.advertise})" + (f", {http.base_url}/" if http.port else ""),
        err=True,
    )
    click.echo(advertise_notice(daemon), err=True)
    click.echo(fast_path_notice(), err=True)
    if not daemon.core.nat:
        click.echo(
            "NAT is off on this node (--no-nat): no network reaches the internet here", err=True
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


@main.command("install-service")
@click.option(
    "--user",
    metavar="NAME",
    help="Run the node as this existing system user (default: a systemd dynamic user).",
)
@click.option("--store", "store_url", metavar="URL", help="The node's chain store (ATENET_STORE).")
@click.option(
    "--connect",
    "network",
    metavar="NAME",
    help="Install the client unit tok-connect@NAME instead, with the token of network NAME.",
)
@click.option(
    "--token-file",
    type=click.File("r"),
    help="With --connect: file holding the access token ('-': stdin). Default: $ATENET_TOKEN.",
)
@click.option("--dev", help="With --connect: the TAP device name (default atenet0).")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Install under this directory instead of / (for images and tests).",
)
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
@click.argument("run_args", nargs=-1, metavar="[-- RUN_OPTIONS...]")
def install_service(
    user: str | None,
    store_url: str | None,
    network: str | None,
    token_file: Any,
    dev: str | None,
    root: Path,
    dry_run: bool,
    run_args: tuple[str, ...],
) -> None:
    """Install systemd units: the node (atenet.service, running `atenet run RUN_OPTIONS`), or
    with --connect NAME the client (tok-connect@NAME, its token in /etc/atenet/NAME.token, mode
    0600, handed over as a systemd credential). Logs go to the journal. Then run the printed
    systemctl command.

    \b
      atenet install-service -- --http-listen 0.0.0.0 --advertise node.example.net
      atenet install-service --connect office --token-file office.token
    """
    from atenet import service

    try:
        if network is None:
            if token_file is not None or dev is not None:
                fail("--token-file and --dev go with --connect NAME", 2)
            atenet_cmd = service.command_path("atenet")
            text = service.node_unit(atenet_cmd, user, store_url, run_args)
            files = [service.UnitFile(service.UNIT_DIR / service.NODE_UNIT, text)]
            enable = "systemctl daemon-reload && systemctl enable --now atenet"
        else:
            if user is not None or store_url is not None or run_args:
                fail("--user, --store and RUN_OPTIONS go with the node unit, not --connect", 2)
            name = service.check_instance_name(network)
            text = service.connect_unit(service.command_path("tok"))
            files = [service.UnitFile(service.UNIT_DIR / service.CONNECT_UNIT, text)]
            if dev is not None:
                env = f"ATENET_DEV={service.check_dev(dev)}\n"
                files.append(service.UnitFile(service.TOKEN_DIR / f"{name}.env", env))
            token_text = token_file.read() if token_file is not None else None
            token_text = (token_text or os.environ.get("ATENET_TOKEN") or "").strip()
            if not token_text and not dry_run:
                fail("no token: pass --token-file FILE (or '-' for stdin) or set ATENET_TOKEN")
            if token_text:
                AccessToken.decode(token_text)  # refuse to install a damaged token
            files.append(
                service.UnitFile(service.TOKEN_DIR / f"{name}.token", token_text + "\n", 0o600)
            )
            enable = f"systemctl daemon-reload && systemctl enable --now tok-connect@{name}"
    except AtenetError as exc:
        fail(str(exc))
        return
    if dry_run:
        for f in files:
            click.echo(f"# file: {f.path} (mode {f.mode:04o})")
            click.echo("# (the token, not shown)" if f.mode == 0o600 else f.text, nl=False)
            click.echo("" if f.mode != 0o600 else "\n", nl=False)
        click.echo(f"# then: {enable}")
        return
    try:
        written = service.install(files, root)
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror} (as root?)")
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"now: {enable}")


if __name__ == "__main__":
    main()
