"""Every parser and every input a peer, client, browser or store can send, fuzzed (short mode).

Each test pushes a few hundred hypothesis-made inputs — valid seeds with random edits, and plain
random bytes — through the real code (tests/support/fuzz_targets.py holds the targets, shared
with the long-mode mutation fuzzer bench/fuzz.py) and asserts the one invariant they share:
nothing escapes but the documented error types (SealError, OffloadError, DecodeError, BadToken,
ChainInvalid, ...), junk is counted as exactly one drop and never answered, and an authenticated
payload is answered only when it is a well-formed hello or ping.

Bugs found by fuzzing stay here as ``@example``s, and so do the bugs of issue 9.3 (/ws hello
fields) and 9.12 (owner-written event bodies).

The long mode (>= 1,000,000 inputs per target) is ``bench/fuzz.py``, also run by
``pytest -m fuzz`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atenet.chain.keys import b64
from tests.support import fuzz_targets as ft

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = 300

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


_TOKENS = [
    b"1e999",
    b"-1",
    b"null",
    b"[]",
    b"{}",
    b'"\xc3\xa9"',
    b"NaN",
    b"[" * 40,
    b"18446744073709551616",
    b'"',
    b"\\u0000",
    b"\xff",
    b"\x00",
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with 0-4 edits hypothesis can shrink: flips, sets, cuts, insertions, tokens."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "set", "cut", "extend", "insert", "delete", "token")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0, 0xFF, 0x7F, 0x80, 1)))
        elif op == "cut":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        elif op == "token":
            data[at : at + draw(st.integers(0, 4))] = draw(st.sampled_from(_TOKENS))
    return bytes(data)


def inputs_for(target: ft.Target) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(target.seeds), st.binary(max_size=1600))


def fuzz(target: ft.Target, *examples: bytes, strategy: st.SearchStrategy | None = None) -> None:
    """Run ``target`` on its seeds and ``examples`` first, then on hypothesis inputs; fail on any
    Crash. (The seeds make the outcomes the tests assert on certain, whatever hypothesis draws.)
    """
    examples = (*target.seeds, *examples)

    @FUZZ
    @given(strategy if strategy is not None else inputs_for(target))
    def run(data: bytes) -> None:
        target.run(data)

    for data in reversed(examples):
        run = example(data)(run)
    run()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> ft.Net:
    return asyncio.run(ft.make_net(tmp_path_factory.mktemp("fuzznet")))


@pytest.fixture(scope="module")
def hello_fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ft.HelloFixture]:
    fx = ft.HelloFixture(tmp_path_factory.mktemp("fuzzws"))
    try:
        yield fx
    finally:
        fx.close()


def by_name(targets: list[ft.Target], name: str) -> ft.Target:
    return next(t for t in targets if t.name == name)


# ---------------------------------------------------------------------------- no network


@pytest.mark.parametrize("name", [t.name for t in ft.byte_targets()])
def test_byte_parsers_raise_only_their_documented_errors(name: str) -> None:
    target = by_name(ft.byte_targets(), name)
    fuzz(target)
    assert target.reasons, "no input reached the target"


def test_offload_segmentation_is_bounded() -> None:
    """Found with this fuzzer's amplification bound: one 62 KB super-frame with ``gso_size`` 1
    was accepted and cut into 62,000 frames (3.4 MB, ~350 ms of node CPU) for every port
    without offloads. No kernel emits that (TCP's smallest MSS is 48; USO sends at most 128
    segments), so check() refuses it."""
    target = by_name(ft.offload_targets(), "offload.to_frames")
    tiny = []
    for packet in (ft.tcp_superframe(62000), ft.udp_superframe(62000)):
        for size in (1, 2, 47):
            p = bytearray(packet)
            p[4:6] = size.to_bytes(2, "little")
            tiny.append(bytes(p))
    fuzz(target, *tiny)
    assert "OffloadError:gso_size" in target.reasons


def test_seal_header_edge_lengths() -> None:
    """Every truncation of a packet already seen: short, or replay (the window is checked
    before any crypto work) — nothing else."""
    target = by_name(ft.seal_targets(), "seal.Opener.open")
    seed = target.seeds[0]
    for n in range(len(seed) + 2):
        target.run(seed[:n] + (b"\x00" if n > len(seed) else b""))
    assert target.reasons == {"SealError:short", "SealError:replay"}


# ---------------------------------------------------------------------------- the node core


def node_target(net: ft.Net, name: str) -> ft.Target:
    return by_name(ft.node_targets(net), name)


def test_node_drops_and_never_answers_unauthenticated_datagrams(net: ft.Net) -> None:
    target = node_target(net, "node.datagram(unauthenticated)")
    forged = bytearray(target.seeds[0])
    forged[-1] ^= 1
    fuzz(target, bytes(forged), os.urandom(16) + b"\x01\x01" + bytes(40), b"", b"\x00" * 33)
    assert {"net.auth", "net.replay"} <= target.reasons


def test_node_control_json_from_a_key_holder(net: ft.Net) -> None:
    """Found by this fuzzer: deeply nested JSON in an authenticated control packet raised
    RecursionError out of NodeCore.datagram (the read batch's other datagrams were lost)."""
    target = node_target(net, "node.datagram(control JSON)")
    control = st.one_of(
        mutated(target.seeds),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["op", "offload", "host", "x"]), inner, max_size=3
                )
            ),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"op": st.sampled_from(["hello", "ping", "bye", "welcome", ""])},
            optional={"offload": st.one_of(st.integers(), st.text(), st.none())},
        ).map(lambda v: json.dumps(v).encode()),
    )
    fuzz(
        target,
        b"[" * 5000,
        b'{"op":' + b"[" * 5000,
        b'{"op":"hello"}',
        b"\xff\xfe",
        strategy=control,
    )
    assert {"accepted", "net.bad_control"} <= target.reasons


