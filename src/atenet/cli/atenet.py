"""`atenet`: run and manage an atenet node.

\b
  atenet init   create this host's deployment (node authority + node keys)
  atenet up     the one-command main job: init, a default network, and the node
  atenet run    serve every network of the deployment (UDP + HTTP)
"""

from __future__ import annotations

import click

from atenet.chain.store import ChainStore, default_store_url
from atenet.cli.common import (
    connected_store,
    group_store_option,
    run_async,
    setup_logging,
    store_option,
)
from atenet.deployment import Deployment, init_deployment, load_or_create_owner
from atenet.owner import Owner

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
    help="Name of the network to create (if absent) and show.",
)
@run_async
async def up(store_url: str | None, network_name: str) -> None:
    """Set up everything on this machine and print the network to join."""
    store, record, _ = await do_init(store_url)
    try:
        owner = Owner(store, load_or_create_owner())
        chains = [c for c in await owner.chains() if c.state.name == network_name]
        chain = chains[0] if chains else await owner.create(record, network_name)
        s = chain.state.settings
        click.echo(f"store    {record.store}")
        click.echo(f"network  {s.name} {chain.network_id.hex()} {s.cidr} {s.cidr6}")
    finally:
        await store.close()


if __name__ == "__main__":
    main()
