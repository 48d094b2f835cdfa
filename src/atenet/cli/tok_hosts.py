"""`tok hosts NETWORK`: every host on a network by name, across all its nodes.

Each member node lists its ports in its heartbeat (a bounded latest record beside the chain,
see :mod:`atenet.node.hosts`); this command reads those records with the owner's key, as
`tok network show` does, and prints one line per host: its name (the host name its client sent),
the access key's label, its hashed IPv4/IPv6, MAC, the node it is on and when it was last heard.
Hosts of nodes that left the network are not listed; those of a member whose heartbeat stopped
are marked stale. See docs/hosts.md.
"""

from __future__ import annotations

import time
from typing import Any

import click

from atenet.cli.common import json_option, print_json, run_async, store_option


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def collect_hosts(
    diagnostics: dict[str, dict[str, Any]], members: set[str], now: float
) -> tuple[list[dict[str, Any]], int]:
    """The hosts listed by member nodes' heartbeats, and how many their bounds left out."""
    hosts: list[dict[str, Any]] = []
    truncated = 0
    for key, record in diagnostics.items():
        node = str(record.get("node", key))
        if node not in members or not isinstance(record.get("hosts"), list):
            continue
        beat = record.get("time_ms", 0) / 1000
        interval = float(record.get("interval", 10.0))
        stale = now - beat > 3 * interval + 1  # as the nodes judge each other's liveness
        truncated += int(record.get("truncated", 0) or 0)
        for entry in record["hosts"]:
            if not isinstance(entry, dict):
                continue
            hosts.append(
                {
                    "name": str(entry.get("host") or entry.get("label") or ""),
                    "host": str(entry.get("host", "")),
                    "label": str(entry.get("label", "")),
                    "ipv4": str(entry.get("ipv4", "")),
                    "ipv6": str(entry.get("ipv6", "")),
                    "mac": str(entry.get("mac", "")),
                    "kind": str(entry.get("kind", "")),
                    "port": str(entry.get("name", "")),
                    "node": node,
                    "last_seen": float(entry.get("last_seen", 0) or 0),
                    "heartbeat": beat,
                    "stale": stale,
                }
            )
    hosts.sort(key=lambda h: (h["name"], h["node"], h["port"]))
    return hosts, truncated


@click.command("hosts")
@click.argument("network_name", metavar="NETWORK")
@store_option
@json_option
@run_async
async def hosts(network_name: str, store_url: str | None, as_json: bool) -> None:
    """List the hosts on NETWORK: name, label, IP, MAC, node, last seen.

    \b
    Read from the member nodes' heartbeats (every --heartbeat seconds, 10 by default), so a
    host that just connected shows up within one interval. Names are the host names clients
    sent (`tok connect` sends the system's host name) and the access keys' labels.
    """
    from atenet.cli.common import connected_store
    from atenet.deployment import load_or_create_owner
    from atenet.owner import Owner

    store = await connected_store(store_url)
    try:
        chain = await Owner(store, load_or_create_owner()).find(network_name)
        diagnostics = await chain.load_latest()
    finally:
        await store.close()
    now = time.time()
    found, truncated = collect_hosts(diagnostics, set(chain.state.members), now)
    if as_json:
        print_json(
            {
                "network": chain.state.name,
                "id": chain.network_id.hex(),
                "hosts": found,
                "truncated": truncated,
            }
        )
        return
    if not found:
        click.echo(
            f"no hosts on {chain.state.name}: connect one with `tok connect --token-file FILE` "
            "(nodes list their hosts in heartbeats, so a new one shows up within an interval)"
        )
        return
    rows = [("NAME", "LABEL", "IPV4", "IPV6", "MAC", "NODE", "LAST SEEN")]
    for h in found:
        seen = _ago(now - h["last_seen"]) + (" (node silent)" if h["stale"] else "")
        rows.append(
            (h["name"] or "-", h["label"] or "-", h["ipv4"] or "-", h["ipv6"] or "-",
             h["mac"] or "-", h["node"], seen)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))
    if truncated:
        click.echo(f"({truncated} more not listed: each node lists at most 256 hosts)", err=True)
