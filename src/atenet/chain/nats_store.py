"""The distributed chain store: NATS JetStream, usually a cluster of 3 servers.

Layout:

* one stream per chain, ``ATENET_C_<network hex>`` on subject ``atenet.c.<network hex>``, file
  storage, 3 replicas when the cluster has at least 3 servers. Nothing is ever deleted from it
  (``deny_delete``/``deny_purge``), so the stream sequence *is* the chain sequence.
* ``ATENET_LATEST`` on ``atenet.l.<network hex>.k<key hex>`` and ``ATENET_META`` on
  ``atenet.m.k<name hex>``, both keeping one message per subject: a write replaces the record.
  A compare-and-set of a meta record reads the record's message and publishes with
  ``Nats-Expected-Last-Subject-Sequence`` set to that message's sequence (0 when absent): the
  stream refuses the write if anyone wrote the subject since.

Compare-and-append is JetStream's own: every append carries ``Nats-Expected-Last-Sequence``
(the stream rejects it unless its last sequence is ``expected_seq - 1``) and a ``Nats-Msg-Id``
(the stream acknowledges a repeat of an id it stored in the last :data:`DUPLICATE_WINDOW` seconds
as a duplicate instead of storing it again). The id hashes the blob *and* ``expected_seq``, so a
retry of one append is recognised while the same bytes appended at another position are not
silently swallowed. Past the duplicate window a retry gets "wrong last sequence"; the store then
looks at ``expected_seq`` and reports success if the caller's blob is already there.

Failover: while a stream's leader is being elected (a few seconds after its server dies),
JetStream answers with timeouts or "no responders". Every call retries those for
:attr:`NatsStore.retry_for` seconds before raising :class:`StoreUnavailable`; a subscription
retries forever and resumes after the last sequence it yielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext

from atenet.chain.store import ChainStore
from atenet.errors import AppendConflict, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAIN_STREAM_PREFIX = "ATENET_C_"
CHAIN_SUBJECT_PREFIX = "atenet.c."
LATEST_STREAM = "ATENET_LATEST"
LATEST_SUBJECT_PREFIX = "atenet.l."
META_STREAM = "ATENET_META"
META_SUBJECT_PREFIX = "atenet.m."

#: Seconds JetStream remembers a Nats-Msg-Id, i.e. how long a retried append is deduplicated.
DUPLICATE_WINDOW = 120.0
#: A subscription's consumer sends a heartbeat after this many idle seconds ...
HEARTBEAT = 1.0
#: ... and is presumed lost (its server died, its stream moved) after this many silent seconds.
STALL_AFTER = 3.0
#: The server removes a subscription's consumer this long after its subscriber went away.
INACTIVE_THRESHOLD = 10.0

# JetStream API error codes we act on (nats-server's errors.json).
_WRONG_LAST_SEQUENCE = 10071
#: The same refusal for a subject's expected sequence, as some servers word it (no number).
_WRONG_LAST_SEQUENCE_CONSTANT = 10164
_STREAM_NAME_IN_USE = 10058
_REPLICAS_NOT_SUPPORTED = 10074

#: Errors that mean "not now" rather than "no": a request timed out, nobody answered (no stream
#: leader yet), the connection is being re-established, or the cluster is electing a leader.
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # also nats.errors.TimeoutError
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


def parse_servers(url: str) -> list[str]:
    """``nats://a:4222,b:4222`` -> ``["nats://a:4222", "nats://b:4222"]`` (same for ``tls://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest.strip(","):
        raise ValueError(f"not a NATS store URL: {url!r}")
    return [f"{scheme}://{hostport.strip()}" for hostport in rest.split(",") if hostport.strip()]


def _token(text: str) -> str:
    """A subject token for arbitrary text: ``k`` + UTF-8 hex, never empty, never a wildcard."""
    return "k" + text.encode().hex()


def _untoken(token: str) -> str:
    return bytes.fromhex(token[1:]).decode()


def _describe(err: BaseException) -> str:
    """A one-line reason for a user, without nats-py's class-name noise where possible."""
    text = getattr(err, "description", None) or str(err) or type(err).__name__
    return text.removeprefix("nats: ")


