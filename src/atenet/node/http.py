"""The node's HTTP side: JSON status for `tok status`, Prometheus metrics.

Later issues add the web page and WebSocket ports here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from atenet.errors import AtenetError
from atenet.node.daemon import NodeDaemon
from atenet.node.websocket import WebSocketPorts


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


WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                ".svg": "image/svg+xml", ".png": "image/png"}  # fmt: skip


def make_app(daemon: NodeDaemon, ws_heartbeat: float = 20.0) -> web.Application:
    """Routes: the web page (``/`` and its assets), ``/ws`` and ``/net/<token>`` WebSocket
    ports, ``/api/status`` (JSON) and ``/metrics`` (Prometheus)."""
    app = web.Application()
    ports = WebSocketPorts(daemon, heartbeat=ws_heartbeat)
    ports.routes(app)
    app["ws_ports"] = ports

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(daemon.status())

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=prometheus(daemon), content_type="text/plain")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        path = WEB_DIR / name
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    app.router.add_get("/api/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", asset)
    app.router.add_get(r"/{name:[A-Za-z0-9_-]+\.[a-z]+}", asset)
    return app


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files (both or neither), with a clear error."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise AtenetError("give both --tls-cert and --tls-key (PEM files), or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AtenetError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


async def serve_http(
    daemon: NodeDaemon,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    ws_heartbeat: float = 20.0,
) -> web.AppRunner:
    """Start the HTTP server; the caller cleans up the returned runner."""
    runner = web.AppRunner(make_app(daemon, ws_heartbeat), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AtenetError(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror}; pick another --http-port"
        ) from None
    return runner
