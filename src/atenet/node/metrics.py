"""/metrics through prometheus_client: a collector that reads the node's status at scrape time.

Writing the text format by hand broke every scrape as soon as a network name held ``"``, a
newline or ``}`` (one owner could blind a shared node's monitoring). The library escapes label
values and writes HELP and TYPE for every family. The collector turns the same status dict
``/api/status`` serves into metric families when Prometheus asks, so the packet path pays
nothing: its counters are the plain integers it already keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FDB_LIMITS = ("max", "port_max", "peer_max", "age")
"""fdb_counters entries that are settings (a gauge), not events (docs/learning.md)."""

PORT_FIELDS = {
    "frames_in": "Frames a local port sent into the switch.",
    "frames_out": "Frames the switch delivered to a local port.",
    "bytes_in": "Bytes a local port sent into the switch.",
    "bytes_out": "Bytes the switch delivered to a local port.",
    "drops": "Frames dropped on a local port (full queue, bad size).",
}


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


class NodeCollector(Collector):
    """Yields the node's metric families from ``status()`` (the operator view of /api/status)
    each time the registry is collected."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        networks = s.get("networks", [])
        yield CounterMetricFamily(
            "atenet_datagrams", "UDP datagrams received.", value=s.get("datagrams", 0)
        )
        yield CounterMetricFamily(
            "atenet_send_errors",
            "UDP sends the kernel refused (full buffers, unreachable peers).",
            value=s.get("send_errors", 0),
        )
        yield GaugeMetricFamily(
            "atenet_uptime_seconds", "Seconds since the node started.", value=s.get("uptime", 0)
        )
        yield GaugeMetricFamily(
            "atenet_networks", "Networks this node serves now.", value=len(networks)
        )
        yield GaugeMetricFamily(
            "atenet_fastpath",
            "1 when this node runs the compiled fast path, 0 when pure Python (docs/fastpath.md).",
            value=1 if s.get("fastpath") == "on" else 0,
        )

        drops = _counter(
            "atenet_drops", "Packets dropped, by network (empty: before one was known) and "
            "reason.", ["network", "network_id", "reason"]
        )  # fmt: skip
        for reason, count in sorted(s.get("drops", {}).items()):
            drops.add_metric(["", "", reason], count)
        for net in networks:
            for reason, count in sorted(net.get("drops", {}).items()):
                drops.add_metric([net["name"], net["id"], reason], count)
        yield drops

        labels = ["network", "network_id"]
        ports = GaugeMetricFamily("atenet_ports", "Local switch ports, per network.", labels=labels)
        member = GaugeMetricFamily(
            "atenet_member", "1 while this node is a member of the network.", labels=labels
        )
        to_peers = _counter("atenet_frames_to_peers", "Frames sent to peer nodes.", labels)
        from_peers = _counter(
            "atenet_frames_from_peers", "Frames received from peer nodes.", labels
        )
        fdb = GaugeMetricFamily(
            "atenet_fdb_entries",
            "MACs in the network's learning table (docs/learning.md).",
            labels=labels,
        )
        fdb_events = _counter(
            "atenet_fdb", "Learning table events (moves, full, aged, ...), by kind.",
            ["network", "network_id", "what"],
        )  # fmt: skip
        fdb_limits = GaugeMetricFamily(
            "atenet_fdb_limit",
            "The learning table's settings (max, port_max, peer_max MACs; age in seconds).",
            labels=["network", "network_id", "what"],
        )
        groups = GaugeMetricFamily(
            "atenet_mcast_groups",
            "Multicast groups with members in the network (IGMP/MLD snooping, docs/learning.md).",
            labels=labels,
        )
        mcast_events = _counter(
            "atenet_mcast", "IGMP/MLD snooping events (reports, joins, leaves, expired, ...).",
            ["network", "network_id", "what"],
        )  # fmt: skip
        per_port = {
            field: _counter(f"atenet_port_{field}", doc, ["network", "network_id", "port", "kind"])
            for field, doc in PORT_FIELDS.items()
        }
        for net in networks:
            net_labels = [net["name"], net["id"]]
            ports.add_metric(net_labels, len(net.get("ports", [])))
            member.add_metric(net_labels, 1 if net.get("member") else 0)
            to_peers.add_metric(net_labels, net.get("frames_to_peers", 0))
            from_peers.add_metric(net_labels, net.get("frames_from_peers", 0))
            fdb.add_metric(net_labels, net.get("fdb", 0))
            for what, count in net.get("fdb_counters", {}).items():
                if what in FDB_LIMITS:
                    fdb_limits.add_metric([*net_labels, what], count)
                elif what != "entries":
                    fdb_events.add_metric([*net_labels, what], count)
            mcast = net.get("mcast", {})
            if mcast.get("snooping"):
                groups.add_metric(net_labels, mcast.get("groups", 0))
                for what, count in mcast.get("counters", {}).items():
                    mcast_events.add_metric([*net_labels, what], count)
            for port in net.get("ports", []):
                port_labels = [*net_labels, str(port.get("name", "")), str(port.get("kind", ""))]
                for field, family in per_port.items():
                    family.add_metric(port_labels, port.get(field, 0))
        yield ports
        yield member
        yield to_peers
        yield from_peers
        yield fdb
        yield fdb_events
        yield fdb_limits
        yield groups
        yield mcast_events
        yield from per_port.values()
        yield from _gateway_families(networks)
        yield from _nat_families(networks)

        lookups = s.get("lookups")
        if lookups is not None:
            yield CounterMetricFamily(
                "atenet_lookups",
                "Store lookups started for networks this node did not serve yet.",
                value=lookups["lookups"],
            )
            refused = _counter(
                "atenet_lookup_drops",
                "Lookups of not-served network ids refused, by reason (docs/limits.md).",
                ["reason"],
            )
            for reason, count in lookups["drops"].items():
                refused.add_metric([reason], count)
            yield refused
            yield GaugeMetricFamily(
                "atenet_unknown_networks_cached",
                "Network ids remembered as unknown (bounded).",
                value=lookups["cached"],
            )
            yield GaugeMetricFamily(
                "atenet_lookups_in_flight", "Store lookups running now.", value=lookups["in_flight"]
            )

        http = s.get("http")
        if http is not None:
            conns = GaugeMetricFamily(
                "atenet_http_connections",
                "HTTP connections open now; pending = not yet a WebSocket port.",
                labels=["state"],
            )
            conns.add_metric(["open"], http["open"])
            conns.add_metric(["pending"], http["pending"])
            yield conns
            closed = _counter(
                "atenet_http_drops",
                "HTTP connections refused or closed by a limit, by reason (docs/limits.md).",
                ["reason"],
            )
            for reason, count in http["drops"].items():
                closed.add_metric([reason], count)
            yield closed

        ws = s.get("websocket")
        if ws is not None:
            refused = _counter(
                "atenet_websocket_drops",
                "WebSocket connections or messages refused, by reason.",
                ["reason"],
            )
            for reason, count in ws["drops"].items():
                refused.add_metric([reason], count)
            yield refused

        mio = s.get("mio")
        if mio is not None:  # the /mio endpoint (docs/mio.md)
            yield GaugeMetricFamily(
                "atenet_mio_sessions", "mio bus sessions open now.", value=mio["sessions"]
            )
            yield GaugeMetricFamily(
                "atenet_mio_buffered_bytes",
                "Bytes the mio sessions hold for their programs (bounded per session).",
                value=mio["buffered"],
            )
            events = _counter("atenet_mio_events", "mio sessions by what happened.", ["event"])
            for event, count in {**mio["counters"], **mio["events"]}.items():
                events.add_metric([event], count)
            yield events