class NatsStore(ChainStore):
    """Chain store on a NATS JetStream server or cluster, named ``nats://host:port[,...]``.

    ``retry_for`` bounds how long one call keeps retrying transient failures (a leader election
    takes about 5 s); ``request_timeout`` is the wait for a single JetStream answer."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        retry_for: float = 15.0,
        request_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.servers = parse_servers(url)
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.request_timeout = request_timeout
        self.replicas = 1
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False  # see SqliteStore: after close(), fail instead of reconnecting
        self._ready_streams: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        async with self._connect_lock:
            self._closed = False
            if self._nc is not None:
                return
            nc = Client()
            try:
                await asyncio.wait_for(
                    nc.connect(
                        servers=self.servers,
                        name="atenet",
                        connect_timeout=min(2, self.connect_timeout),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,  # a store outlives any one server's outage
                        reconnect_time_wait=0.5,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    ),
                    timeout=self.connect_timeout,
                )
            except (TimeoutError, OSError, nats.errors.Error) as err:
                with contextlib.suppress(Exception):
                    await nc.close()
                reason = _describe(err) if not isinstance(err, TimeoutError) else "timed out"
                raise StoreUnavailable(
                    self.url,
                    f"no NATS server answered within {self.connect_timeout:g} s ({reason})",
                ) from None
            # The servers we know of (given + announced by the cluster) decide the replication.
            self.replicas = 3 if len({u.netloc for u in nc.servers}) >= 3 else 1
            self._nc, self._js = nc, nc.jetstream(timeout=self.request_timeout)

    async def close(self) -> None:
        async with self._connect_lock:
            self._closed = True
            nc, self._nc, self._js = self._nc, None, None
            self._ready_streams.clear()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    async def _on_error(self, err: Exception) -> None:
        log.debug("nats %s: %s", self.url, _describe(err))

    async def _on_disconnected(self) -> None:
        if self._nc is None:  # our own close()
            return
        log.info("chain store %s: disconnected, reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        nc = self._nc
        log.info("chain store %s: reconnected to %s", self.url, nc and nc.connected_url)

    async def _context(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None and not self._closed:
            await self.connect()
        nc, js = self._nc, self._js
        if nc is None or js is None or nc.is_closed:
            raise StoreUnavailable(self.url, "the store was closed")
        return nc, js

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` until it stops failing transiently, for at most :attr:`retry_for` s."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await op()
            except TRANSIENT as err:
                if time.monotonic() + delay >= deadline:
                    raise StoreUnavailable(
                        self.url, f"{what} kept failing for {self.retry_for:g} s: {_describe(err)}"
                    ) from None
                log.debug("%s: %s, retrying in %.2f s", what, _describe(err), delay)
            except nats.errors.ConnectionClosedError:
                raise StoreUnavailable(self.url, "the connection was closed") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _ensure_stream(self, js: JetStreamContext, name: str, subjects: list[str]) -> None:
        """Create a stream once per process (creating an identical stream again is a no-op)."""
        if name in self._ready_streams:
            return
        is_chain = name.startswith(CHAIN_STREAM_PREFIX)
        config = api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_msgs_per_subject=-1 if is_chain else 1,
            deny_delete=is_chain,
            deny_purge=is_chain,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as err:
            if err.err_code == _REPLICAS_NOT_SUPPORTED and self.replicas > 1:
                self.replicas = 1  # one server announcing others without a JetStream cluster
                await self._ensure_stream(js, name, subjects)
                return
            if err.err_code != _STREAM_NAME_IN_USE:  # exists with other settings: use it as is
                raise
        self._ready_streams.add(name)

    async def _publish(
        self,
        stream: str,
        subjects: list[str],
        subject: str,
        blob: bytes,
        headers: dict[str, str] | None = None,
    ) -> api.PubAck:
        """One publish attempt into ``stream``, creating the stream first if needed."""
        _, js = await self._context()
        await self._ensure_stream(js, stream, subjects)
        try:
            return await js.publish(
                subject, blob, timeout=self.request_timeout, headers=dict(headers or {})
            )
        except nats.js.errors.NoStreamResponseError:
            # No stream leader right now, or the stream was deleted: check it again next try.
            self._ready_streams.discard(stream)
            raise

    # -- chains ------------------------------------------------------------------------------

    async def list_chains(self) -> list[bytes]:
        nc, _ = await self._context()

        async def page(offset: int) -> dict[str, Any]:
            req = json.dumps({"offset": offset, "subject": CHAIN_SUBJECT_PREFIX + "*"}).encode()
            msg = await nc.request("$JS.API.STREAM.NAMES", req, timeout=self.request_timeout)
            resp = json.loads(msg.data)
            if "error" in resp:
                nats.js.errors.APIError.from_error(resp["error"])  # raises
            return resp

        names: list[str] = []
        while True:
            offset = len(names)
            resp = await self._retrying("list streams", lambda offset=offset: page(offset))
            batch = resp.get("streams") or []
            names += batch
            if not batch or len(names) >= resp.get("total", 0):
                break
        return [
            bytes.fromhex(n.removeprefix(CHAIN_STREAM_PREFIX))
            for n in names
            if n.startswith(CHAIN_STREAM_PREFIX)
        ]

    async def head(self, network_id: bytes) -> int:
        stream = CHAIN_STREAM_PREFIX + network_id.hex()

        async def q() -> int:
            _, js = await self._context()
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.last_seq)

        return await self._retrying(f"read the head of {stream}", q)

    async def append(self, network_id: bytes, expected_seq: int, blob: bytes) -> int:
        if expected_seq < 1:
            raise ValueError(f"expected_seq must be >= 1, not {expected_seq}")
        blob = bytes(blob)
        stream = CHAIN_STREAM_PREFIX + network_id.hex()
        subject = CHAIN_SUBJECT_PREFIX + network_id.hex()
        headers = {
            api.Header.EXPECTED_LAST_SEQUENCE.value: str(expected_seq - 1),
            api.Header.MSG_ID.value: hashlib.sha256(
                expected_seq.to_bytes(8, "big") + blob
            ).hexdigest(),
        }
        try:
            ack = await self._retrying(
                f"append to {stream}",
                lambda: self._publish(stream, [subject], subject, blob, headers),
            )
        except nats.js.errors.BadRequestError as err:
            if err.err_code != _WRONG_LAST_SEQUENCE:
                raise
            return await self._after_conflict(network_id, expected_seq, blob)
        if ack.seq != expected_seq:  # only a duplicate of an older, deleted chain can do this
            return await self._after_conflict(network_id, expected_seq, blob)
        return expected_seq

    async def _after_conflict(self, network_id: bytes, expected_seq: int, blob: bytes) -> int:
        """The head moved: succeed if it moved because of this very blob, else AppendConflict."""
        head = await self.head(network_id)
        if head >= expected_seq and await self._event(network_id, expected_seq) == blob:
            return expected_seq
        raise AppendConflict(network_id, expected_seq, head)

    async def _event(self, network_id: bytes, seq: int) -> bytes | None:
        stream = CHAIN_STREAM_PREFIX + network_id.hex()

        async def q() -> bytes | None:
            _, js = await self._context()
            try:
                msg = await js.get_msg(stream, seq=seq)
            except nats.js.errors.NotFoundError:
                return None
            return msg.data or b""

        return await self._retrying(f"read event {seq} of {stream}", q)

    async def _events(
        self, network_id: bytes, from_seq: int, until: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield events after ``from_seq - 1`` up to ``until``, or forever when None.

        Each pass opens a fresh consumer starting after the last sequence yielded. A pass ends
        when its consumer goes silent or skips a sequence (its server died, the stream leader
        moved); the next pass picks up where it stopped, so every sequence comes out once, in
        order. Reading (``until`` set) gives up after :attr:`retry_for` s without progress."""
        stream = CHAIN_STREAM_PREFIX + network_id.hex()
        last = max(from_seq, 1) - 1
        delay = 0.05
        give_up_at = time.monotonic() + self.retry_for
        while until is None or last < until:
            feed: _Feed | None = None
            try:
                feed = await self._open_feed(stream, last + 1)
                if feed is None:  # no such chain (yet)
                    if until is not None:
                        return
                    await asyncio.sleep(0.25)
                    continue
                async for seq, data in feed.events():
                    if seq <= last:
                        continue
                    if seq != last + 1:
                        break
                    last, delay = seq, 0.05
                    give_up_at = time.monotonic() + self.retry_for
                    yield seq, data
                    if until is not None and last >= until:
                        return
            except TRANSIENT as err:
                log.debug("subscription to %s: %s", stream, _describe(err))
            except nats.errors.ConnectionClosedError:
                raise StoreUnavailable(self.url, "the connection was closed") from None
            finally:
                if feed is not None:
                    await feed.close()
            if until is not None and time.monotonic() > give_up_at:
                raise StoreUnavailable(self.url, f"reading {stream} stalled at event {last}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _open_feed(self, stream: str, start_seq: int) -> _Feed | None:
        """A push consumer delivering ``stream`` from ``start_seq`` to a private inbox."""
        nc, js = await self._context()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        config = api.ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.NONE,
            flow_control=True,
            idle_heartbeat=HEARTBEAT,
            inactive_threshold=INACTIVE_THRESHOLD,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            await js.add_consumer(stream, config, timeout=self.request_timeout)
        except nats.js.errors.NotFoundError:
            await _quietly_unsubscribe(sub)
            return None
        except BaseException:
            await _quietly_unsubscribe(sub)
            raise
        return _Feed(nc, sub)

    async def delete_chain(self, network_id: bytes) -> None:
        stream = CHAIN_STREAM_PREFIX + network_id.hex()

        async def q() -> None:
            _, js = await self._context()
            self._ready_streams.discard(stream)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.purge_stream(
                    LATEST_STREAM, subject=f"{LATEST_SUBJECT_PREFIX}{network_id.hex()}.>"
                )

        await self._retrying(f"delete {stream}", q)

    # -- side tables -------------------------------------------------------------------------

    async def put_latest(self, network_id: bytes, key: str, blob: bytes) -> None:
        subject = f"{LATEST_SUBJECT_PREFIX}{network_id.hex()}.{_token(key)}"
        await self._retrying(
            "write a latest record",
            lambda: self._publish(LATEST_STREAM, [LATEST_SUBJECT_PREFIX + ">"], subject, blob),
        )

    async def get_latest(self, network_id: bytes) -> dict[str, bytes]:
        prefix = f"{LATEST_SUBJECT_PREFIX}{network_id.hex()}."

        async def q() -> dict[str, bytes]:
            _, js = await self._context()
            try:
                info = await js.stream_info(LATEST_STREAM, subjects_filter=prefix + "*")
            except nats.js.errors.NotFoundError:
                return {}
            records: dict[str, bytes] = {}
            for subject in info.state.subjects or {}:
                try:
                    msg = await js.get_msg(LATEST_STREAM, subject=subject)
                except nats.js.errors.NotFoundError:
                    continue  # purged meanwhile
                records[_untoken(subject.removeprefix(prefix))] = msg.data or b""
            return records

        return await self._retrying("read latest records", q)

    async def put_meta(self, name: str, blob: bytes) -> None:
        subject = META_SUBJECT_PREFIX + _token(name)
        await self._retrying(
            "write a meta record",
            lambda: self._publish(META_STREAM, [META_SUBJECT_PREFIX + ">"], subject, blob),
        )

    async def get_meta(self, name: str) -> bytes | None:
        async def q() -> bytes | None:
            _, js = await self._context()
            try:
                msg = await js.get_msg(META_STREAM, subject=META_SUBJECT_PREFIX + _token(name))
            except nats.js.errors.NotFoundError:
                return None
            return msg.data or b""

        return await self._retrying("read a meta record", q)

    async def compare_and_set_meta(self, name: str, expected: bytes | None, blob: bytes) -> bool:
        subject = META_SUBJECT_PREFIX + _token(name)

        async def current() -> tuple[bytes | None, int]:
            _, js = await self._context()
            try:
                msg = await js.get_msg(META_STREAM, subject=subject)
            except nats.js.errors.NotFoundError:
                return None, 0
            return msg.data or b"", int(msg.seq or 0)

        value, seq = await self._retrying("read a meta record", current)
        if value != (None if expected is None else bytes(expected)):
            return False
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(seq)}
        try:
            await self._retrying(
                "write a meta record",
                lambda: self._publish(
                    META_STREAM, [META_SUBJECT_PREFIX + ">"], subject, bytes(blob), headers
                ),
            )
        except nats.js.errors.BadRequestError as err:
            if err.err_code not in (_WRONG_LAST_SEQUENCE, _WRONG_LAST_SEQUENCE_CONSTANT):
                raise
            return False
        return True


class _Feed:
    """The receiving end of one push consumer: data messages out, control messages handled."""

    def __init__(self, nc: Client, sub: Subscription) -> None:
        self._nc = nc
        self._sub = sub

    async def events(self) -> AsyncIterator[tuple[int, bytes]]:
        """(stream seq, data) as delivered; ends when the consumer goes silent or is gone."""
        while True:
            try:
                msg = await self._sub.next_msg(timeout=STALL_AFTER)
            except TimeoutError:
                return
            status = msg.headers.get(api.Header.STATUS.value) if msg.headers else None
            if status is None:
                yield msg.metadata.sequence.stream, msg.data
            elif status == "100":  # idle heartbeat or flow control: answer, it proves liveness
                if msg.reply:
                    await self._nc.publish(msg.reply)
                stalled = (
                    msg.headers.get(api.Header.CONSUMER_STALLED.value) if msg.headers else None
                )
                if stalled:
                    await self._nc.publish(stalled)
            else:  # 409 consumer deleted, leadership change...: start a new consumer
                return

    async def close(self) -> None:
        await _quietly_unsubscribe(self._sub)


async def _quietly_unsubscribe(sub: Subscription) -> None:
    """Drop interest; the server deletes the consumer after INACTIVE_THRESHOLD."""
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
