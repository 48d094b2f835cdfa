"""The embedded chain store: one SQLite file shared by every atenet process on a host.

Layout (one file, three tables)::

    events(network BLOB, seq INTEGER, blob BLOB, PRIMARY KEY (network, seq)) WITHOUT ROWID
    latest(network BLOB, key TEXT, blob BLOB, PRIMARY KEY (network, key)) WITHOUT ROWID
    meta(name TEXT PRIMARY KEY, blob BLOB)

Several processes (the node daemon, ``tok``, tests) open the same file at once, so the file runs
in WAL mode (readers never block the writer) with a busy timeout (a writer waits for another
writer instead of failing). An append is one ``BEGIN IMMEDIATE`` transaction: it takes the write
lock *before* reading the head, so two writers can never both see the same head; the primary key
(network, seq) would reject a fork even if that check were wrong.

sqlite3 connections belong to one thread, and every call blocks, so each store owns a
single-thread executor that holds its connection; coroutines hand work to it. A subscriber polls
for rows past the last one it yielded every :data:`POLL_INTERVAL` seconds (an indexed lookup that
costs microseconds), and is woken at once by appends made through the same store object. Between
two looks it first compares the database and WAL files' size and change time (two ``stat`` calls
on the event loop's thread): when neither moved, nobody committed, and the query — a hand-off to
the store's thread and back, 20 times a second per network — is skipped, at most for
:data:`FULL_POLL` seconds (a safety net for a file system with a coarse clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from atenet.chain.store import ChainStore
from atenet.errors import AppendConflict, AtenetError, StoreUnavailable

T = TypeVar("T")

#: Seconds between two looks for new events in :meth:`SqliteStore.subscribe`. Another process's
#: append is seen within about this delay.
POLL_INTERVAL = 0.05
#: Seconds after which a subscriber queries even though the files look unchanged.
FULL_POLL = 1.0
#: How long a writer waits for another process's write lock before giving up (milliseconds).
BUSY_TIMEOUT_MS = 10_000
#: Rows fetched per query when replaying, so a long chain is not loaded into memory at once.
BATCH = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    network BLOB NOT NULL,
    seq INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (network, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    network BLOB NOT NULL,
    key TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (network, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    blob BLOB NOT NULL
);
"""


