"""Event bodies are schema-checked on replay: a signed event with a malformed body is a tamper.

Each bad body is signed by the key allowed to write its kind (the owner, or a certified node for
membership), appended straight into the store (bypassing the writer's own check, as a buggy or
hostile writer would), and a fresh replay must refuse it naming its seq and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.chain.event import Kind
from atenet.chain.keys import b64, short_id
from atenet.chain.sqlite_store import SqliteStore
from atenet.chain.state import AccessKey
from atenet.errors import ChainInvalid
from tests.support.chains import World, make_world


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteStore(f"sqlite://{tmp_path / 'chains.sqlite'}")
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


def key_body(key_id: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"key_id": key_id, "label": "k", "secret": b64(os.urandom(32)), "expires": None, **extra}


async def append_raw(w: World, kind: Kind, payload: dict[str, Any], *, node: bool = False) -> int:
    """Sign ``payload`` as the next event and store it without the writer's verification."""
    await w.chain.catch_up()
    signer = w.node_a if node else w.owner_signer
    state = w.chain.state
    blob = state.build(kind, payload, signer.key, 1, signer.cert)
    seq = state.seq + 1
    await w.store.append(w.chain.network_id, seq, blob)
    return seq


NODE_A = "node_a"  # placeholder replaced by node_a's id in the membership cases

BAD_BODIES = [
    (Kind.KEY_ADD, key_body(expires="tomorrow"), "expires tomorrow is neither null"),
    (Kind.KEY_ADD, key_body(expires=[1, 2]), "neither null nor a Unix time"),
    (Kind.KEY_ADD, key_body(expires=True), "neither null nor a Unix time"),
    (Kind.KEY_ADD, key_body(key_id="1"), "key_id 1 is not an integer"),
    (Kind.KEY_ADD, key_body(key_id=0), "is not an integer from 1"),
    (Kind.KEY_ADD, key_body(key_id=2**40), "is not an integer from 1"),
    (Kind.KEY_ADD, {**key_body(), "secret": b64(b"short")}, "secret is 5 bytes, not 32"),
    (Kind.KEY_ADD, {**key_body(), "secret": "!!"}, "secret is not valid base64"),
    (Kind.KEY_ADD, key_body(label="a\nb"), "label must be printable"),
    (Kind.KEY_ADD, key_body(label=7), "the label is a int"),
    (Kind.KEY_REVOKE, {"key_id": 9}, "names key 9, which was never added"),
    (Kind.KEY_REVOKE, {"key_id": None}, "key_id None is not an integer"),
    (Kind.SETTINGS, {"name": 'x"}\n'}, "printable"),
    (Kind.SETTINGS, {"name": ""}, "1 to 64 characters"),
    (Kind.SETTINGS, {"name": "x" * 65}, "1 to 64 characters"),
    (Kind.SETTINGS, {"name": ["office"]}, "the name is a list"),
    (Kind.SETTINGS, {"mtu": "1400"}, "mtu 1400 is not an integer"),
    (Kind.SETTINGS, {"mtu": 100}, "mtu 100 is not an integer from 576"),
    (Kind.SETTINGS, {"cidr": "10.0.0.0/33"}, "cidr '10.0.0.0/33' is not a network"),
    (Kind.SETTINGS, {"cidr6": "10.0.0.0/24"}, "cidr6 10.0.0.0/24 is not an IPv6 network"),
    (Kind.SETTINGS, {"dns": "8.8.8.8"}, "dns must be a list"),
    (Kind.SETTINGS, {"dns": ["dns.example"]}, "is not an IPv4 or IPv6 address"),
    (Kind.SETTINGS, {"internet": "yes"}, "internet is not true or false"),
    (Kind.ROUTE_ADD, {"to": "zz", "key_id": 1, "token": "t"}, "to is not a network id"),
    (Kind.ROUTE_ADD, {"to": "ab" * 16, "key_id": 1, "token": 5}, "token is a int"),
    (Kind.ROUTE_REMOVE, {"to": 12}, "to is not a network id"),
    (Kind.MEMBER_JOIN, {"node_id": NODE_A, "endpoints": "1.2.3.4:5"}, "endpoints is not a list"),
    (Kind.MEMBER_JOIN, {"node_id": NODE_A, "endpoints": ["a:1"] * 33}, "at most 32"),
    (Kind.MEMBER_JOIN, {"node_id": NODE_A, "endpoints": [5]}, "an endpoint is not"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "message"), BAD_BODIES, ids=[f"{k.name}-{i}" for i, (k, *_ ) in
                                                      enumerate(BAD_BODIES)]
)  # fmt: skip
async def test_a_malformed_body_is_refused_on_replay_naming_the_event(
    store, kind, payload, message
):
    w = await make_world(store)
    await w.chain.append(Kind.KEY_ADD, key_body(1), w.owner_signer)  # seq 3
    node = kind in (Kind.MEMBER_JOIN, Kind.MEMBER_LEAVE)
    if payload.get("node_id") == NODE_A:
        payload = {**payload, "node_id": short_id(w.node_a.key.public_key().public_bytes_raw())}
    # The writer's own check refuses the body before it reaches the store...
    writer = w.reader() if node else w.chain
    with pytest.raises(ChainInvalid, match=r"malformed|never added"):
        await writer.append(kind, payload, w.node_a if node else w.owner_signer)
    assert await store.head(w.chain.network_id) == 3
    # ... and a store holding it anyway (a buggy or hostile writer) is refused on replay.
    seq = await append_raw(w, kind, payload, node=node)
    assert seq == 4
    with pytest.raises(ChainInvalid) as err:
        await w.reader().load()
    assert err.value.seq == 4
    assert message in err.value.what, err.value.what
    assert "event 4" in str(err.value)