def _gateway_families(networks: list[dict[str, Any]]) -> Iterator[Metric]:
    """The gateways' and DHCP servers' counters (docs/router.md), per network."""
    labels = ["network", "network_id", "what"]
    handled = _counter(
        "atenet_gateway_handled", "Frames the gateway answered or routed, by kind.", labels
    )
    refused = _counter(
        "atenet_gateway_drops", "Frames for the gateway it refused, by reason.", labels
    )
    dhcp = _counter("atenet_dhcp", "DHCP server events (offers, acks, binds, ...).", labels)
    waiting = GaugeMetricFamily(
        "atenet_dhcp_bindings_waiting",
        "DHCP bindings waiting to be appended to the chain.",
        labels=["network", "network_id"],
    )
    for net in networks:
        gateway = net.get("gateway") or {}
        base = [net["name"], net["id"]]
        for family, counts in ((handled, gateway.get("handled", {})),
                               (refused, gateway.get("drops", {})),
                               (dhcp, net.get("dhcp", {}))):  # fmt: skip
            for what, count in sorted(counts.items()):
                family.add_metric([*base, what], count)
        if gateway:
            waiting.add_metric(base, gateway.get("leases_waiting", 0))
    yield handled
    yield refused
    yield dhcp
    yield waiting


NAT_GAUGES = ("internet", "flows", "flows_tcp", "flows_udp", "flows_icmp", "half_open")
"""``nat`` status entries that are levels, not events (docs/nat.md)."""


def _nat_families(networks: list[dict[str, Any]]) -> Iterator[Metric]:
    """The internet forwarders' flows, bytes and refusals (docs/nat.md), per network."""
    labels = ["network", "network_id"]
    flows = GaugeMetricFamily(
        "atenet_nat_flows", "NAT flows open now, by protocol.", labels=[*labels, "proto"]
    )
    internet = GaugeMetricFamily(
        "atenet_nat_internet", "1 when the network has internet access through this node.",
        labels=labels,
    )  # fmt: skip
    moved = _counter("atenet_nat_bytes", "Payload bytes relayed by NAT.", [*labels, "direction"])
    refused = _counter(
        "atenet_nat_refused", "New NAT flows refused, by reason.", [*labels, "reason"]
    )
    events = _counter(
        "atenet_nat_events", "NAT events (flows opened/closed, timeouts, host errors).",
        [*labels, "what"],
    )  # fmt: skip
    for net in networks:
        nat = net.get("nat") or {}
        base = [net["name"], net["id"]]
        internet.add_metric(base, 1 if nat.get("internet") else 0)
        if "flows" not in nat:
            continue
        for proto in ("tcp", "udp", "icmp"):
            flows.add_metric([*base, proto], nat.get(f"flows_{proto}", 0))
        for direction in ("up", "down"):
            moved.add_metric([*base, direction], nat.get(f"bytes_{direction}", 0))
        for what, count in sorted(nat.items()):
            if what in NAT_GAUGES or what.startswith("bytes_") or what == "refused":
                continue
            if what.startswith("refused_"):
                refused.add_metric([*base, what.removeprefix("refused_")], count)
            else:
                events.add_metric([*base, what], count)
    yield internet
    yield flows
    yield moved
    yield refused
    yield events


def registry(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding only this node's collector (no process or GC metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(status))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(reg)
