"""Errors a user can hit. Each carries a one-line message that says what to do.

The command-line tools catch :class:`AtenetError` and print ``str(err)`` without a traceback, so
every message must make sense on its own.
"""


class AtenetError(Exception):
    """Base of every error atenet reports to a user."""


class StoreUnavailable(AtenetError):
    """The chain store cannot be reached (yet); callers may retry."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"chain store {url} is unreachable: {reason}")
        self.url = url
        self.reason = reason


class AppendConflict(AtenetError):
    """Another writer appended first: the chain's head is not where the appender expected."""

    def __init__(self, network_id: bytes, expected_seq: int, head: int) -> None:
        super().__init__(
            f"chain {network_id.hex()} moved on: wanted to append at {expected_seq}, head is {head}"
        )
        self.network_id = network_id
        self.expected_seq = expected_seq
        self.head = head


class DecodeError(AtenetError):
    """Bytes that do not decode as the format they claim to be."""


class ChainInvalid(AtenetError):
    """A chain failed verification on append or replay: names the event and what failed."""

    def __init__(self, network_id: bytes, seq: int, what: str) -> None:
        super().__init__(f"chain {network_id.hex()[:12]}… is tampered: event {seq}: {what}")
        self.network_id = network_id
        self.seq = seq
        self.what = what


class NotAllowed(AtenetError):
    """The author's key may not write this kind of event (e.g. not the network's owner)."""


class NotFound(AtenetError):
    """An unknown network, key or route."""