async def test_a_revoked_key_id_can_never_be_added_again(store):
    w = await make_world(store)
    await w.chain.append(Kind.KEY_ADD, key_body(1), w.owner_signer)
    await w.chain.append(Kind.KEY_REVOKE, {"key_id": 1}, w.owner_signer)
    seq = await append_raw(w, Kind.KEY_ADD, key_body(1))  # would un-revoke key 1
    with pytest.raises(ChainInvalid, match="reuses key id 1") as err:
        await w.reader().load()
    assert err.value.seq == seq == 5


async def test_well_formed_bodies_replay_and_unknown_fields_are_ignored(store):
    """The checks refuse only what is wrong: a newer writer's extra field is not a tamper."""
    w = await make_world(store)
    await w.chain.append(Kind.KEY_ADD, key_body(1, expires=2e9, future_field=1), w.owner_signer)
    await w.chain.append(Kind.SETTINGS, {"name": "hall ✓", "colour": "blue"}, w.owner_signer)
    state = await w.reader().load()
    assert state.keys[1].expires == 2e9
    assert state.settings.name == "hall ✓"


async def test_settings_events_change_only_what_they_name_and_replay_the_same(store):
    w = await make_world(store)
    await w.chain.append(Kind.SETTINGS, {"mtu": 1280}, w.owner_signer)
    await w.chain.append(
        Kind.SETTINGS, {"dns": ["1.1.1.1", "2606:4700:4700::1111"], "internet": True},
        w.owner_signer,
    )  # fmt: skip
    await w.chain.append(Kind.SETTINGS, {"name": "hall"}, w.owner_signer)
    for state in (w.chain.state, await w.reader().load()):
        s = state.settings
        assert (s.name, s.mtu, s.cidr, s.cidr6) == ("hall", 1280, "10.9.8.0/24", "fd00:1:2:3::/64")
        assert s.dns == ("1.1.1.1", "2606:4700:4700::1111")
        assert s.internet is True


async def test_a_network_without_dns_settings_announces_the_default(store):
    w = await make_world(store)
    state = await w.reader().load()
    assert state.settings.dns == ("8.8.8.8",)
    assert state.settings.internet is False


async def test_a_node_following_the_chain_welcomes_new_clients_with_the_new_settings(store):
    """`tok network set` as nodes see it: the follower folds the settings event and the node's
    welcome (read when it answers a hello) carries the new MTU and name."""
    from atenet.node.core import NodeCore
    from atenet.owner import Owner

    w = await make_world(store)
    view = w.reader()
    await view.load()
    runtime = NodeCore("n1", lambda packet, dst: None, 1).add_network(w.chain.network_id)
    runtime.apply_state(view.state, 1000.0)
    assert runtime.welcome("welcome")["mtu"] == 1400

    change = await Owner(store, w.owner).set_settings(w.chain, name="hall", mtu=1280)
    assert change == {"name": "hall", "mtu": 1280}
    await view.catch_up()  # what the daemon's follow loop does on each new event
    runtime.apply_state(view.state, 1001.0)
    welcome = runtime.welcome("welcome")
    assert (welcome["name"], welcome["mtu"]) == ("hall", 1280)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = [
    "name",
    "cidr",
    "cidr6",
    "mtu",
    "dns",
    "internet",
    "key_id",
    "label",
    "secret",
    "expires",
    "to",
    "token",
    "created_key",
    "node_id",
    "endpoints",
    "mac",
    "ip",
]


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([k for k in Kind if k not in (Kind.GENESIS, Kind.DIAG)]),
    body=st.dictionaries(st.sampled_from(_fields) | st.text(max_size=6), _json, max_size=6),
)
def test_any_json_body_is_either_accepted_and_folded_or_refused_as_a_tamper(kind, body):
    """No body makes replay raise anything but ChainInvalid (no TypeError from a fold, no
    OverflowError from a float): the whole state machine, minus the crypto, on random JSON."""
    from atenet.chain.event import Event
    from atenet.chain.state import NetworkState

    state = NetworkState(b"\x01" * 16)
    state.keys[1] = AccessKey(1, "", 0.0, None, b"\x00" * 32)
    event = Event(int(kind), state.network_id, 5, b"", 0, b"", b"", b"", b"", b"")
    try:
        state._check_body(event, body, 5)
        state._fold(event, body)
    except ChainInvalid as exc:
        assert exc.seq == 5
