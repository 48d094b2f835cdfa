"""`tok`'s owner commands as a user runs them (real processes, a real SQLite store): key expiry
and states, idempotent routes, store URL checks, the CIDR policy, `network set`, `--json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN


def run(home: Path, *args: str, ok: bool = True, prog: str = "tok") -> subprocess.CompletedProcess:
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    # cwd: a relative store path (refused now, created by older code) lands in the test's dir.
    proc = subprocess.run(
        [VENV_BIN / prog, *args], env=env, capture_output=True, text=True, timeout=60,
        cwd=home.parent,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def fails(home: Path, *args: str, message: str) -> subprocess.CompletedProcess:
    """Run a command that must fail with exit 1 and a one-line error containing ``message``."""
    proc = run(home, *args, ok=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run(home, "init", prog="atenet")
    run(home, "network", "create", "office", "--cidr", "10.20.30.0/24")
    return home


def keys_of(home: Path, network: str) -> list[dict]:
    return json.loads(run(home, "key", "list", network, "--json").stdout)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("expires", ["-5h", "0", "0s", "-1", "inf", "nanh"])
def test_a_past_or_zero_expiry_is_refused_and_writes_nothing(home: Path, expires: str) -> None:
    message = "bad duration" if "n" in expires else "not in the future"
    fails(home, "key", "export", "office", f"--expires={expires}", message=message)
    assert keys_of(home, "office") == []


def test_key_list_shows_active_expired_and_revoked(home: Path) -> None:
    node = ("--node", "192.0.2.1:4799")
    run(home, "key", "export", "office", "--label", "kept", *node)
    short = json.loads(
        run(home, "key", "export", "office", "--label", "brief", "--expires", "1s", *node,
            "--json").stdout
    )  # fmt: skip
    run(home, "key", "export", "office", "--label", "gone", *node)
    run(home, "key", "revoke", "office", "3")
    assert short["key_id"] == 2 and short["label"] == "brief"
    assert short["token"].startswith("atn1.") and short["endpoints"] == ["192.0.2.1:4799"]
    assert short["expires"] == pytest.approx(time.time() + 1, abs=30)
    time.sleep(max(0.0, short["expires"] - time.time()) + 0.2)
    assert [(k["label"], k["state"]) for k in keys_of(home, "office")] == [
        ("kept", "active"), ("brief", "expired"), ("gone", "revoked"),
    ]  # fmt: skip
    text = run(home, "key", "list", "office").stdout.splitlines()
    assert text[0].split() == ["id", "label", "created", "expires", "state"]
    assert text[1].split()[-1] == "active"
    assert text[2].split()[-1] == "expired"
    assert "revoked" in text[3]


def test_key_revoke_json(home: Path) -> None:
    run(home, "key", "export", "office", "--label", "laptop", "--node", "192.0.2.1:4799")
    out = json.loads(run(home, "key", "revoke", "office", "1", "--json").stdout)
    assert (out["key_id"], out["label"], out["state"]) == (1, "laptop", "revoked")
    assert isinstance(out["revoked_at"], float)


# --------------------------------------------------------------------------- routes


def routes_of(home: Path, network: str) -> list[str]:
    return [r["name"] for r in json.loads(run(home, "route", "list", network, "--json").stdout)]


def test_route_add_routes_both_ways_once_and_route_remove_revokes_both_keys(home: Path) -> None:
    run(home, "network", "create", "lab")
    first = json.loads(run(home, "route", "add", "office", "lab", "--json").stdout)
    second = run(home, "route", "add", "office", "lab")
    assert second.stdout.splitlines() == [
        "route office -> lab exists (key 1): nothing added",
        "route lab -> office exists (key 1): nothing added",
    ]
    third = json.loads(run(home, "route", "add", "lab", "office", "--json").stdout)
    assert first["added"] is True and first["both_ways"] is True
    assert [(r["name"], r["added"], r["created_key"]) for r in first["routes"]] == [
        ("lab", True, True), ("office", True, True),
    ]  # fmt: skip
    assert third["added"] is False and [r["added"] for r in third["routes"]] == [False, False]
    assert (routes_of(home, "office"), routes_of(home, "lab")) == (["lab"], ["office"])
    # One key each way, however often the route is added.
    assert [k["state"] for k in keys_of(home, "lab")] == ["active"]
    assert [k["state"] for k in keys_of(home, "office")] == ["active"]

    removed = json.loads(run(home, "route", "remove", "office", "lab", "--json").stdout)
    assert [(r["name"], r["removed"], r["revoked_key"]) for r in removed["routes"]] == [
        ("lab", True, 1), ("office", True, 1),
    ]  # fmt: skip
    assert [k["state"] for k in keys_of(home, "lab")] == ["revoked"]
    assert [k["state"] for k in keys_of(home, "office")] == ["revoked"]
    assert (routes_of(home, "office"), routes_of(home, "lab")) == ([], [])
    fails(home, "route", "remove", "office", "lab", message="no route between 'office' and 'lab'")


def test_route_add_completes_a_one_way_route_and_remove_one_way_keeps_the_other(
    home: Path,
) -> None:
    run(home, "network", "create", "lab")
    out = run(home, "route", "add", "office", "lab", "--one-way")
    assert out.stdout == "route office -> lab added (key 1)\n"
    assert (routes_of(home, "office"), routes_of(home, "lab")) == (["lab"], [])
    both = run(home, "route", "add", "lab", "office").stdout.splitlines()
    assert both == [
        "route lab -> office added (key 1)",
        "route office -> lab exists (key 1): nothing added",
    ]
    assert len(keys_of(home, "lab")) == 1  # the existing direction exported nothing new
    out = run(home, "route", "remove", "lab", "office", "--one-way")
    assert out.stdout == "route lab -> office removed, key 1 of office revoked\n"
    assert (routes_of(home, "office"), routes_of(home, "lab")) == (["lab"], [])
    # From the side that has no route left, `remove` still finds and removes the way back.
    out = run(home, "route", "remove", "lab", "office")
    assert out.stdout == "route office -> lab removed, key 1 of lab revoked\n"
    assert routes_of(home, "office") == []


def seed_network(home: Path, name: str, cidr: str, cidr6: str) -> None:
    """A network of ``home``'s owner made without `tok`'s overlap check, as an older tok or
    another tool could have written it: the chain rules themselves do not forbid overlaps."""
    code = f"""
