"""The mio client library against a real node: what it says when a session cannot start.

The library's socket paths are tested end to end with the node's /mio endpoint (issue 12);
here, the part that needs no stack: a node without the endpoint, a node that is not there, and a
token that is not one give one-line errors, not tracebacks or hangs.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from atenet.mio import client
from atenet.overlay.token import BadToken
from tests.support.loopback_node import LoopbackNode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LoopbackNode]:
    with LoopbackNode(tmp_path / "home", "lan") as n:
        yield n


async def test_a_url_without_mio_says_so(node: LoopbackNode) -> None:
    with pytest.raises(client.MioError, match="no mio endpoint"):
        await client.connect(f"{node.http}/elsewhere", node.token("prog"))


async def test_nothing_listening_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(OSError) as err:
            await client.connect(f"http://127.0.0.1:{port}", _token())
    assert err.value.errno == errno.ECONNREFUSED and "cannot reach the node" in str(err.value)


async def test_a_bad_token_is_refused_before_dialling() -> None:
    with pytest.raises(BadToken, match="not an atenet access token"):
        await client.connect("http://127.0.0.1:9", "hello")


def _token() -> str:
    from atenet.overlay.token import AccessToken

    return AccessToken(bytes(16), 1, bytes(32)).encode()
