"""One network's switch on one node: local ports, peer nodes, and the loop rule.

The switch decides where a frame goes; it never touches a socket. Local ports are objects with a
``deliver(frame)`` method supplied by the I/O shell (a UDP client, a WebSocket, a monitor); peer
nodes are reached through one ``to_peers(frame)`` callable that seals the frame once and sends the
same bytes to every member node.

Forwarding (MVP: flood everything):

* a frame from a local port goes to every *other* local port and to the peers;
* a frame from a peer goes to local ports only, never back out to peers — the loop rule: with
  full-mesh flooding, each frame crosses the overlay exactly once.

The hot path allocates nothing per frame: ports are kept in a tuple rebuilt only when the set of
ports changes, counters are plain ints on the port objects.
"""

from __future__ import annotations

from collections.abc import Callable


class Port:
    """A local switch port. Subclasses implement :meth:`deliver`."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "drops",
        "frames_in",
        "frames_out",
        "key_id",
        "kind",
        "last_seen",
        "name",
    )

    def __init__(
        self, name: str, kind: str, now: float = 0.0, key_id: int | None = None
    ) -> None:
        self.name = name
        self.kind = kind
        self.key_id = key_id
        """The access key this port was opened with: revoking it closes the port."""
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.drops = 0
        self.last_seen = now

    def deliver(self, frame: bytes) -> None:
        """Send ``frame`` out of this port (to the client behind it)."""
        raise NotImplementedError

    def close(self) -> None:
        """The switch removed this port (e.g. its key was revoked): drop the client."""

    def counters(self) -> dict[str, int | float | str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": self.drops,
            "last_seen": self.last_seen,
        }


def _no_peers(_frame: bytes) -> None:
    return None


class Switch:
    """Floods frames between the local ports of one network and its peer nodes."""

    __slots__ = ("_ports", "frames_from_peers", "frames_to_peers", "ports", "to_peers")

    def __init__(self, to_peers: Callable[[bytes], None] = _no_peers) -> None:
        self.ports: dict[object, Port] = {}
        self._ports: tuple[Port, ...] = ()
        self.to_peers = to_peers
        self.frames_to_peers = 0
        self.frames_from_peers = 0

    def add(self, key: object, port: Port) -> None:
        self.ports[key] = port
        self._ports = tuple(self.ports.values())

    def remove(self, key: object) -> Port | None:
        port = self.ports.pop(key, None)
        self._ports = tuple(self.ports.values())
        return port

    def __len__(self) -> int:
        return len(self._ports)

    def from_local(self, src: Port, frame: bytes) -> None:
        """A frame a local client sent: to all other local ports, and once to the peers."""
        src.frames_in += 1
        src.bytes_in += len(frame)
        for port in self._ports:
            if port is not src:
                port.deliver(frame)
        self.frames_to_peers += 1
        self.to_peers(frame)

    def from_peer(self, frame: bytes) -> None:
        """A frame another node flooded: to local ports only (the loop rule)."""
        self.frames_from_peers += 1
        for port in self._ports:
            port.deliver(frame)

    def expire(self, now: float, idle: float, kind: str) -> list[Port]:
        """Remove ports of ``kind`` silent for more than ``idle`` seconds; return them."""
        stale = [
            key
            for key, port in self.ports.items()
            if port.kind == kind and now - port.last_seen > idle
        ]
        return [p for p in (self.remove(key) for key in stale) if p is not None]