def test_node_frames_from_a_key_holder(net: ft.Net) -> None:
    target = node_target(net, "node.datagram(frame)")
    fuzz(target, b"", bytes(13), bytes(14))
    assert {"accepted", "net.runt"} <= target.reasons


def test_node_superframes_with_bad_virtio_headers(net: ft.Net) -> None:
    target = node_target(net, "node.datagram(superframe)")
    fuzz(target, b"", bytes(10), b"\x01\x01" + bytes(30))
    assert "accepted" in target.reasons
    assert any(r.startswith("net.offload_") for r in target.reasons)


# ---------------------------------------------------------------------------- the client core


@pytest.mark.parametrize(
    "name",
    ["client.receive(unauthenticated)", "client.receive(control JSON)", "client.receive(frame)"],
)
def test_client_inbound_path(net: ft.Net, name: str) -> None:
    """Found by this fuzzer: a node's control packet with deeply nested JSON raised
    RecursionError out of ClientCore.receive (and so out of `tok connect`)."""
    target = by_name(ft.client_targets(net), name)
    fuzz(target, b"[" * 5000, b'{"op":"welcome","offload":' + b"[" * 3000)
    assert target.reasons


# ---------------------------------------------------------------------------- the chain


def test_deployment_record_from_a_broken_store() -> None:
    """Found by this fuzzer: a deeply nested deployment record raised RecursionError out of
    Deployment.decode (a traceback from `tok` against a damaged store)."""
    target = ft.deployment_target()
    fuzz(target, b'{"authority_sign":' + b"[" * 5000, b"[" * 5000)
    assert {"AtenetError", "ok"} <= target.reasons


def test_event_decode_and_replay_of_a_tampered_store(net: ft.Net) -> None:
    decode, replay = ft.chain_targets(net)
    fuzz(decode)
    fuzz(replay)
    assert {"ChainInvalid", "accepted"} <= replay.reasons


