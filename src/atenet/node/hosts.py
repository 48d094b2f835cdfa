"""The hosts a node lists in its heartbeats, for `tok hosts` (docs/hosts.md).

A heartbeat is a bounded "latest record" per node per network (one record, replaced every
interval), so the list of ports it carries is bounded too: at most :data:`HEARTBEAT_PORTS`
entries, the most recently heard first, and ``truncated`` says how many were left out. Each entry
is the port's name fields only (no counters), so 256 ports stay well under the store's limits
(about 60 KiB of JSON at worst).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from atenet.switch.core import Port

HEARTBEAT_PORTS = 256
"""Ports listed in one heartbeat; the rest are counted in ``truncated``."""

FIELDS = ("name", "label", "host", "mac", "ipv4", "ipv6", "kind", "last_seen")
"""What each listed port carries (see :meth:`atenet.switch.core.Port.counters`)."""


def heartbeat_ports(ports: Iterable[Port], limit: int = HEARTBEAT_PORTS) -> dict[str, Any]:
    """``{"hosts": [...], "truncated": n}``: the ``limit`` most recently heard ports."""
    listed = sorted(ports, key=lambda p: p.last_seen, reverse=True)
    hosts = []
    for port in listed[:limit]:
        counters = port.counters()
        hosts.append({field: counters[field] for field in FIELDS})
    return {"hosts": hosts, "truncated": max(0, len(listed) - limit)}
