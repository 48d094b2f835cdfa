"""The node's HTTP side: JSON status for `tok status`, Prometheus metrics.

Later issues add the web page and WebSocket ports here.
"""

from __future__ import annotations

from aiohttp import web

from atenet.errors import AtenetError
from atenet.node.daemon import NodeDaemon


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}"


def prometheus(daemon: NodeDaemon) -> str:
    """The node's counters in the Prometheus text format."""
    status = daemon.status()
    lines = [
        "# HELP atenet_datagrams_total UDP datagrams received.",
        "# TYPE atenet_datagrams_total counter",
        f"atenet_datagrams_total {status['datagrams']}",
        "# HELP atenet_send_errors_total UDP sends that failed.",
        "# TYPE atenet_send_errors_total counter",
        f"atenet_send_errors_total {status['send_errors']}",
        "# HELP atenet_drops_total Packets dropped, by reason.",
        "# TYPE atenet_drops_total counter",
    ]
    for reason, count in sorted(status["drops"].items()):
        lines.append(f"atenet_drops_total{_labels(network='', reason=reason)} {count}")
    port_lines: list[str] = []
    for net in status["networks"]:
        for reason, count in sorted(net["drops"].items()):
            lines.append(f"atenet_drops_total{_labels(network=net['name'], reason=reason)} {count}")
        for port in net["ports"]:
            for field in ("frames_in", "frames_out", "bytes_in", "bytes_out", "drops"):
                port_lines.append(
                    f"atenet_port_{field}_total"
                    f"{_labels(network=net['name'], port=port['name'], kind=port['kind'])} "
                    f"{port[field]}"
                )
    lines += [
        "# HELP atenet_ports Local switch ports, per network.",
        "# TYPE atenet_ports gauge",
    ]
    lines += [
        f"atenet_ports{_labels(network=n['name'])} {len(n['ports'])}" for n in status["networks"]
    ]
    lines += ["# TYPE atenet_port_frames_in_total counter", *sorted(port_lines)]
    return "\n".join(lines) + "\n"


def make_app(daemon: NodeDaemon) -> web.Application:
    app = web.Application()

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(daemon.status())

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=prometheus(daemon), content_type="text/plain")

    app.router.add_get("/api/status", status)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_http(daemon: NodeDaemon, host: str, port: int) -> web.AppRunner:
    """Start the HTTP server; the caller cleans up the returned runner."""
    runner = web.AppRunner(make_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AtenetError(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror}; pick another --http-port"
        ) from None
    return runner