VALID_SECRET = b64(bytes(32))
OWNER_BODY = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=20), st.integers()),
        "cidr": st.text(max_size=20),
        "mtu": st.one_of(st.integers(0, 70000), st.text(max_size=4)),
        "key_id": st.integers(-(2**40), 2**40),
        "label": st.text(max_size=10),
        "secret": st.sampled_from([VALID_SECRET, "", "!!", b64(bytes(5))]),
        "to": st.text(max_size=8),
        "token": st.text(max_size=8),
    },
)


def test_owner_written_bodies_well_typed(net: ft.Net) -> None:
    """Owner-signed events with well-typed but arbitrary fields: refused with ChainInvalid or
    folded into a state that a node can still list and serve."""
    target = ft.owner_body_target(net)
    strategy = st.tuples(st.integers(0, 4), OWNER_BODY).map(
        lambda kv: bytes([kv[0]]) + json.dumps(kv[1]).encode()
    )
    fuzz(target, strategy=strategy)
    assert {"ChainInvalid", "accepted"} <= target.reasons


def test_owner_written_bodies_any_json(net: ft.Net) -> None:
    """Any body an owner signs (issue 9.12): ``key_id: 1e999`` escaped as OverflowError,
    ``expires: "soon"`` broke every later key comparison, and (found by this fuzzer after the
    9.12 fix) deep nesting escaped as RecursionError; all now refused with ChainInvalid."""
    target = ft.owner_body_target(net)
    secret = VALID_SECRET.encode()
    fuzz(
        target,
        b'\x01{"key_id":1e999,"secret":"' + secret + b'"}',
        b'\x01{"key_id":7,"secret":"' + secret + b'","expires":"soon"}',
        b'\x00{"mtu":1e999}',
        b'\x01{"key_id":' + b"[" * 5000,
    )


# ---------------------------------------------------------------------------- /ws hello


def hello_strategy(fx: ft.HelloFixture) -> st.SearchStrategy[bytes]:
    """Hellos whose fields are well typed (ASCII text, finite numbers) but otherwise anything:
    wrong network, unknown or revoked key, stale time, bad or replayed MAC."""
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70)
    fields = st.fixed_dictionaries(
        {},
        optional={
            "op": st.sampled_from(["hello", "ping", ""]),
            "network": st.one_of(st.just(fx.network_id.hex()), ascii_text),
            "key_id": st.one_of(st.sampled_from([1, 2, 3, 0, -1]), st.integers(), ascii_text),
            "time": st.one_of(
                st.integers(-(2**70), 2**70),
                st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
                st.just(int(time.time() * 1000)),
            ),
            "nonce": ascii_text,
            "mac": st.one_of(ascii_text, st.just("0" * 64)),
        },
    )
    return st.tuples(st.sampled_from([1, 2]), fields).map(
        lambda kf: json.dumps(fx.hello(kf[0], **kf[1])).encode()
    )


def test_ws_hello_well_typed_fields(hello_fx: ft.HelloFixture) -> None:
    target = ft.hello_target(hello_fx)
    fuzz(target, strategy=hello_strategy(hello_fx))
    assert {"accepted", "refused"} <= target.reasons


def test_ws_hello_replayed_or_binary_is_refused(hello_fx: ft.HelloFixture) -> None:
    hello = json.dumps(hello_fx.hello()).encode()
    assert hello_fx.check(hello.decode()) is not None
    assert hello_fx.check(hello.decode()) is None  # same nonce again
    from aiohttp import WSMsgType

    from atenet.node.schema import SchemaError

    with pytest.raises(SchemaError):  # the handler closes with 1008
        hello_fx.check(json.dumps(hello_fx.hello()).encode(), WSMsgType.BINARY)


