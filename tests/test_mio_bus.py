"""The mio bus codec (docs/mio.md): every message round-trips, and bad bytes get a DecodeError
that says what is wrong — never another exception, whatever the input."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.errors import DecodeError
from atenet.mio import bus
from atenet.mio.bus import Endpoint

V4 = IPv4Address("10.1.0.7")
V6 = IPv6Address("fd00::7")

SAMPLES: list[bus.Message] = [
    bus.Connect(1, Endpoint(V4, 80)),
    bus.Connect(2, Endpoint(V6, 443), local_port=5000, timeout_ms=3000),
    bus.Connected(1, Endpoint(V4, 40000), Endpoint(V4, 80), 262144),
    bus.Listen(3, Endpoint(None, 8000), backlog=16),
    bus.Listening(3, Endpoint(V6, 8000)),
    bus.Accept(3, bus.ACCEPTED_ID_BIT | 1, Endpoint(V4, 8000), Endpoint(V4, 51000), 65536),
    bus.Data(1, b"hello"),
    bus.Data(1, bytes(bus.MAX_DATA)),
    bus.Credit(1, 4096),
    bus.Shutdown(1),
    bus.Close(1),
    bus.Close(1, abort=True),
    bus.Close(bus.ACCEPTED_ID_BIT | 1, errno=104, reason="connection reset by 10.1.0.9"),
    bus.Bind(4, Endpoint(None, 0)),
    bus.Bound(4, Endpoint(V4, 53000)),
    bus.Datagram(4, Endpoint(V6, 53), b"\x00\x01query"),
    bus.Datagram(4, Endpoint(V4, 9), b""),
    bus.Ping(5, V4),
    bus.Ping(6, V6, size=1000, timeout_ms=500),
    bus.Pong(5, 1234),
    bus.Resolve(7, "printer.lan"),
    bus.Resolved(7, (V4, V6)),
    bus.Resolved(8, ()),
    bus.Error(1, 111, "connection refused by 10.1.0.7:80"),
    bus.Error(9, 71, ""),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: bus.Message) -> None:
    raw = message.encode()
    assert raw[0] == message.op and struct.unpack("!I", raw[1:5])[0] == message.id
    assert bus.decode(raw) == message
    assert bus.decode(memoryview(bytearray(raw))) == message


def test_fast_paths_match_the_objects() -> None:
    assert bus.data_bytes(9, b"xyz") == bus.Data(9, b"xyz").encode()
    assert bus.data_bytes(9, memoryview(b"xyz")) == bus.Data(9, b"xyz").encode()
    assert bus.credit_bytes(9, 77) == bus.Credit(9, 77).encode()


def test_endpoint_text() -> None:
    assert Endpoint.of("10.1.0.7", 80) == Endpoint(V4, 80)
    assert Endpoint.of("", 80) == Endpoint(None, 80)
    assert str(Endpoint(V6, 53)) == "[fd00::7]:53"
    assert str(Endpoint(None, 8000)) == "*:8000"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "shorter than its 5-byte header"),
        (b"\x63\x00\x00\x00\x01", "unknown bus op 99"),
        (bytes([bus.Op.DATA, 0, 0, 0, 1]), "DATA without payload"),
        (bytes([bus.Op.DATA, 0, 0, 0, 1]) + bytes(bus.MAX_DATA + 1), "above 65536"),
        (bytes([bus.Op.CONNECT, 0, 0, 0, 1, 5]) + bytes(7), "length 5 is not 0, 4 or 16"),
        (bytes([bus.Op.CONNECT, 0, 0, 0, 1, 0, 0, 80, 0, 0, 0, 0, 0, 0]), "needs a remote"),
        (bytes([bus.Op.CONNECT, 0, 0, 0, 1, 4, 10, 0]), "ends inside its endpoint"),
        (bus.Credit(1, 5).encode() + b"x", "1 bytes after its body"),
        (bytes([bus.Op.CREDIT, 0, 0, 0, 1, 0, 0, 0, 0]), "CREDIT of 0 bytes"),
        (bytes([bus.Op.SHUTDOWN, 0, 0, 0, 1, 0]), "SHUTDOWN carries no body"),
        (bytes([bus.Op.CLOSE, 0, 0, 0, 1, 2, 0, 0]), "unknown bits"),
        (bytes([bus.Op.ERROR, 0, 0, 0, 1, 0, 111, 0xFF]), "not UTF-8"),
        (
            bus.Accept(3, 1 | bus.ACCEPTED_ID_BIT, Endpoint(V4, 1), Endpoint(V4, 2), 1).encode()[:5]
            + b"\x00\x00\x00\x01",
            "lacks the node's high bit",
        ),
        (bytes([bus.Op.RESOLVED, 0, 0, 0, 1, 33]), "at most 32"),
    ],
)
def test_bad_messages_say_what_is_wrong(raw: bytes, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        bus.decode(raw)


def test_encoding_refuses_what_decoding_would() -> None:
    with pytest.raises(ValueError, match="above"):
        bus.Data(1, bytes(bus.MAX_DATA + 1)).encode()
    with pytest.raises(ValueError, match="remote address"):
        bus.Connect(1, Endpoint(None, 80)).encode()
    with pytest.raises(ValueError, match="outside"):
        bus.Credit(-1, 5).encode()
    with pytest.raises(ValueError, match="port 70000"):
        bus.Bind(1, Endpoint(None, 70000)).encode()


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda m, cut, junk: m.encode()[:cut] + junk,
            st.sampled_from(SAMPLES),
            st.integers(0, 80),
            st.binary(max_size=8),
        ),
    )
)
def test_decode_never_raises_anything_but_decode_error(raw: bytes) -> None:
    try:
        message = bus.decode(raw)
    except DecodeError:
        return
    assert bus.decode(message.encode()) == message  # what decodes re-encodes to itself


def test_long_reasons_are_cut_on_a_character_boundary() -> None:
    message = bus.Error(1, 111, "é" * 400)  # 800 bytes of two-byte characters
    back = bus.decode(message.encode())
    assert isinstance(back, bus.Error) and back.reason == "é" * (bus.MAX_TEXT // 2)