class SqliteStore(ChainStore):
    """Chain store in a local SQLite file, named ``sqlite:///absolute/path``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite://"))
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._connect_lock = asyncio.Lock()
        # After close(), calls fail instead of quietly reopening the file (and a subscription
        # ends instead of polling a closed store forever); connect() opens it again.
        self._closed = False
        # Replaced by a fresh Event on every local append; subscribers wait on the one they saw.
        self._appended = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        async with self._connect_lock:
            self._closed = False
            if self._conn is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atenet-sqlite")
            try:
                self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._open)
            except (OSError, sqlite3.Error) as err:
                executor.shutdown(wait=False)
                unwritable = _unwritable(self.url, self.path, err)
                if unwritable is not None:
                    raise unwritable from None
                reason = getattr(err, "strerror", None) or str(err)
                raise StoreUnavailable(self.url, f"cannot open {self.path}: {reason}") from None
            self._executor = executor

    def _open(self) -> sqlite3.Connection:
        """Runs on the store's thread: open the file, switch to WAL, create the tables."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power
            # loss can drop the last commits, and never corrupts the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        async with self._connect_lock:
            self._closed = True
            conn, executor = self._conn, self._executor
            self._conn = self._executor = None
            if conn is None or executor is None:
                return
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(conn, *args)`` on the store's thread, connecting first if needed."""
        if self._conn is None and not self._closed:
            await self.connect()
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StoreUnavailable(self.url, "the store was closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, conn, *args)
        except sqlite3.Error as err:
            raise _unwritable(self.url, self.path, err) or StoreUnavailable(
                self.url, str(err)
            ) from None

    # -- chains ------------------------------------------------------------------------------

    async def list_chains(self) -> list[bytes]:
        def q(conn: sqlite3.Connection) -> list[bytes]:
            return [bytes(r[0]) for r in conn.execute("SELECT DISTINCT network FROM events")]

        return await self._run(q)

    async def head(self, network_id: bytes) -> int:
        return await self._run(_head, network_id)

    async def append(self, network_id: bytes, expected_seq: int, blob: bytes) -> int:
        if expected_seq < 1:
            raise ValueError(f"expected_seq must be >= 1, not {expected_seq}")
        seq = await self._run(_append, network_id, expected_seq, bytes(blob))
        ev, self._appended = self._appended, asyncio.Event()
        ev.set()
        return seq

    async def _events(
        self, network_id: bytes, from_seq: int, until: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield events after ``from_seq - 1`` up to ``until`` (forever when None)."""
        last = max(from_seq, 1) - 1
        loop = asyncio.get_running_loop()
        seen: tuple[int, ...] | None = None
        queried = 0.0
        while until is None or last < until:
            wake = self._appended
            if until is None and seen is not None and not wake.is_set():
                now, files = loop.time(), self._files()
                if files == seen and now - queried < FULL_POLL:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_INTERVAL):
                            await wake.wait()
                    continue
            seen, queried = self._files(), loop.time()
            try:
                rows = await self._run(_rows_after, network_id, last, BATCH)
            except StoreUnavailable:
                if until is not None or self._closed:
                    raise
                rows = []  # a subscriber waits out a locked or vanished file instead of failing
            for seq, blob in rows:
                if until is not None and seq > until:
                    return
                last = seq
                yield seq, blob
            if rows:
                seen = None  # a full batch may have left rows behind: query again, no skipping
            else:
                if until is not None:
                    return  # deleted meanwhile: nothing more to read
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the event fires, and the subscriber would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await wake.wait()

    def _files(self) -> tuple[int, ...]:
        """Size and change time of the database and its WAL: another process's commit moves
        them (it writes the WAL; a checkpoint writes the database)."""
        out: list[int] = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = os.stat(path)
            except OSError:
                out += (-1, -1)
            else:
                out += (st.st_size, st.st_mtime_ns)
        return tuple(out)

    async def delete_chain(self, network_id: bytes) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM events WHERE network = ?", (network_id,))
                conn.execute("DELETE FROM latest WHERE network = ?", (network_id,))

        await self._run(q)

    # -- side tables -------------------------------------------------------------------------

    async def put_latest(self, network_id: bytes, key: str, blob: bytes) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO latest (network, key, blob) VALUES (?, ?, ?)"
                " ON CONFLICT (network, key) DO UPDATE SET blob = excluded.blob",
                (network_id, key, bytes(blob)),
            )

        await self._run(q)

    async def get_latest(self, network_id: bytes) -> dict[str, bytes]:
        def q(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute("SELECT key, blob FROM latest WHERE network = ?", (network_id,))
            return {key: bytes(blob) for key, blob in rows}

        return await self._run(q)

    async def put_meta(self, name: str, blob: bytes) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (name, blob) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET blob = excluded.blob",
                (name, bytes(blob)),
            )

        await self._run(q)

    async def get_meta(self, name: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT blob FROM meta WHERE name = ?", (name,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def compare_and_set_meta(self, name: str, expected: bytes | None, blob: bytes) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            # BEGIN IMMEDIATE: no other process can write between our read and our write.
            with _transaction(conn):
                row = conn.execute("SELECT blob FROM meta WHERE name = ?", (name,)).fetchone()
                current = None if row is None else bytes(row[0])
                if current != (None if expected is None else bytes(expected)):
                    return False
                conn.execute(
                    "INSERT INTO meta (name, blob) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET blob = excluded.blob",
                    (name, bytes(blob)),
                )
                return True

        return await self._run(q)


class StoreNotWritable(StoreUnavailable):
    """The store's file cannot be written: its disk is full or it is read-only.

    A :class:`StoreUnavailable` (callers that retry keep doing so: space may be freed), but with
    a message that says what is wrong and what to do, instead of SQLite's "disk I/O error" or
    "unable to open database file" behind "unreachable".
    """

    def __init__(self, url: str, reason: str, message: str) -> None:
        AtenetError.__init__(self, message)
        self.url = url
        self.reason = reason


def _unwritable(url: str, path: Path, err: BaseException) -> StoreNotWritable | None:
    """A clear error when ``err`` came from a full disk or a read-only store, else None.

    SQLite reports a full disk as "database or disk is full", or as a "disk I/O error" when
    the WAL index cannot be created; and a read-only file or directory as "attempt to write a
    readonly database" or "unable to open database file". The file system is asked directly
    rather than trusting those strings.
    """
    text = str(err).lower()
    directory = path.parent if path.parent.exists() else Path("/")
    errno_ = getattr(err, "errno", None)
    if errno_ == errno.ENOSPC or "full" in text or "disk i/o" in text:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(directory).free < FULL_BELOW:
                return StoreNotWritable(
                    url, "disk full",
                    f"chain store {path}: the disk is full ({directory} has no space left): "
                    "free some space there, then run this again",
                )  # fmt: skip
        if "full" in text or errno_ == errno.ENOSPC:
            return StoreNotWritable(
                url, "disk full",
                f"chain store {path}: the disk is full: free some space in {directory}, "
                "then run this again",
            )  # fmt: skip
    readonly_fs = False
    with contextlib.suppress(OSError):
        readonly_fs = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    if (
        errno_ in (errno.EROFS, errno.EACCES, errno.EPERM)
        or "readonly" in text
        or ("unable to open" in text and (readonly_fs or not os.access(directory, os.W_OK)))
    ):
        where = "is on a read-only file system" if readonly_fs else "is not writable"
        return StoreNotWritable(
            url, "read-only",
            f"chain store {path} {where}: make it writable (remount read-write, or fix its "
            "owner and mode, directory included), or use another store with --store",
        )  # fmt: skip
    return None


#: Free bytes under which a "disk I/O error" from SQLite is taken to mean a full disk.
FULL_BELOW = 1 << 20


# -- blocking helpers, run on the store's thread ---------------------------------------------


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error. IMMEDIATE takes the write lock
    up front, so what the transaction reads cannot change before it writes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _head(conn: sqlite3.Connection, network_id: bytes) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM events WHERE network = ?", (network_id,)
    ).fetchone()
    return int(row[0])


def _append(conn: sqlite3.Connection, network_id: bytes, expected_seq: int, blob: bytes) -> int:
    with _transaction(conn):
        head = _head(conn, network_id)
        if head == expected_seq - 1:
            conn.execute(
                "INSERT INTO events (network, seq, blob) VALUES (?, ?, ?)",
                (network_id, expected_seq, blob),
            )
            return expected_seq
        if head >= expected_seq:
            # A retried append whose first try did commit: the blob is already where the caller
            # wanted it, so report success instead of a conflict it would have to untangle.
            row = conn.execute(
                "SELECT blob FROM events WHERE network = ? AND seq = ?", (network_id, expected_seq)
            ).fetchone()
            if row is not None and bytes(row[0]) == blob:
                return expected_seq
        raise AppendConflict(network_id, expected_seq, head)


def _rows_after(
    conn: sqlite3.Connection, network_id: bytes, after: int, limit: int
) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT seq, blob FROM events WHERE network = ? AND seq > ? ORDER BY seq LIMIT ?",
        (network_id, after, limit),
    )
    return [(int(seq), bytes(blob)) for seq, blob in rows]
