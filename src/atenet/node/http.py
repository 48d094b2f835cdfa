"""The node's HTTP side: the web page, WebSocket ports, JSON status and Prometheus metrics.

Who sees what (issue 9, item 8; docs/limits.md): ``/api/status`` and ``/metrics`` hold operator
data — every client's underlay address, the store URL — so they answer only loopback requests
that no reverse proxy forwarded, or requests with ``Authorization: Bearer <operator token>``
(the node writes the token, mode 0600, to ``operator-token`` in its config dir at start).
Anyone else gets 403 and a one-line JSON error. The page needs neither: its ``/ws`` status
pushes carry the public view of its own network.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from atenet.errors import AtenetError
from atenet.fast import fast_status
from atenet.node.daemon import NodeDaemon
from atenet.node.guard import (
    IDLE_TIMEOUT,
    OPERATOR_TOKEN_FILE,
    PENDING_TOTAL,
    GuardedSite,
    HttpGuard,
    OperatorAuth,
    operator_token,
    raise_fd_limit,
)
from atenet.node.metrics import CONTENT_TYPE, exposition, registry
from atenet.node.mio import MioSessions
from atenet.node.websocket import WebSocketPorts

log = logging.getLogger(__name__)

WS_PORTS = web.AppKey("ws_ports", WebSocketPorts)
"""The app's WebSocket endpoints (their counters are part of the operator status)."""

MIO = web.AppKey("mio", MioSessions)
"""The app's /mio endpoint (docs/mio.md)."""

FORBIDDEN = (
    '{"error": "operator data: ask from this host, or send Authorization: Bearer '
    "<operator-token from the node's config dir>\"}\n"
)


def operator_status(
    daemon: NodeDaemon,
    ports: WebSocketPorts | None = None,
    guard: HttpGuard | None = None,
    mio: MioSessions | None = None,
) -> dict[str, Any]:
    """Everything an operator sees: the daemon's status plus the abuse counters (refused
    lookups of unknown networks, HTTP limits, WebSocket refusals) and whether the compiled
    fast path runs (``fastpath``: ``on``, or why not; docs/fastpath.md)."""
    status = daemon.status()
    status["fastpath"] = fast_status()
    status["lookups"] = daemon.unknown.counters()
    if guard is not None:
        status["http"] = guard.counters()
    if ports is not None:
        status["websocket"] = ports.counters()
    if mio is not None:
        status["mio"] = mio.counters()
    return status


WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                ".svg": "image/svg+xml", ".png": "image/png"}  # fmt: skip


def make_app(
    daemon: NodeDaemon,
    ws_heartbeat: float = 20.0,
    *,
    guard: HttpGuard | None = None,
    auth: OperatorAuth | None = None,
) -> web.Application:
    """Routes: the web page (``/`` and its assets), ``/ws`` and ``/net/<token>`` WebSocket
    ports, ``/api/status`` (JSON) and ``/metrics`` (Prometheus), the last two for operators."""
    auth = auth or OperatorAuth(None)
    app = web.Application(middlewares=[guard.middleware] if guard is not None else [])
    ports = WebSocketPorts(daemon, heartbeat=ws_heartbeat, guard=guard)
    ports.routes(app)
    app[WS_PORTS] = ports
    mio = MioSessions(daemon, ports, heartbeat=ws_heartbeat, guard=guard)
    mio.routes(app)
    app[MIO] = mio
    metrics_registry = registry(lambda: operator_status(daemon, ports, guard, mio))

    def refused() -> web.Response:
        return web.Response(status=403, text=FORBIDDEN, content_type="application/json")

    async def status(request: web.Request) -> web.Response:
        if not auth.allowed(request):
            return refused()
        return web.json_response(operator_status(daemon, ports, guard, mio))

    async def fdb(request: web.Request) -> web.Response:
        """The MAC and snooped IP tables of every network (`tok fdb`; operators only: they
        say which host is where)."""
        if not auth.allowed(request):
            return refused()
        now = time.time()
        views = [r.fdb_view(now) for r in daemon.core.networks.values()]
        return web.json_response({"node": daemon.node_id, "networks": views})

    async def metrics(request: web.Request) -> web.Response:
        if not auth.allowed(request):
            return refused()
        return web.Response(
            body=exposition(metrics_registry), headers={"Content-Type": CONTENT_TYPE}
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        path = WEB_DIR / name
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    app.router.add_get("/api/status", status)
    app.router.add_get("/api/fdb", fdb)
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
    guard: HttpGuard | None = None,
    token: str | None = None,
) -> web.AppRunner:
    """Start the HTTP server; the caller cleans up the returned runner.

    Raises the open-files limit first (every connection is an fd) and, unless ``token`` is
    given, reads or creates the operator token in the config dir."""
    soft, hard = raise_fd_limit()
    log.info("open files limit: %d (hard limit %d)", soft, hard)
    if token is None:
        from atenet.paths import config_dir

        token = operator_token(config_dir())
        log.info(
            "operator credential in %s (send it as Authorization: Bearer)",
            config_dir() / OPERATOR_TOKEN_FILE,
        )
    # Never let pending connections alone use more than half of the fds the node may open.
    guard = guard or HttpGuard(total=min(PENDING_TOTAL, max(64, soft // 2)))
    app = make_app(daemon, ws_heartbeat, guard=guard, auth=OperatorAuth(token))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT)
    await runner.setup()
    site = GuardedSite(runner, host, port, guard, ssl_context=tls, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AtenetError(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror}; pick another --http-port"
        ) from None
    return runner
