"""The node daemon: the asyncio shell around :class:`~atenet.node.core.NodeCore`.

It owns one UDP socket (clients and peers share it), reads it until empty on every wake-up, loads
networks on demand when their packets arrive, follows their chains, keeps this node's membership
records right (join with the first client, leave with the last, and on shutdown), writes
heartbeats as bounded latest records, and serves counters over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import Any

from atenet.chain.event import Kind
from atenet.chain.keys import Identity
from atenet.chain.log import Chain, Signer
from atenet.chain.store import ChainStore
from atenet.deployment import NodeKey
from atenet.errors import AtenetError, ChainInvalid, NotAllowed, NotFound, StoreUnavailable
from atenet.node.core import NetworkRuntime, NodeCore
from atenet.transport.udp import UdpSocket

log = logging.getLogger(__name__)

READ_BATCH = 512
NEGATIVE_CACHE = 10.0


class NodeDaemon:
    """One atenet node process."""

    def __init__(
        self,
        store: ChainStore,
        node_key: NodeKey,
        authority: Identity,
        *,
        listen: str = "0.0.0.0",
        udp_port: int = 4799,
        advertise: str | None = None,
        heartbeat: float = 10.0,
    ) -> None:
        self.store = store
        self.node_key = node_key
        self.node_id = node_key.node_id
        self.signer = Signer(node_key.sign, node_key.cert)
        self.authority = authority
        self.listen = listen
        self.udp_port = udp_port
        self.advertise = advertise
        self.heartbeat = heartbeat
        self.core = NodeCore(self.node_id, self._send, time.time_ns())
        self.chains: dict[bytes, Chain] = {}
        self.sock: socket.socket | None = None
        self.udp: UdpSocket | None = None
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._followers: dict[bytes, asyncio.Task[Any]] = {}
        self._loading: dict[bytes, asyncio.Task[Any]] = {}
        self._unknown: dict[bytes, float] = {}
        self._membership_locks: dict[bytes, asyncio.Lock] = {}
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.listen, self.udp_port))
        except OSError as exc:
            sock.close()
            raise AtenetError(
                f"cannot listen on UDP {self.listen}:{self.udp_port}: {exc.strerror}; "
                "pick another --udp-port or stop the other process"
            ) from None
        self.udp = UdpSocket(sock)
        self.sock = sock
        self.udp_port = sock.getsockname()[1]
        if self.advertise is None:
            self.advertise = f"{self._guess_host()}:{self.udp_port}"
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)
        self._spawn(self._ticker())
        self._spawn(self._heartbeats())
        await self._publish_node()
        log.info(
            "node %s listening on udp %s:%d (advertised as %s)",
            self.node_id,
            self.listen,
            self.udp_port,
            self.advertise,
        )

    def _guess_host(self) -> str:
        if self.listen not in ("0.0.0.0", ""):
            return self.listen
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    async def stop(self) -> None:
        """Leave every network's member collection, then close everything."""
        self._stopping = True
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for network_id, runtime in list(self.core.networks.items()):
            if runtime.is_member:
                try:
                    await asyncio.wait_for(self._leave(network_id), 5)
                except (TimeoutError, AtenetError) as exc:
                    log.warning("could not leave %s on shutdown: %s", network_id.hex(), exc)
        for task in [*self._tasks, *self._followers.values()]:
            task.cancel()
        for task in [*self._tasks, *self._followers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed: %r", task.exception(), exc_info=task.exception())

    # ------------------------------------------------------------------ hot path

    def _on_readable(self) -> None:
        udp = self.udp
        if udp is None or self.sock is None:
            return
        core = self.core
        now = time.time()
        datagram = core.datagram
        udp.receive(lambda data, addr: datagram(data, addr, now), READ_BATCH)
        if core.has_events:
            self._handle_events()

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.udp.send(packet, addr)  # type: ignore[union-attr]

    @property
    def send_errors(self) -> int:
        """Datagrams the kernel refused to send (full buffers, unreachable peers)."""
        return self.udp.send_errors if self.udp is not None else 0

    # ------------------------------------------------------------------ control

    def _handle_events(self) -> None:
        for what, network_id in self.core.take_events():
            if what == "load":
                self._maybe_load(network_id)
            elif what in ("active", "idle", "stale"):
                self._spawn(self._sync_membership(network_id))

    def _maybe_load(self, network_id: bytes) -> None:
        if network_id in self._loading or self._stopping:
            return
        if time.monotonic() < self._unknown.get(network_id, 0):
            return
        self._loading[network_id] = self._spawn(self._load(network_id))

    async def ensure_network(self, network_id: bytes) -> NetworkRuntime | None:
        """The runtime of a network this node can serve, loading its chain if needed; None
        for an unknown, unreadable or deleted network (or while the store is down)."""
        runtime = self.core.networks.get(network_id)
        if runtime is not None:
            return runtime
        self._maybe_load(network_id)
        task = self._loading.get(network_id)
        if task is not None:
            await asyncio.shield(task)
        return self.core.networks.get(network_id)

    def handle_events(self) -> None:
        """Act on what the core asked for (after ports were added or removed outside the UDP
        path, e.g. by WebSocket handlers)."""
        self._handle_events()

    async def _load(self, network_id: bytes) -> None:
        try:
            chain = Chain(self.store, network_id, [self.authority.box])
            try:
                await chain.load()
            except (NotFound, NotAllowed, ChainInvalid) as exc:
                # Unknown ids are cached so junk packets cannot make us re-read the store.
                self._unknown[network_id] = time.monotonic() + NEGATIVE_CACHE
                level = logging.ERROR if isinstance(exc, ChainInvalid) else logging.INFO
                log.log(level, "not serving %s: %s", network_id.hex(), exc)
                return
            if chain.state.deleted:
                self._unknown[network_id] = time.monotonic() + NEGATIVE_CACHE
                return
            # Registered and given its state in one step: no other task may see it half-built.
            runtime = self.core.add_network(network_id)
            runtime.apply_state(chain.state, time.time())
            self.chains[network_id] = chain
            await self._read_heartbeats(chain, runtime)
            log.info("serving network %s (%s)", chain.state.name, network_id.hex())
            self._followers[network_id] = asyncio.ensure_future(self._follow(chain, runtime))
            if runtime.is_member and len(runtime.switch) == 0:
                self._spawn(self._sync_membership(network_id))  # a record left by a crash
        except StoreUnavailable as exc:
            log.warning("cannot load %s yet: %s", network_id.hex(), exc)
        finally:
            self._loading.pop(network_id, None)

    async def _follow(self, chain: Chain, runtime: NetworkRuntime) -> None:
        try:
            async for event, _payload in chain.follow():
                for port in runtime.apply_state(chain.state, time.time()):
                    log.info(
                        "closed port %s of %s: its key was revoked", port.name, chain.state.name
                    )
                if event.kind == Kind.DELETED:
                    log.info("network %s was deleted", chain.state.name)
                    self.core.remove_network(chain.network_id)
                    self.chains.pop(chain.network_id, None)
                    return
        except ChainInvalid as exc:
            log.error("stopped following %s: %s", chain.network_id.hex(), exc)

    async def _sync_membership(self, network_id: bytes) -> None:
        """Make this node's membership record match whether it has local ports."""
        lock = self._membership_locks.setdefault(network_id, asyncio.Lock())
        async with lock:
            delay = 0.2
            while not self._stopping:
                runtime = self.core.networks.get(network_id)
                chain = self.chains.get(network_id)
                if runtime is None or chain is None:
                    return
                try:
                    await chain.catch_up()
                    want = len(runtime.switch) > 0
                    if want and not runtime.is_member:
                        await chain.append(
                            Kind.MEMBER_JOIN,
                            {"node_id": self.node_id, "endpoints": [self.advertise]},
                            self.signer,
                        )
                        await self._beat(chain, runtime)
                        log.info("joined %s as %s", chain.state.name, self.advertise)
                    elif not want and runtime.is_member:
                        await chain.append(
                            Kind.MEMBER_LEAVE, {"node_id": self.node_id}, self.signer
                        )
                        log.info("left %s (no local ports)", chain.state.name)
                    runtime.apply_state(chain.state, time.time())
                    return
                except StoreUnavailable as exc:
                    log.warning("membership of %s waits for the store: %s", network_id.hex(), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

    async def _leave(self, network_id: bytes) -> None:
        chain = self.chains[network_id]
        await chain.catch_up()
        if self.node_id in chain.state.members:
            await chain.append(Kind.MEMBER_LEAVE, {"node_id": self.node_id}, self.signer)

    # ------------------------------------------------------------------ periodic

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.core.expire(time.time())
            self._handle_events()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            for network_id, runtime in list(self.core.networks.items()):
                chain = self.chains.get(network_id)
                if chain is None:
                    continue
                try:
                    if runtime.is_member:
                        await self._beat(chain, runtime)
                    await self._read_heartbeats(chain, runtime)
                except (StoreUnavailable, AtenetError) as exc:
                    log.warning("heartbeat for %s failed: %s", network_id.hex(), exc)

    async def _beat(self, chain: Chain, runtime: NetworkRuntime) -> None:
        status = runtime.status()
        await chain.put_latest(
            self.node_id,
            {
                "node": self.node_id,
                "endpoint": self.advertise,
                "interval": self.heartbeat,
                "ports": len(status["ports"]),
                "frames_to_peers": status["frames_to_peers"],
                "frames_from_peers": status["frames_from_peers"],
                "drops": status["drops"],
            },
            self.signer,
        )

    async def _read_heartbeats(self, chain: Chain, runtime: NetworkRuntime) -> None:
        diagnostics = await chain.load_latest()
        now = time.time()
        for node_id, record in diagnostics.items():
            try:
                interval = float(record.get("interval", self.heartbeat))
            except (TypeError, ValueError):
                continue  # another node's malformed record must not stop this loop
            if not 0.0 < interval < 86400.0:  # also refuses nan and inf (alive forever)
                continue
            # A peer is alive while its heartbeat is younger than three of its own intervals.
            runtime.alive_until[node_id] = record["time_ms"] / 1000 + 3 * interval + 1
        runtime.refresh_peers(now)

    async def _publish_node(self) -> None:
        """List this node in the store so `tok key export` can name it in tokens."""
        try:
            raw = await self.store.get_meta("nodes")
            nodes = json.loads(raw) if raw else {}
            if not isinstance(nodes, dict):
                nodes = {}
        except (ValueError, RecursionError):  # a damaged record: start it afresh
            nodes = {}
        nodes[self.node_id] = {"endpoints": [self.advertise], "time": time.time()}
        await self.store.put_meta("nodes", json.dumps(nodes).encode())

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        status = self.core.status()
        status.update(
            {
                "endpoint": self.advertise,
                "uptime": time.time() - self.started,
                "send_errors": self.send_errors,
                "store": self.store.url,
            }
        )
        return status
