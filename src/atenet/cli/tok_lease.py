"""`tok lease list NETWORK`: the DHCP bindings of a network, read from its chain.

A node's DHCP server writes one ``lease`` event when it binds an address to a MAC (never one per
renewal); the chain folds those events into one table by a rule every reader shares
(:mod:`atenet.chain.leases`), so what this command prints is exactly what every node serving the
network hands out. The owner reads the chain with its own key, as `tok network show` does.
``expires`` is how long the chain holds the address for the MAC (router/dhcp.py ``hold``: far
longer than the lease time a client is given, so an address is never handed to another MAC
while its client may still use it); a binding past it stays listed, marked expired, until the
pool needs the address. See docs/router.md.
"""

from __future__ import annotations

import time
from typing import Any

import click

from atenet.cli.common import json_option, print_json, run_async, store_option


def lease_rows(leases: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The folded bindings (ordered by address) as `--json` shows them."""
    rows = []
    for record in leases:
        expires = float(record.get("expires", 0))
        rows.append(
            {
                "ip": str(record["ip"]),
                "mac": str(record["mac"]),
                "host": str(record.get("host", "")),
                "node": str(record.get("node", "")),
                "bound_at": float(record["time"]),
                "expires": expires,
                "expired": expires <= now,
                "seq": int(record["seq"]),
            }
        )
    return rows


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@click.group("lease")
def lease() -> None:
    """DHCP bindings (MAC -> IPv4) the networks' gateways handed out."""


@lease.command("list")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def lease_list(network_name: str, store_url: str | None, as_json: bool) -> None:
    """List NETWORK's DHCP bindings: IP, MAC, host name, node, when bound, when it expires.

    \b
    One binding per address, as every node resolves the chain's lease events (renewals write
    nothing, so "bound" is when the address was first bound to that MAC). A binding past its
    expiry is marked expired: its address goes to another MAC only when the pool needs it.
    --json: a list of {"ip", "mac", "host", "node", "bound_at", "expires", "expired", "seq"}.
    """
    from atenet.cli.common import connected_store
    from atenet.deployment import load_or_create_owner
    from atenet.owner import Owner

    store = await connected_store(store_url, create=False)
    try:
        chain = await Owner(store, load_or_create_owner()).find(network_name)
        await chain.catch_up()
    finally:
        await store.close()
    now = time.time()
    rows = lease_rows(chain.state.lease_table.values(), now)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(
            f"no leases on {chain.state.name}: a host gets one when its DHCP client asks a node's "
            "gateway (e.g. `tok connect`)"
        )
        return
    table = [("IP", "MAC", "HOST", "NODE", "BOUND", "EXPIRES")]
    for r in rows:
        expires = _when(r["expires"]) + (" (expired)" if r["expired"] else "")
        table.append((r["ip"], r["mac"], r["host"] or "-", r["node"] or "-",
                      _when(r["bound_at"]), expires))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))