import asyncio
from atenet.chain.log import create_network
from atenet.chain.sqlite_store import SqliteStore
from atenet.cli.tok import resolve_deployment
from atenet.deployment import load_or_create_owner

async def main():
    store = SqliteStore("sqlite://{home / "data" / "chains.sqlite"}")
    await store.connect()
    try:
        await create_network(store, load_or_create_owner(), await resolve_deployment(store),
                             name={name!r}, cidr={cidr!r}, cidr6={cidr6!r}, mtu=1400)
    finally:
        await store.close()

asyncio.run(main())
"""
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def chain_lengths(home: Path) -> list[int]:
    return [n["seq"] for n in json.loads(run(home, "network", "list", "--json").stdout)]


@pytest.mark.parametrize(
    ("cidr", "cidr6", "message"),
    [
        ("10.20.30.128/25", "fd99::/64", "its 10.20.30.128/25 overlaps 10.20.30.0/24 of 'office'"),
        ("10.77.0.0/24", "OFFICE6", "overlaps OFFICE6 of 'office'"),
    ],
)
@pytest.mark.parametrize("way", [(), ("--one-way",)])
def test_route_add_refuses_overlapping_networks_and_writes_nothing(
    home: Path, cidr: str, cidr6: str, message: str, way: tuple[str, ...]
) -> None:
    office6 = json.loads(run(home, "network", "show", "office", "--json").stdout)["cidr6"]
    seed_network(home, "legacy", cidr, cidr6.replace("OFFICE6", office6))
    before = chain_lengths(home)
    fails(home, "route", "add", "office", "legacy", *way,
          message=message.replace("OFFICE6", office6))  # fmt: skip
    fails(home, "route", "add", "legacy", "office", *way, message="overlaps")
    assert chain_lengths(home) == before  # no route, no key exported
    token = run(home, "key", "export", "legacy", "--node", "192.0.2.1:4799").stdout.strip()
    fails(home, "route", "add", "office", "--to", token, message="overlaps")


def test_route_add_refuses_a_network_overlapping_one_already_routed_to(home: Path) -> None:
    run(home, "network", "create", "lab", "--cidr", "10.40.0.0/24")
    run(home, "route", "add", "office", "lab")
    seed_network(home, "shadow", "10.40.0.128/25", "fd99::/64")
    before = chain_lengths(home)
    message = "its 10.40.0.128/25 overlaps 10.40.0.0/24 of 'lab', which 'office' routes to"
    fails(home, "route", "add", "office", "shadow", message=message)
    # Both ways are checked first: shadow -> office alone is fine, office -> shadow is not.
    fails(home, "route", "add", "shadow", "office", message=message)
    assert chain_lengths(home) == before
    run(home, "route", "add", "shadow", "office", "--one-way")
    assert routes_of(home, "shadow") == ["office"]


def test_route_add_to_another_owners_network_is_one_way(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    store = ("--store", f"sqlite://{home / 'data' / 'chains.sqlite'}")
    run(other, *store, "network", "create", "far")
    token = run(other, *store, "key", "export", "far", "--node", "192.0.2.1:4799").stdout.strip()
    out = run(home, "route", "add", "office", "--to", token).stdout.splitlines()
    assert out[0].startswith("route office -> ") and out[0].endswith("added (key 1)")
    assert out[1].startswith("one way only: that network is not yours")
    assert (
        json.loads(run(home, "route", "add", "office", "--to", token, "--json").stdout)["both_ways"]
        is False
    )


def test_route_remove_leaves_a_key_given_by_token_alone(home: Path) -> None:
    run(home, "network", "create", "lab")
    token = run(home, "key", "export", "lab", "--node", "192.0.2.1:4799").stdout.strip()
    run(home, "route", "add", "office", "--to", token)
    again = run(home, "route", "add", "office", "--to", token)
    assert "exists" in again.stdout
    lab_id = json.loads(run(home, "network", "show", "lab", "--json").stdout)["id"]
    out = run(home, "route", "remove", "office", lab_id[:8])
    assert out.stdout.startswith("route office -> ") and "revoked" not in out.stdout
    assert [k["state"] for k in keys_of(home, "lab")] == ["active"]


# --------------------------------------------------------------------------- store URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://", "names no server"),
        ("nats://127.0.0.1:99999", "port '99999' of '127.0.0.1:99999' is not a number"),
        ("nats://a:4222,,b:4222", "server 2 of the list is empty"),
        ("nats://::1:4222", "write an IPv6 server in brackets"),
        ("nats://bad_host!:4222", "is not a host name or IP address"),
        ("sqlite://chains.sqlite", "is not absolute"),
        ("sqlite:/tmp/chains.sqlite", "three slashes"),
        ("redis://x", "unknown store URL"),
    ],
)
def test_a_malformed_store_url_is_refused_at_once(tmp_path: Path, url: str, message: str) -> None:
    start = time.monotonic()
    proc = fails(tmp_path / "h", "--store", url, "network", "list", message=message)
    assert "unreachable" not in proc.stderr
    # Not a timing goal: a connect attempt would have waited its 5 s retry budget first.
    assert time.monotonic() - start < 5


def test_read_commands_refuse_a_missing_sqlite_store_and_create_it_nowhere(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "chians.sqlite"
    for args in (("network", "list"), ("network", "show", "x"), ("key", "list", "x"),
                 ("route", "list", "x"), ("log", "x")):  # fmt: skip
        fails(tmp_path / "h", "--store", f"sqlite://{missing}", *args,
              message=f"no store at {missing}: run `atenet init` or check --store")  # fmt: skip
        assert not missing.exists()
    # The default store of a fresh home is no exception.
    fails(tmp_path / "fresh", "network", "list", message="no store at")


def test_network_create_may_create_a_new_sqlite_store(home: Path, tmp_path: Path) -> None:
    store = tmp_path / "new" / "other.sqlite"
    run(home, "--store", f"sqlite://{store}", "network", "create", "elsewhere")
    assert store.exists()
    listed = json.loads(
        run(home, "--store", f"sqlite://{store}", "network", "list", "--json").stdout
    )
    assert [n["name"] for n in listed] == ["elsewhere"]


# --------------------------------------------------------------------------- CIDRs and names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cidr", "8.8.8.0/24"), "8.8.8.0/24 is public IPv4 space"),
        (("--cidr", "10.0.0.0/8"), "10.0.0.0/8 is too large: a network is at most a /16"),
        (("--cidr", "172.16.0.0/15"), "is too large"),
        (("--cidr", "10.20.30.128/25"), "overlaps your network 'office' (10.20.30.0/24)"),
        (("--cidr", "10.20.0.0/16"), "overlaps your network 'office'"),
        (("--cidr", "127.0.0.0/24"), "cannot be used"),
        (("--cidr6", "2001:db8:1:2::/64"), "is not unique-local IPv6"),
        (("--cidr6", "fe80::/64"), "cannot be used"),
    ],
)
def test_cidr_policy(home: Path, args: tuple[str, ...], message: str) -> None:
    fails(home, "network", "create", "lab", *args, message=message)


def test_force_accepts_public_space_large_prefixes_and_global_ipv6(home: Path) -> None:
    fails(home, "network", "create", "lab", "--cidr", "10.20.30.0/24", "--force",
          message="overlaps")  # fmt: skip
    out = run(home, "network", "create", "lab", "--cidr", "198.51.100.0/24",
              "--cidr6", "2001:db8:1:2::/64", "--force", "--json").stdout  # fmt: skip
    assert (json.loads(out)["cidr"], json.loads(out)["cidr6"]) == (
        "198.51.100.0/24", "2001:db8:1:2::/64",
    )  # fmt: skip
    run(home, "network", "create", "big", "--cidr", "172.16.0.0/12", "--force")
    run(home, "network", "create", "cgnat", "--cidr", "100.64.5.0/24")
    run(home, "network", "create", "home", "--cidr", "192.168.7.0/24")


def test_random_cidrs_avoid_the_owners_networks(home: Path) -> None:
    for i in range(4):
        run(home, "network", "create", f"n{i}")
    import ipaddress

    nets = [
        ipaddress.ip_network(n["cidr"])
        for n in json.loads(run(home, "network", "list", "--json").stdout)
    ]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ('x"}\nevil 1', "printable"),
        ("tab\there", "printable"),
        ("zero\u200bwidth", "printable"),
        ("x" * 65, "1 to 64 characters"),
        (" padded", "must not start or end with a space"),
    ],
)
def test_network_names_are_printable_and_bounded(home: Path, name: str, message: str) -> None:
    fails(home, "network", "create", name, message=message)
    fails(home, "network", "set", "office", "--name", name, message=message)


# --------------------------------------------------------------------------- network set


def test_network_set_changes_settings_live_and_show_reports_them(home: Path) -> None:
    run(home, "network", "create", "lab")
    dns = ("--dns", "1.1.1.1", "--dns", "2606:4700:4700::1111")
    out = run(home, "network", "set", "office", "--name", "hq", "--mtu", "1280", *dns,
              "--internet", "on").stdout  # fmt: skip
    assert out.startswith("network hq: ")
    shown = json.loads(run(home, "network", "show", "hq", "--json").stdout)
    assert (shown["name"], shown["mtu"], shown["cidr"]) == ("hq", 1280, "10.20.30.0/24")
    assert shown["dns"] == ["1.1.1.1", "2606:4700:4700::1111"] and shown["internet"] is True
    text = run(home, "network", "show", "hq").stdout
    assert "mtu      1280" in text and "dns      1.1.1.1 2606:4700:4700::1111" in text
    assert "internet on\n" in text
    fails(home, "network", "show", "office", message="unknown network 'office'")

    same = json.loads(run(home, "network", "set", "hq", "--mtu", "1280", "--json").stdout)
    assert same["changed"] == {}
    fails(home, "network", "set", "hq", "--name", "lab", message="already have a network named")
    fails(home, "network", "set", "hq", "--dns", "dns.example", message="not an IPv4 or IPv6")
    usage = run(home, "network", "set", "hq", ok=False)
    assert usage.returncode == 2 and "nothing to change" in usage.stderr
    log = json.loads(run(home, "log", "hq", "--json").stdout)
    assert [e["kind"] for e in log].count("settings") == 2  # create + one set


def test_internet_and_nat_private_are_off_until_the_owner_turns_them_on(home: Path) -> None:
    shown = json.loads(run(home, "network", "show", "office", "--json").stdout)
    assert (shown["internet"], shown["nat_private"]) == (False, False)
    assert "internet off\n" in run(home, "network", "show", "office").stdout
    out = json.loads(
        run(home, "network", "set", "office", "--internet", "on", "--nat-private", "on",
            "--json").stdout
    )  # fmt: skip
    assert out["changed"] == {"internet": True, "nat_private": True}
    assert "internet on, private ranges too" in run(home, "network", "show", "office").stdout
    out = json.loads(run(home, "network", "set", "office", "--nat-private", "off", "--json").stdout)
    assert out["changed"] == {"nat_private": False}
    shown = json.loads(run(home, "network", "show", "office", "--json").stdout)
    assert (shown["internet"], shown["nat_private"]) == (True, False)
    bad = run(home, "network", "set", "office", "--nat-private", "yes", ok=False)
    assert bad.returncode == 2 and "'yes' is not one of 'on', 'off'" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- --json, start-up


def test_network_delete_json(home: Path) -> None:
    network_id = json.loads(run(home, "network", "show", "office", "--json").stdout)["id"]
    out = json.loads(run(home, "network", "delete", "office", "--yes", "--json").stdout)
    assert out == {"id": network_id, "name": "office", "deleted": True}


def test_importing_tok_loads_no_heavy_module() -> None:
    """`tok --help` stays fast because nothing heavy is imported before a command runs."""
    heavy = ["nats", "aiohttp", "rich", "cryptography", "asyncio", "atenet.chain.state"]
    code = f"import sys, atenet.cli.tok; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_network_list_verifies_every_event_of_a_sqlite_store(home: Path) -> None:
    """`network list` replays a local store without asyncio; it still verifies each event."""
    import sqlite3

    run(home, "key", "export", "office", "--node", "192.0.2.1:4799")
    with sqlite3.connect(home / "data" / "chains.sqlite") as conn:
        (blob,) = conn.execute("SELECT blob FROM events WHERE seq = 3").fetchone()
        damaged = bytearray(blob)
        damaged[-10] ^= 0xFF
        conn.execute("UPDATE events SET blob = ? WHERE seq = 3", (bytes(damaged),))
    fails(home, "network", "list", message="tampered: event 3: bad signature")


def test_network_list_and_set_work_the_same_on_a_nats_store(tmp_path: Path, nats_cluster) -> None:
    home = tmp_path / "home"
    store = ("--store", nats_cluster.url)
    run(home, *store, "init", prog="atenet")
    run(home, *store, "network", "create", "office", "--cidr", "10.20.30.0/24")
    run(home, *store, "network", "set", "office", "--mtu", "1300")
    listed = json.loads(run(home, *store, "network", "list", "--json").stdout)
    assert [(n["name"], n["cidr"], n["mtu"]) for n in listed] == [("office", "10.20.30.0/24", 1300)]
    assert "office" in run(home, *store, "network", "list").stdout


# --------------------------------------------------------------------------- leases


def append_leases(home: Path, network: str, leases: list[dict]) -> str:
    """Append ``leases`` as lease events signed by ``home``'s node (its certified key), the way
    a node's DHCP server records a binding, and read as the node does (authority key)."""
    network_id = json.loads(run(home, "network", "show", network, "--json").stdout)["id"]
    code = f"""
import asyncio
from atenet.chain.event import Kind
from atenet.chain.log import Chain, Signer
from atenet.chain.sqlite_store import SqliteStore
from atenet.deployment import load_authority, load_node_key

async def main():
    store = SqliteStore("sqlite://{home / "data" / "chains.sqlite"}")
    await store.connect()
    try:
        node = load_node_key()
        chain = Chain(store, bytes.fromhex({network_id!r}), [load_authority().box])
        await chain.load()
        for payload in {leases!r}:
            await chain.append(Kind.LEASE, {{"node": node.node_id, **payload}},
                               Signer(node.sign, node.cert))
    finally:
        await store.close()
    print(node.node_id)

asyncio.run(main())
"""
    env = os.environ | {"ATENET_HOME": str(home)}
    env.pop("ATENET_STORE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, timeout=60, capture_output=True,
        text=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_lease_list_shows_the_bindings_that_won(home: Path) -> None:
    assert run(home, "lease", "list", "office").stdout.startswith("no leases on office")
    assert json.loads(run(home, "lease", "list", "office", "--json").stdout) == []
    later = time.time() + 86400
    m1, m2, m3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
    node_id = append_leases(home, "office", [
        {"mac": m1, "ip": "10.20.30.40", "host": "laptop", "expires": later},
        {"mac": m2, "ip": "10.20.30.40", "host": "", "expires": later},  # lost: m1 holds it
        {"mac": m2, "ip": "10.20.30.9", "host": "", "expires": later},
        {"mac": m3, "ip": "10.20.30.200", "host": "printer", "expires": time.time() - 5},
    ])  # fmt: skip
    leases = json.loads(run(home, "lease", "list", "office", "--json").stdout)
    assert [(x["ip"], x["mac"], x["host"], x["expired"]) for x in leases] == [
        ("10.20.30.9", m2, "", False),
        ("10.20.30.40", m1, "laptop", False),
        ("10.20.30.200", m3, "printer", True),
    ]  # fmt: skip
    assert [x["seq"] for x in leases] == [5, 3, 6]  # the four lease events are seq 3 to 6
    assert all(x["bound_at"] == pytest.approx(time.time(), abs=60) for x in leases)
    assert leases[1]["expires"] == pytest.approx(later, abs=0.01)
    assert {x["node"] for x in leases} == {node_id}

    text = run(home, "lease", "list", "office").stdout.splitlines()
    assert text[0].split() == ["IP", "MAC", "HOST", "NODE", "BOUND", "EXPIRES"]
    assert text[1].split()[:3] == ["10.20.30.9", m2, "-"]
    assert text[2].split()[:3] == ["10.20.30.40", m1, "laptop"]
    assert text[3].endswith("(expired)") and "(expired)" not in text[2]
    fails(home, "lease", "list", "nowhere", message="unknown network 'nowhere'")


def test_route_add_after_its_key_was_revoked_replaces_the_dead_route(home: Path) -> None:
    run(home, "network", "create", "lab")
    run(home, "route", "add", "office", "lab")
    run(home, "key", "revoke", "lab", "1")  # the key office -> lab travels with
    again = json.loads(run(home, "route", "add", "office", "lab", "--json").stdout)
    assert [(r["name"], r["added"]) for r in again["routes"]] == [("lab", True), ("office", False)]
    assert [k["state"] for k in keys_of(home, "lab")] == ["revoked", "active"]
    (route,) = json.loads(run(home, "route", "list", "office", "--json").stdout)
    assert route["key_id"] == 2
