"""A synchronous, read-only replay of an owner's networks from a SQLite store file.

Why it exists: `tok network list` is run by scripts and prompts, and should start in about
150 ms. The store API is async, and importing asyncio (plus the executor the SQLite store runs
on) costs about a third of that budget on its own. For this one read-only question on a local
file, plain sqlite3 calls do the same work without it.

What it must not do is trust anything more than the async path does: every event goes through
the same :meth:`NetworkState.apply` (hash chain, signature, author, decryption, body schema), and
an event stored at the wrong position is refused as in :meth:`atenet.chain.log.Chain._decode`.
It only reads the ``events`` table, whose layout :mod:`atenet.chain.sqlite_store` documents.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from atenet.chain import event as ev
from atenet.chain.keys import Identity
from atenet.chain.state import NetworkState
from atenet.errors import DecodeError, StoreUnavailable

#: As sqlite_store.BUSY_TIMEOUT_MS (not imported from there: that module imports asyncio).
BUSY_TIMEOUT_S = 10.0


def owned_states(path: Path, url: str, owner: Identity) -> list[NetworkState]:
    """Every live network ``owner`` owns in the SQLite file ``path``, replayed and verified,
    sorted like :meth:`atenet.owner.Owner.chains` (by name, then creation time)."""
    try:
        # mode=rw: never create the file (the caller checked it exists; a race must not
        # leave an empty store behind either).
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise StoreUnavailable(url, f"cannot open {path}: {err}") from None
    try:
        states = []
        for network_id, blob in conn.execute("SELECT network, blob FROM events WHERE seq = 1"):
            try:
                genesis = ev.decode(blob)
            except DecodeError:
                continue  # as first_event(): not a chain anyone can own
            if genesis.author != owner.sign_public:
                continue
            state = NetworkState(bytes(network_id), [owner.box])
            rows = conn.execute(
                "SELECT seq, blob FROM events WHERE network = ? ORDER BY seq", (network_id,)
            )
            for seq, raw in rows:
                state.apply(ev.decode_stored(state.network_id, seq, raw))
            if not state.deleted:
                states.append(state)
    except sqlite3.Error as err:
        raise StoreUnavailable(url, str(err)) from None
    finally:
        conn.close()
    return sorted(states, key=lambda s: (s.name, s.created))
