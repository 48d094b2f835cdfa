"""One schema check for every JSON message the node accepts from a client.

Clients (and anyone who can reach a port) send the node JSON: the ``/ws`` hello, UDP control
messages (hello, ping, bye) inside sealed packets. Ad-hoc ``int(x)`` / ``str(x)`` conversions let
odd values through to code that then raises something nobody expected — ``"time": 1e999`` made
``int()`` raise OverflowError, a non-ASCII ``mac`` made ``hmac.compare_digest`` raise TypeError,
``[[[[…`` makes ``json.loads`` raise RecursionError — and each reached the log as a traceback.

So every message is described by a small declarative spec (field name → :class:`Field`: type,
range, length, pattern, allowed values) and checked by one :func:`validate` (or :func:`parse`,
which also decodes the JSON) that raises only :class:`SchemaError`. Callers catch that one type,
count the message as bad and drop it. Fields a spec does not name are ignored (a newer client may
send more); code must only read fields its spec names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atenet.errors import AtenetError

MAX_MESSAGE = 64 * 1024
"""Longest JSON text accepted at all (bytes or characters)."""

MAX_DEPTH = 8
"""Deepest nesting of arrays/objects accepted (checked before decoding)."""

U32_MAX = 2**32 - 1


class SchemaError(AtenetError):
    """A client's message does not match its spec; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Field:
    """What one field may hold. ``kind`` is ``str``, ``int``, ``float`` or ``bool`` (an int is
    never a bool, a float field takes ints too; NaN and infinities are never accepted)."""

    kind: type
    required: bool = True
    min: float | None = None
    max: float | None = None
    min_len: int = 0
    max_len: int | None = None
    pattern: str | None = None
    choices: frozenset[Any] | None = None

    def check(self, name: str, value: Any) -> Any:
        kind = self.kind
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                raise SchemaError(name, "not a finite number")
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise SchemaError(name, f"expected {kind.__name__}, got {type(value).__name__}")
        if self.min is not None and value < self.min:
            raise SchemaError(name, f"below {self.min:g}")
        if self.max is not None and value > self.max:
            raise SchemaError(name, f"above {self.max:g}")
        if isinstance(value, str):
            if len(value) < self.min_len:
                raise SchemaError(name, f"shorter than {self.min_len}")
            if self.max_len is not None and len(value) > self.max_len:
                raise SchemaError(name, f"longer than {self.max_len}")
            if self.pattern is not None and not _compiled(self.pattern).fullmatch(value):
                raise SchemaError(name, "malformed")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(name, "not an accepted value")
        return value


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    found = _PATTERNS.get(pattern)
    if found is None:
        found = _PATTERNS[pattern] = re.compile(pattern, re.ASCII)
    return found


Spec = Mapping[str, Field]


def validate(message: Any, spec: Spec) -> dict[str, Any]:
    """The fields ``spec`` names, checked; raises :class:`SchemaError` (and nothing else)."""
    if not isinstance(message, dict):
        raise SchemaError("", f"expected a JSON object, got {type(message).__name__}")
    out: dict[str, Any] = {}
    for name, field in spec.items():
        if name not in message:
            if field.required:
                raise SchemaError(name, "missing")
            continue
        out[name] = field.check(name, message[name])
    return out


def parse(data: str | bytes | bytearray | memoryview, spec: Spec) -> dict[str, Any]:
    """Decode a JSON text and :func:`validate` it; every failure is a :class:`SchemaError`."""
    if len(data) > MAX_MESSAGE:
        raise SchemaError("", f"longer than {MAX_MESSAGE} bytes")
    if not isinstance(data, str):
        try:
            data = bytes(data).decode()
        except UnicodeDecodeError:
            raise SchemaError("", "not UTF-8") from None
    # Cheap bound on nesting before json.loads, whose recursion would otherwise hit the
    # interpreter's limit (RecursionError) on a message of brackets.
    if data.count("[") + data.count("{") > MAX_DEPTH:
        depth = 0
        for char in data:
            if char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise SchemaError("", f"nested deeper than {MAX_DEPTH}")
            elif char in "]}":
                depth -= 1
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SchemaError("", f"not JSON ({exc.__class__.__name__})") from None
    return validate(message, spec)


HEX32 = r"[0-9a-fA-F]{32}"
HEX64 = r"[0-9a-fA-F]{64}"
PRINTABLE = r"[\x20-\x7e]*"
"""Printable ASCII: what a name that ends up in logs, metrics and pages may hold."""

HOST_NAME = Field(str, required=False, max_len=64, pattern=r"[^\x00-\x1f\x7f-\x9f]*")
"""A client's host name (optional; shown to operators and the page): up to 64 characters, any
script, but no control characters, so a name cannot forge lines in logs or tables. Clients send
only ``str.isprintable()`` characters (client/core.py, web/net.js), a subset of this."""

WS_HELLO: Spec = {
    "op": Field(str, choices=frozenset({"hello"})),
    "network": Field(str, pattern=HEX32),
    "key_id": Field(int, min=0, max=U32_MAX),
    # Milliseconds since the epoch: an int in a range any clock this century gives.
    "time": Field(int, min=0, max=2**53),
    "nonce": Field(str, min_len=8, max_len=64, pattern=r"[0-9A-Za-z_-]+"),
    "mac": Field(str, pattern=HEX64),
    "host": HOST_NAME,
}
"""The page's first /ws message (docs/websocket.md)."""

WS_MESSAGE: Spec = {
    "op": Field(str, max_len=32, pattern=PRINTABLE, choices=frozenset()),
}
"""A text message on /ws after the hello: the node accepts none yet (each is counted as a
``bad_message`` and ignored)."""

CONTROL: Spec = {
    "op": Field(str, choices=frozenset({"hello", "ping", "bye"})),
    "offload": Field(int, required=False, min=0, max=1),
    # 1: a mirror port (`tok monitor`): it gets every frame, whatever the switch learned.
    "mirror": Field(int, required=False, min=0, max=1),
    "host": HOST_NAME,
    # The node instance the client was told in a challenge or welcome (node/core.py).
    "instance": Field(str, required=False, max_len=64, pattern=r"[0-9a-f]*"),
}
"""A UDP control message from a client (docs/protocol.md)."""
