"""One schema check for every JSON a client sends the node (issue 9, item 3): the specs refuse
what crashed the node before, and a real node drops and counts bad UDP control messages."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path

import pytest

from atenet.node.schema import CONTROL, WS_HELLO, Field, SchemaError, parse, validate
from atenet.overlay.seal import TYPE_CONTROL, PacketKey, Sealer
from tests.support.chains import serving_node

HELLO = {
    "op": "hello", "network": "ab" * 16, "key_id": 3, "time": 1_712_345_678_901,
    "nonce": "cd" * 16, "mac": "ef" * 32,
}  # fmt: skip


def test_a_good_hello_passes_and_keeps_only_the_fields_its_spec_names() -> None:
    checked = validate({**HELLO, "extra": [1, 2]}, WS_HELLO)
    assert checked == HELLO


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(HELLO).replace("1712345678901", "1e999"),  # OverflowError before
        json.dumps({**HELLO, "mac": "é" * 64}, ensure_ascii=False),  # TypeError before
        json.dumps({**HELLO, "time": 1712345678901.5}),
        json.dumps({**HELLO, "time": -1}),
        json.dumps({**HELLO, "key_id": True}),
        json.dumps({**HELLO, "key_id": 2**32}),
        json.dumps({**HELLO, "nonce": ""}),
        json.dumps({**HELLO, "nonce": "a\nb" * 4}),
        json.dumps({**HELLO, "network": "ab" * 15}),
        json.dumps({**HELLO, "op": "welcome"}),
        json.dumps({**HELLO, "host": "a\x1b[31m"}),
        json.dumps({k: v for k, v in HELLO.items() if k != "nonce"}),
        "[" * 100_000,  # RecursionError before
        "[" * 20 + "]" * 20,
        "NaN",
        '{"op": "hello", "time": Infinity}',
        "1" * 5000,  # int() with too many digits raises ValueError
        "\udcff",
        "",
    ],
)
def test_every_bad_hello_is_one_schema_error(text: str) -> None:
    with pytest.raises(SchemaError):
        parse(text, WS_HELLO)


def test_control_messages_and_bytes() -> None:
    assert parse(b'{"op": "ping", "offload": 1}', CONTROL) == {"op": "ping", "offload": 1}
    for bad in (b"\xff\xfe", b'{"op": "ping", "offload": "1"}', b'{"op": "shutdown"}', b"{}"):
        with pytest.raises(SchemaError):
            parse(bad, CONTROL)
    with pytest.raises(SchemaError, match="not a finite number"):
        validate({"x": float("nan")}, {"x": Field(float)})


async def test_bad_control_messages_are_dropped_counted_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving_node(tmp_path, (1,)) as (daemon, world, secrets):
        net = world.chain.network_id
        addr = ("127.0.0.1", daemon.udp_port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sealer = Sealer(net, PacketKey(secrets[1], 1), 77, time.time_ns())
        # Bound to this node process, so it creates a port (docs/protocol.md).
        hello = json.dumps({"op": "hello", "instance": daemon.instance}).encode()
        try:
            for _ in range(50):  # load the network and create the port
                sock.sendto(sealer.seal(hello, TYPE_CONTROL), addr)
                await asyncio.sleep(0.1)
                if net in daemon.core.networks and daemon.core.networks[net].clients:
                    break
            await asyncio.sleep(0.2)
            while True:
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    break
            bad = [b"[" * 30_000, b'{"op": 1}', b'{"op": "hello", "offload": 1e999}', b"\xff"]
            for payload in bad:
                sock.sendto(sealer.seal(payload, TYPE_CONTROL), addr)
            await asyncio.sleep(0.5)
            with pytest.raises(BlockingIOError):
                sock.recv(65535)  # nothing answered
        finally:
            sock.close()
        runtime = daemon.core.networks[net]
        assert runtime.drops["bad_control"] == len(bad)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
