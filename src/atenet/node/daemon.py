"""The node daemon: the asyncio shell around :class:`~atenet.node.core.NodeCore`.

It owns one UDP socket (clients and peers share it), reads it until empty on every wake-up, loads
networks on demand when their packets arrive, follows their chains, keeps this node's membership
records right (join with the first client, leave ``member_grace`` seconds after the last, and on
shutdown), writes heartbeats as bounded latest records, and serves counters over HTTP.

One node identity, one process: ``start`` takes an exclusive lock per node id on this host, and
heartbeats carry a random per-process ``instance``; a fresh heartbeat of our node id written by
another instance means a clone runs elsewhere (two processes sealing with one sender id would
reuse GCM nonces), so the younger process stops serving that network.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from atenet.addressing import host_identity
from atenet.chain.event import Kind
from atenet.chain.keys import Identity
from atenet.chain.log import Chain, Signer
from atenet.chain.store import ChainStore
from atenet.deployment import NODE_REFRESH, NodeKey, publish_node
from atenet.errors import AtenetError, ChainInvalid, NotAllowed, NotFound, StoreUnavailable
from atenet.fast import FAST, EngineHold
from atenet.node.advertise import Advertised
from atenet.node.advertise import choose as choose_advertised
from atenet.node.core import NetworkRuntime, NodeCore, PortLimits
from atenet.node.hosts import heartbeat_ports
from atenet.node.lookups import UnknownNetworks
from atenet.node.nat import NatShell
from atenet.transport.udp import UdpSocket

log = logging.getLogger(__name__)

READ_BATCH = 512
MEMBER_GRACE = 300.0
"""Seconds a node stays a member after its last local port left (``atenet run --member-grace``),
so a page reload or a reconnecting client appends no member_leave/member_join pair."""


def _bulk_work() -> int:
    """What this process's node.c did that a node engine hands over (datagrams for the pure
    path, fragment runs joined, super-frames): while it grows, the socket stays on the loop."""
    c = FAST.node_counters()  # type: ignore[union-attr]
    return c["python"] + c["joined"] + c["inline_super"] + c["python_steps"]


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
        member_grace: float = MEMBER_GRACE,
        limits: PortLimits | None = None,
        lock_dir: Path | None = None,
        nat: bool = True,
    ) -> None:
        """``lock_dir``: where to take this node's one-process lock (the CLI passes the config
        dir); None for no lock file (in-process tests). ``nat=False`` (``--no-nat``): no
        network gets internet access through this node, whatever its chain says."""
        self.store = store
        self.node_key = node_key
        self.node_id = node_key.node_id
        self.signer = Signer(node_key.sign, node_key.cert)
        self.authority = authority
        self.listen = listen
        self.udp_port = udp_port
        self.advertise = advertise
        self.advertised = Advertised([advertise] if advertise else [], "--advertise")
        self.heartbeat = heartbeat
        self.member_grace = member_grace
        self.lock_dir = lock_dir
        self._locks: list[int] = []
        self.instance = os.urandom(8).hex()
        self.started_ns = time.time_ns()
        self.core = NodeCore(
            self.node_id, self._send, self.started_ns, instance=self.instance, limits=limits,
            nat=nat,
        )  # fmt: skip
        self._idle_since: dict[bytes, float] = {}  # network id -> when its last port left
        # Network id -> until when another live instance of our node id serves it.
        self._clones: dict[bytes, float] = {}
        self.host = hashlib.sha256(b"atenet/v1 node host|" + host_identity()).hexdigest()[:16]
        self._grace_timers: set[bytes] = set()
        self._stale_pending: set[bytes] = set()
        self._appending_leases: set[bytes] = set()
        self.chains: dict[bytes, Chain] = {}
        self.sock: socket.socket | None = None
        self.udp: UdpSocket | None = None
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._followers: dict[bytes, asyncio.Task[Any]] = {}
        self._loading: dict[bytes, asyncio.Task[Any]] = {}
        self.unknown = UnknownNetworks()
        self._membership_locks: dict[bytes, asyncio.Lock] = {}
        self._stopping = False
        self._nat_shells: dict[bytes, NatShell] = {}
        self.core.nat_wake = self._nat_wake
        self.engine: Any = None
        """The socket's GIL-free express lane (``_fast.NodeEngine``) while it runs, else None:
        see :meth:`_start_engine` and docs/fastpath.md, "Node engine"."""
        self._engine_hold: EngineHold | None = None
        """Keeps the socket on the loop while bulk flows after a hand-over (atenet.fast)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, publish: bool = True) -> None:
        """Bind the UDP socket, choose the advertised endpoints and start the periodic tasks.

        ``publish=False`` leaves the deployment's "nodes" record alone: a caller that binds more
        sockets (the HTTP server) calls :meth:`publish` once they are all bound, so a start that
        fails half-way never replaces the endpoint a working node had published."""
        self._lock()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.listen, self.udp_port))
        except OSError as exc:
            sock.close()
            self._unlock()
            raise AtenetError(
                f"cannot listen on UDP {self.listen}:{self.udp_port}: {exc.strerror}; "
                "pick another --udp-port or stop the other process"
            ) from None
        try:
            self.advertised = choose_advertised(self.listen, sock.getsockname()[1], self.advertise)
        except AtenetError:
            sock.close()
            self._unlock()
            raise
        self.udp = UdpSocket(sock)
        self.sock = sock
        self.udp_port = sock.getsockname()[1]
        self.advertise = self.advertised.endpoints[0]
        if not self._start_engine():
            asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)
        self._spawn(self._ticker())
        self._spawn(self._heartbeats())
        if publish:
            await self.publish()
        log.info(
            "node %s listening on udp %s:%d (advertised as %s)",
            self.node_id,
            self.listen,
            self.udp_port,
            self.advertise,
        )

    async def publish(self) -> None:
        """List this node in the store's "nodes" record, then keep its entry fresh."""
        await self._publish_node()
        self._spawn(self._refresh_node_record())

    async def _refresh_node_record(self) -> None:
        """Rewrite this node's entry every :data:`NODE_REFRESH` seconds (sooner with a short
        --heartbeat): readers skip entries older than
        :data:`~atenet.deployment.NODE_RECORD_MAX_AGE`, so a node that died stops being named in
        new tokens."""
        while True:
            await asyncio.sleep(min(NODE_REFRESH, 6 * self.heartbeat))
            try:
                await self._publish_node()
            except AtenetError as exc:
                log.warning("could not refresh this node's published endpoint: %s", exc)

    def _lock(self) -> None:
        """Refuse to run a node id that another process on this host already runs.

        Two processes with one node key seal with the same sender id, and their clock-based
        counters overlap: GCM nonces would repeat. One lock in the config dir catches a second
        `atenet run` of the same home; one per node id in the runtime dir (/run/atenet as root,
        else $XDG_RUNTIME_DIR) catches a copied config dir on the same host.
        """
        if self.lock_dir is None:
            return
        paths = [self.lock_dir / "node.lock"]
        runtime = Path("/run/atenet") if os.geteuid() == 0 else None
        if runtime is None and os.environ.get("XDG_RUNTIME_DIR"):
            runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "atenet"
        if runtime is not None:
            with contextlib.suppress(OSError):
                runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
                paths.append(runtime / f"node-{self.node_id}.lock")
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if path is paths[0]:
                    raise AtenetError(f"cannot open lock {path}: {exc.strerror}") from None
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                self._unlock()
                raise AtenetError(
                    f"node {self.node_id} is already running (pid {holder}, lock {path}): "
                    "stop it first; a copied config dir must not run twice (its packets "
                    "would reuse encryption nonces) — give a second node its own `atenet init`"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._locks.append(fd)

    def _unlock(self) -> None:
        for fd in self._locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._locks = []

    async def stop(self) -> None:
        """Leave every network's member collection, then close everything."""
        self._stopping = True
        self._stop_engine()
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for network_id, runtime in list(self.core.networks.items()):
            if runtime.is_member:
                try:
                    await asyncio.wait_for(self._leave(network_id), 5)
                except (TimeoutError, AtenetError) as exc:
                    log.warning("could not leave %s on shutdown: %s", network_id.hex(), exc)
        for shell in self._nat_shells.values():
            shell.close()
        self._nat_shells.clear()
        for task in [*self._tasks, *self._followers.values()]:
            task.cancel()
        for task in [*self._tasks, *self._followers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._unlock()

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
        """The socket's reader: always without an engine; with one, while the engine lends it
        to the loop (bulk, EngineHold), and then the flows forwarded inline are still recorded
        in the engine's cache for when it has the socket back."""
        udp = self.udp
        if udp is None or self.sock is None:
            return
        core = self.core
        now = time.time()
        if FAST is not None:
            # The same read and the same steps, the common case in C (docs/protocol.md, "Fast
            # path"); everything else it hands to core.datagram and the reassembler as below.
            FAST.node_receive(core, udp, READ_BATCH, now, self.engine)
        else:
            datagram = core.datagram
            udp.receive(lambda data, addr: datagram(data, addr, now), READ_BATCH)
        if core.has_events:
            self._handle_events()

    def _start_engine(self) -> bool:
        """Run the socket's common case in a C thread (``_fast.NodeEngine``) when the fast path
        is on and ``ATENET_ENGINE`` is not "0"; True when it runs (the loop then watches its
        hand-over eventfd instead of the socket)."""
        if FAST is None or os.environ.get("ATENET_ENGINE", "") == "0" or self.sock is None:
            return False
        try:
            engine = FAST.NodeEngine(self.sock.fileno(), self.udp)
            engine.start()
        except OSError as exc:  # no thread or epoll to be had: the event loop reads it all
            log.warning("node engine: off (%s)", exc)
            return False
        asyncio.get_running_loop().add_reader(engine.fileno(), self._on_handover)
        self.engine = engine
        self._engine_hold = EngineHold(
            self.sock.fileno(), self._on_readable, engine.arm, _bulk_work
        )
        log.info("node engine: on (ATENET_ENGINE=0 turns it off)")
        return True

    def _stop_engine(self) -> None:
        """Join the engine's thread (its cache written back); idempotent."""
        engine, self.engine = self.engine, None
        hold, self._engine_hold = self._engine_hold, None
        if hold is not None:
            hold.cancel()
        if engine is not None:
            asyncio.get_running_loop().remove_reader(engine.fileno())
            engine.stop()

    def _on_handover(self) -> None:
        """The engine met a datagram it has no cached flow for: it is ours with the socket.
        Today's path takes it and the rest of the socket (order kept), then the engine gets
        the socket back. take() wrote the cache's counts and buckets back first."""
        engine, udp, hold = self.engine, self.udp, self._engine_hold
        if engine is None or udp is None or hold is None:
            return
        item = None
        try:
            item = engine.take()
            if item is not None:  # (else a stray wake-up: the thread still has the socket)
                FAST.node_receive(self.core, udp, READ_BATCH, time.time(), engine, item)  # type: ignore[union-attr]
        finally:
            if item is None:
                engine.arm()
            else:  # the socket stays ours while it is busy (bulk), then goes back
                hold.hold()
        if self.core.has_events:
            self._handle_events()

    def sync_engine(self) -> None:
        """Write what the engine's cache holds (port counters, buckets, last_seen) back to the
        Python objects: before anything reads them (status, the tick's expiry)."""
        if self.engine is not None:
            self.engine.sync()

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.udp.send(packet, addr)  # type: ignore[union-attr]

    @property
    def send_errors(self) -> int:
        """Datagrams the kernel refused to send (full buffers, unreachable peers)."""
        return self.udp.send_errors if self.udp is not None else 0

    def _nat_wake(self, runtime: NetworkRuntime) -> None:
        """A network's forwarder has work, or was replaced or removed: run its shell (one
        per network, node/nat.py), closing the host sockets of a forwarder that is gone."""
        shell = self._nat_shells.get(runtime.network_id)
        if shell is not None and shell.nat is not runtime.nat:
            shell.close()
            del self._nat_shells[runtime.network_id]
            shell = None
        if runtime.nat is None or self._stopping:
            return
        if shell is None:
            shell = NatShell(runtime.nat, runtime.nat_out_packets, runtime.clock)
            self._nat_shells[runtime.network_id] = shell
        shell.wake()

    # ------------------------------------------------------------------ control

    def _handle_events(self) -> None:
        for what, network_id in self.core.take_events():
            if what == "load":
                self._maybe_load(network_id)
            elif what in ("active", "idle", "stale"):
                self._membership_event(what, network_id)
            elif what == "lease" and network_id not in self._appending_leases:
                self._appending_leases.add(network_id)
                self._spawn(self._append_leases(network_id))

    def _maybe_load(self, network_id: bytes) -> None:
        if network_id in self._loading or self._stopping or self._clone_serves(network_id):
            return
        now = time.monotonic()
        if not self.unknown.admit(network_id, now):
            # Counted by reason; one summary line per interval instead of a line per id.
            line = self.unknown.summary(now)
            if line is not None:
                log.warning("%s", line)
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
        outcome = "unknown"
        try:
            chain = Chain(self.store, network_id, [self.authority.box])
            try:
                await chain.load()
            except (NotFound, NotAllowed, ChainInvalid) as exc:
                # Remembered (bounded, see node/lookups.py) so junk packets cannot make us
                # re-read the store; not logged per id, anyone can send random ids.
                if isinstance(exc, ChainInvalid):
                    log.error("not serving %s: %s", network_id.hex(), exc)
                else:
                    log.debug("not serving %s: %s", network_id.hex(), exc)
                return
            if chain.state.deleted:
                return
            # Registered and given its state in one step: no other task may see it half-built.
            runtime = self.core.add_network(network_id)
            runtime.apply_state(chain.state, time.time())
            self.chains[network_id] = chain
            outcome = "found"
            await self._read_heartbeats(chain, runtime)
            if self._clone_serves(network_id):
                return
            log.info("serving network %s (%s)", chain.state.name, network_id.hex())
            self._followers[network_id] = asyncio.ensure_future(self._follow(chain, runtime))
            if runtime.is_member and len(runtime.switch) == 0:
                self._spawn(self._sync_membership(network_id))  # a record left by a crash
        except StoreUnavailable as exc:
            # Its own short negative state for every unknown id; one line per outage-minute.
            if self.unknown.warn_store(time.monotonic()):
                log.warning(
                    "cannot load networks while the store is unavailable (%s); lookups pause "
                    "for %g s each time, refusals are counted in /api/status",
                    exc,
                    self.unknown.unavailable_ttl,
                )
            else:
                log.debug("cannot load %s yet: %s", network_id.hex(), exc)
            if outcome != "found":
                outcome = "unavailable"
        finally:
            self._loading.pop(network_id, None)
            self.unknown.finished(network_id, outcome, time.monotonic())

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

    def _membership_event(self, what: str, network_id: bytes) -> None:
        """First port (join now), last port gone (leave after the grace), or peer traffic with
        no local ports (leave now, unless within the grace: the record is not stale then)."""
        if what == "active":
            self._idle_since.pop(network_id, None)
        elif what == "idle":
            self._idle_since[network_id] = time.time()
            if network_id not in self._grace_timers:
                self._grace_timers.add(network_id)
                self._spawn(self._leave_after_grace(network_id))
            return
        elif self._in_grace(network_id) or network_id in self._stale_pending:
            return
        else:
            self._stale_pending.add(network_id)
        self._spawn(self._sync_membership(network_id))

    def _in_grace(self, network_id: bytes) -> bool:
        since = self._idle_since.get(network_id)
        return since is not None and time.time() - since < self.member_grace

    async def _leave_after_grace(self, network_id: bytes) -> None:
        """One timer per network: wakes when the grace after the last port ends, then syncs."""
        try:
            while (since := self._idle_since.get(network_id)) is not None:
                left = since + self.member_grace - time.time()
                if left <= 0:
                    break
                await asyncio.sleep(left)
        finally:
            self._grace_timers.discard(network_id)
        await self._sync_membership(network_id)

    async def _sync_membership(self, network_id: bytes) -> None:
        """Make this node's membership record match whether it has local ports (or had some
        less than ``member_grace`` seconds ago)."""
        try:
            await self._sync_membership_now(network_id)
        finally:
            self._stale_pending.discard(network_id)

    async def _sync_membership_now(self, network_id: bytes) -> None:
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
                    want = len(runtime.switch) > 0 or self._in_grace(network_id)
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

    async def _append_leases(self, network_id: bytes) -> None:
        """Append the bindings the network's DHCP server made, oldest first, one event each;
        then the state settles the REQUESTs waiting on them (ACK, or NAK for a lost race).
        A store outage is waited out: the bindings stay queued (bounded, see MAX_BINDS)."""
        delay = 0.2
        try:
            while not self._stopping:
                runtime = self.core.networks.get(network_id)
                chain = self.chains.get(network_id)
                if runtime is None or chain is None or not runtime.binds:
                    return
                try:
                    await chain.append(Kind.LEASE, runtime.binds[0], self.signer)
                except StoreUnavailable as exc:
                    log.warning("DHCP binding waits for the store: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                except (AtenetError, ValueError) as exc:  # refused by the chain's own checks
                    log.error("DHCP binding %s not recorded: %s", runtime.binds[0], exc)
                runtime.binds.popleft()
                delay = 0.2
                runtime.apply_state(chain.state, time.time())
        finally:
            self._appending_leases.discard(network_id)

    async def _leave(self, network_id: bytes) -> None:
        chain = self.chains[network_id]
        await chain.catch_up()
        if self.node_id in chain.state.members:
            await chain.append(Kind.MEMBER_LEAVE, {"node_id": self.node_id}, self.signer)

    # ------------------------------------------------------------------ periodic

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sync_engine()  # last_seen and MAC ages before expiry reads them
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
        self.sync_engine()
        status = runtime.status()
        await chain.put_latest(
            self.node_id,
            {
                "node": self.node_id,
                "endpoint": self.advertise,
                "interval": self.heartbeat,
                "instance": self.instance,
                "started_ns": self.started_ns,
                "host": self.host,
                "ports": len(status["ports"]),
                "frames_to_peers": status["frames_to_peers"],
                "frames_from_peers": status["frames_from_peers"],
                "drops": status["drops"],
                "mirror": 1 if runtime.switch.has_mirror else 0,  # peers send it all unicast
                **heartbeat_ports(runtime.switch.ports.values()),  # for `tok hosts`
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
            if record.get("mirror") == 1:  # it has a `tok monitor` port (docs/learning.md)
                runtime.mirror_nodes.add(node_id)
            else:
                runtime.mirror_nodes.discard(node_id)
            if node_id == self.node_id and now < runtime.alive_until[node_id]:
                self._check_clone(chain, record, runtime.alive_until[node_id])
        runtime.refresh_peers(now)

    def _clone_serves(self, network_id: bytes) -> bool:
        return time.time() < self._clones.get(network_id, 0.0)

    def _check_clone(self, chain: Chain, record: dict[str, Any], alive_until: float) -> None:
        """A fresh heartbeat of our node id from another process instance on another host: a
        clone (a copied config dir). The younger of the two stops serving the network while the
        other's heartbeats stay fresh, so one sender id never seals in two processes; the log
        says which and why. A record from this host is a previous process of ours (the lock
        proves no other runs here), e.g. right after a restart, and is ignored."""
        other = record.get("instance")
        if not isinstance(other, str) or other == self.instance:
            return
        if record.get("host") == self.host and self._locks:
            return
        started = record.get("started_ns")
        theirs = (started if isinstance(started, int) else 0, other)
        if theirs > (self.started_ns, self.instance):
            return  # the other one is younger: it yields
        network_id = chain.network_id
        known = self._clone_serves(network_id)
        self._clones[network_id] = alive_until
        if known:
            return
        log.error(
            "node %s also runs in another process (instance %s, started earlier): not "
            "serving %s from this one — two processes with one node key would reuse "
            "encryption nonces; give each node its own `atenet init`",
            self.node_id,
            other,
            chain.state.name,
        )
        self.core.remove_network(network_id)
        follower = self._followers.pop(network_id, None)
        if follower is not None:
            follower.cancel()
        self.chains.pop(network_id, None)
        # _maybe_load does not load it again while the other instance's heartbeat is fresh.

    async def _publish_node(self) -> None:
        """List this node in the store so `tok key export` can name it in tokens (a
        compare-and-set: nodes starting together keep each other's entries)."""
        await publish_node(self.store, self.node_id, list(self.advertised.endpoints), time.time())

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        self.sync_engine()
        status = self.core.status()
        status.update(
            {
                "endpoint": self.advertise,
                "uptime": time.time() - self.started,
                "send_errors": self.send_errors,
                "store": self.store.url,
            }
        )
        if FAST is not None:  # how much of the traffic the node's compiled hop took
            status["fast_node"] = FAST.node_counters()
            engine = self.engine.counters() if self.engine is not None else {}
            status["fast_node"]["engine"] = engine.get("engine", 0)  # carried by the thread
            status["fast_node"]["engine_handed"] = engine.get("handed", 0)
            status["fast_node"]["engine_running"] = self.engine is not None
            status["fast_node"]["engine_entries"] = engine.get("entries", 0)
            status["fast_node"]["engine_generation"] = engine.get("generation", 0)
        return status