def test_ws_hello_any_bytes(hello_fx: ft.HelloFixture) -> None:
    """Any text as a hello (issue 9.3): ``"time": 1e999`` raised OverflowError, a non-ASCII
    ``mac`` TypeError, a ``"\\ud800"`` escape in the nonce UnicodeEncodeError (found by this
    fuzzer) and deep nesting RecursionError out of the handler; now all a SchemaError."""
    target = ft.hello_target(hello_fx)
    fuzz(
        target,
        json.dumps(hello_fx.hello(time=1e999)).replace("Infinity", "1e999").encode(),
        json.dumps(hello_fx.hello(mac="é" * 64), ensure_ascii=False).encode(),
        json.dumps(hello_fx.hello(key_id=1e999)).replace("Infinity", "1e999").encode(),
        json.dumps(hello_fx.hello(nonce="\ud800")).encode(),
        b"[" * 5000,
    )


# ---------------------------------------------------------------------------- heartbeats


def test_latest_records_from_a_broken_store(hello_fx: ft.HelloFixture) -> None:
    target = ft.heartbeat_targets(hello_fx)[0]
    fuzz(target, b"", b"ATEV")
    assert {"ignored", "read"} <= target.reasons


def test_heartbeats_signed_by_another_node(hello_fx: ft.HelloFixture) -> None:
    """Found by this fuzzer: a certified node's heartbeat with ``"interval": "x"`` (or ``[]``)
    raised out of the heartbeat loop, which then stopped for good (no more beats, peers never
    refreshed); ``1e999`` or ``NaN`` made that peer alive forever."""
    target = ft.heartbeat_targets(hello_fx)[1]
    fields = st.fixed_dictionaries(
        {},
        optional={
            "interval": st.one_of(st.floats(), st.integers(), st.text(max_size=4), st.none()),
            "node": st.text(max_size=8),
            "ports": st.one_of(st.integers(), st.lists(st.integers(), max_size=3)),
        },
    ).map(lambda v: json.dumps(v).encode())
    fuzz(
        target,
        b'{"interval": "x"}',
        b'{"interval": []}',
        b'{"interval": 1e999}',
        b'{"interval": NaN}',
        b'{"interval": 0}',
        strategy=st.one_of(mutated(target.seeds), fields),
    )
    assert "read" in target.reasons


def test_nodes_record_from_a_damaged_store(hello_fx: ft.HelloFixture) -> None:
    """Found by this fuzzer: a "nodes" record with deep nesting raised RecursionError out of a
    starting node and `tok key export`; ``"endpoints": 5`` or ``[5]`` raised TypeError /
    AttributeError out of `tok key export`."""
    target = ft.meta_nodes_target(hello_fx)
    now = str(time.time()).encode()
    fuzz(
        target,
        b'{"n":{"endpoints":' + b"[" * 5000,
        b'{"n":{"endpoints":5,"time":' + now + b"}}",
        b'{"n":{"endpoints":[5, null, ["a"]],"time":' + now + b"}}",
        b'{"n":{"endpoints":["no-port"],"time":' + now + b"}}",
        b"[]",
    )
    assert {"AtenetError", "endpoints=2"} <= target.reasons


# ---------------------------------------------------------------------------- long mode


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_long_mode_script_runs_every_target() -> None:
    """bench/fuzz.py with a tiny count: it lists every target, inputs/s and crashes."""
    proc = run_bench("-n", "300", "--json", timeout=120)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) >= 20, proc.stderr
    names = {r["target"] for r in results}
    assert {"node.datagram(unauthenticated)", "seal.Opener.open", "node.websocket.hello"} <= names
    for result in results:
        assert result["inputs"] >= 300 and result["inputs_per_s"] > 0
        assert result["crashes"] == 0, result
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.fuzz
def test_long_mode_a_million_inputs_per_target(request: pytest.FixtureRequest) -> None:
    """``pytest -m fuzz``: the long mode, >= 1,000,000 inputs per target (~2 h on 2 cores)."""
    if "fuzz" not in (request.config.option.markexpr or ""):
        pytest.skip("long mode: run with `pytest -m fuzz` (or bench/fuzz.py)")
    proc = run_bench("--full", timeout=6 * 3600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
