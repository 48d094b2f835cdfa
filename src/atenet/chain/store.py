"""The chain store interface: where the bytes of every chain live.

A store knows nothing about signatures or encryption: it keeps, per network id, an ordered list of
opaque event blobs numbered from 1, and guarantees that an append only succeeds when the writer
names the sequence number it expects to write (``expected_seq`` = current head + 1). That single
compare-and-append is what keeps concurrent writers from forking a chain; everything about trust
is checked above it (see :mod:`atenet.chain.log`).

Besides chains, a store keeps two small side tables:

* *latest* records: per network, a map ``key -> blob`` where a write replaces the previous value.
  Diagnostics and liveness heartbeats go there, so they are bounded by the number of nodes instead
  of growing the log forever. Blobs are signed by their writers like events.
* *meta*: a map ``name -> blob`` for deployment-wide records (the deployment's public record,
  the published node endpoints). Several nodes rewrite the same record, so besides a plain put
  there is a compare-and-set (:meth:`ChainStore.compare_and_set_meta`) and a read-modify-write
  loop built on it (:meth:`ChainStore.update_meta`): two writers never lose each other's change.

Backends: :mod:`atenet.chain.sqlite_store` (``sqlite:///path``) and
:mod:`atenet.chain.nats_store` (``nats://host:port[,host:port...]``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Callable

from atenet.errors import AtenetError, StoreUnavailable

#: Tries of :meth:`ChainStore.update_meta` before it gives up on a record others keep changing.
META_UPDATE_ATTEMPTS = 50


class ChainStore(abc.ABC):
    """Abstract chain store. All methods are coroutines; implementations are safe to share
    between tasks of one event loop. Raise :class:`~atenet.errors.StoreUnavailable` when the store
    cannot be reached and :class:`~atenet.errors.AppendConflict` when ``expected_seq`` is stale."""

    url: str

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections / files. Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections / files. Idempotent."""

    async def __aenter__(self) -> ChainStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def list_chains(self) -> list[bytes]:
        """Network ids of every chain in the store (any order)."""

    @abc.abstractmethod
    async def head(self, network_id: bytes) -> int:
        """Sequence number of the last event (0 when the chain is empty or absent)."""

    @abc.abstractmethod
    async def append(self, network_id: bytes, expected_seq: int, blob: bytes) -> int:
        """Append ``blob`` as event number ``expected_seq``; return that number.

        Raises AppendConflict when the chain's head is not ``expected_seq - 1``. Retrying an
        append whose acknowledgement was lost must never store the blob twice: a backend either
        deduplicates or raises AppendConflict (and the caller then finds its own blob at
        ``expected_seq``)."""

    async def read(self, network_id: bytes, from_seq: int = 1) -> AsyncIterator[tuple[int, bytes]]:
        """The events stored now, from ``from_seq`` on, in order; ends at the current head."""
        until = await self.head(network_id)
        async for item in self._events(network_id, from_seq, until):
            yield item

    async def subscribe(
        self, network_id: bytes, from_seq: int = 1
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Replay from ``from_seq``, then yield new events as they are appended, forever.

        Yields each sequence number exactly once and in order. When the store becomes
        unreachable the iterator keeps waiting and retrying (it does not raise) and resumes after
        the last event it yielded once the store is back."""
        async for item in self._events(network_id, from_seq, None):
            yield item

    @abc.abstractmethod
    def _events(
        self, network_id: bytes, from_seq: int, until: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Events from ``from_seq`` up to ``until`` (inclusive), or forever when None: what
        :meth:`read` and :meth:`subscribe` are made of."""

    @abc.abstractmethod
    async def put_latest(self, network_id: bytes, key: str, blob: bytes) -> None:
        """Set the latest record ``key`` of a network, replacing the previous one."""

    @abc.abstractmethod
    async def get_latest(self, network_id: bytes) -> dict[str, bytes]:
        """All latest records of a network."""

    @abc.abstractmethod
    async def put_meta(self, name: str, blob: bytes) -> None:
        """Set a deployment-wide record."""

    @abc.abstractmethod
    async def get_meta(self, name: str) -> bytes | None:
        """A deployment-wide record, or None."""

    @abc.abstractmethod
    async def compare_and_set_meta(self, name: str, expected: bytes | None, blob: bytes) -> bool:
        """Set record ``name`` to ``blob`` only if it still holds ``expected`` (None: absent).

        True when written; False when the record holds something else (another writer got there
        first: read it again and retry). A retry whose first try did land may answer False; the
        caller then reads its own value back, so read-modify-write loops stay correct."""

    async def update_meta(
        self, name: str, change: Callable[[bytes | None], bytes], attempts: int = 0
    ) -> bytes:
        """Read record ``name``, compute its new value with ``change(old)`` and write it with
        :meth:`compare_and_set_meta`, again from the read while another writer wins; return what
        was written. ``change`` must be a pure function of its argument (it may run many times).
        """
        for _ in range(attempts or META_UPDATE_ATTEMPTS):
            old = await self.get_meta(name)
            new = change(old)
            if new == old or await self.compare_and_set_meta(name, old, new):
                return new
        raise StoreUnavailable(self.url, f"meta record {name!r} kept changing under us")

    @abc.abstractmethod
    async def delete_chain(self, network_id: bytes) -> None:
        """Remove a chain and its latest records entirely (used by ``tok network delete``)."""


class BadStoreURL(AtenetError):
    """A --store URL that names no backend we have."""


def default_store_url() -> str:
    """``$ATENET_STORE`` or the embedded SQLite file under the user's data directory."""
    env = os.environ.get("ATENET_STORE")
    if env:
        return env
    from atenet.paths import data_dir

    return f"sqlite://{data_dir() / 'chains.sqlite'}"


_USAGE = "use sqlite:///path/to/file or nats://host:port[,host:port]"


def _bad(url: str, what: str) -> BadStoreURL:
    return BadStoreURL(f"bad store URL {url!r}: {what}")


def _check_host(url: str, entry: str, host: str) -> None:
    """A server's host: an IP address or a DNS name (letters, digits, '-', '_', dots)."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if (
        not host
        or len(host) > 253
        or not all(
            0 < len(label) <= 63
            and label.replace("-", "").replace("_", "").isalnum()
            and label.isascii()
            and not label.startswith("-")
            for label in labels
        )
    ):
        raise _bad(url, f"{host!r} in {entry!r} is not a host name or IP address")


def _check_server(url: str, entry: str) -> None:
    """One ``[user[:password]@]host[:port]`` of a NATS URL (IPv6 hosts in brackets)."""
    hostport = entry.rpartition("@")[2]
    if "://" in entry:
        raise _bad(url, f"{entry!r}: give the scheme once, e.g. nats://a:4222,b:4222")
    if any(c in hostport for c in "/?# "):
        raise _bad(url, f"{entry!r} is not host:port (no path, query or spaces)")
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(url, f"{entry!r}: an IPv6 server is written [address]:port")
        port = rest[1:] if rest else None
        try:
            import ipaddress

            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(url, f"{host!r} in {entry!r} is not an IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise _bad(url, f"{entry!r}: write an IPv6 server in brackets, [address]:port")
        host, sep, port_text = hostport.partition(":")
        port = port_text if sep else None
        _check_host(url, entry, host)
    if port is not None and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        raise _bad(url, f"port {port!r} of {entry!r} is not a number from 1 to 65535")


def check_store_url(url: str) -> None:
    """Refuse a malformed store URL up front, naming the bad part, instead of failing later
    (a traceback, a connect that waits and says "unreachable", or a store quietly created at a
    path nobody meant)."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" or url.lower().startswith("sqlite:"):
        if not sep or scheme != "sqlite":
            raise _bad(url, "a SQLite store is written sqlite:///absolute/path (three slashes)")
        if not rest.startswith("/"):
            raise _bad(
                url,
                f"the path {rest!r} is not absolute: write sqlite:///absolute/path (three slashes)",
            )
        if rest.endswith("/") or "\x00" in rest:
            raise _bad(url, f"{rest!r} is not a file path")
        return
    if scheme in ("nats", "tls") and sep:
        if not rest.strip():
            raise _bad(url, f"it names no server: use {scheme}://host:port[,host:port]")
        for position, entry in enumerate(rest.split(","), start=1):
            if not entry.strip():
                raise _bad(url, f"server {position} of the list is empty")
            _check_server(url, entry.strip())
        return
    raise BadStoreURL(f"unknown store URL {url!r}: {_USAGE}")


def open_store(url: str | None = None) -> ChainStore:
    """Build (without connecting) the store a URL names: ``sqlite:///path`` or
    ``nats://host:port[,host:port...]``. Raises BadStoreURL for a malformed URL."""
    url = url or default_store_url()
    check_store_url(url)
    if url.startswith("sqlite://"):
        from atenet.chain.sqlite_store import SqliteStore

        return SqliteStore(url)
    if url.startswith(("nats://", "tls://")):
        from atenet.chain.nats_store import NatsStore

        return NatsStore(url)
    raise BadStoreURL(
        f"unknown store URL {url!r}: use sqlite:///path/to/file or nats://host:port[,host:port]"
    )
