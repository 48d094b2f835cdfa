"""The host-side `tok` commands: connect, disconnect, status, ping (docs/connect.md).

Registered on the `tok` group by cli/tok.py. Kept import-light (click and the runtime-dir helper
only): the data plane is imported inside `tok connect`'s body.

Exit codes of `tok connect` (stable, documented in docs/connect.md): 0 stopped (Ctrl-C,
SIGTERM, `tok disconnect`), 1 error (bad token, no TAP, ...), 2 usage error, 3 no node answered
when connecting (``--wait``), 4 connected and then no node answered for ``--give-up`` seconds.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from atenet.cli.common import fail, json_option, print_json, run_loop, setup_logging
from atenet.client import runtime
from atenet.errors import AtenetError

EXIT_ERROR = 1
EXIT_NO_ANSWER = 3  # same values as atenet.client.connect (not imported here: it is heavy)
EXIT_LOST = 4

ARGV_WARNING = (
    "tok: warning: a token on the command line can be read by every local user (ps, "
    "/proc/PID/cmdline); use --token-file PATH, --token-file - (stdin) or ATENET_TOKEN"
)

MAX_TOKEN_FILE = 64 * 1024


def warn(message: str) -> None:
    click.echo(f"tok: warning: {message}", err=True)


# --------------------------------------------------------------------------- the token


def read_token(ctx: click.Context, token_text: str | None, token_file: str | None) -> str:
    """The token from --token-file (a path, or ``-`` for stdin), TOKEN, or $ATENET_TOKEN.

    A token in argv is accepted (it always was) but warned about (see :func:`in_argv`).
    """
    from_argv = in_argv(ctx)
    if token_file is not None:
        if from_argv:
            raise click.UsageError("give the token once: TOKEN or --token-file, not both")
        return read_token_file(token_file)
    if not token_text:
        raise click.UsageError(
            "no token: give --token-file PATH (or --token-file - to read it from stdin), or set "
            "ATENET_TOKEN"
        )
    return token_text.strip()


def in_argv(ctx: click.Context) -> bool:
    """The token came as TOKEN on the command line: every local user can read a process's
    command line, and the token is the key to the network (issue 9, item 9)."""
    return ctx.get_parameter_source("token_text") == ParameterSource.COMMANDLINE


def read_token_file(path: str) -> str:
    """The token in ``path`` (``-``: stdin); warns when the file is readable by others."""
    try:
        if path == "-":
            text = sys.stdin.read(MAX_TOKEN_FILE)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                text = f.read(MAX_TOKEN_FILE)
            if mode & 0o077:
                warn(f"token file {path} is readable by others (mode {mode:04o}): chmod 600 it")
    except OSError as exc:
        raise AtenetError(f"cannot read the token file {path}: {exc.strerror}") from None
    token = text.strip()
    if not token:
        where = "stdin" if path == "-" else f"the token file {path}"
        raise AtenetError(f"no token in {where}")
    return token


# --------------------------------------------------------------------------- connect


@click.command()
@click.argument("token_text", metavar="[TOKEN]", required=False, envvar="ATENET_TOKEN")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="PATH",
    help="Read the token from PATH ('-': stdin). Preferred: a TOKEN argument is visible to "
    "every local user. Env: ATENET_TOKEN.",
)
@click.option("--dev", default="atenet0", show_default=True, help="TAP device name.")
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for a node to answer when connecting (exit code 3).",
)
@click.option(
    "--give-up",
    type=click.FloatRange(min=15),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Once connected: exit (code 4) after this long without an answer from any node.",
)
@click.option(
    "--persist",
    is_flag=True,
    help="Never give up: retry the token's nodes until one answers (at start and later).",
)
@click.option(
    "--no-offload",
    is_flag=True,
    help="Open the TAP without TSO/checksum offload (one frame per packet, as older versions).",
)
@click.option(
    "--address",
    type=click.Choice(["dhcp", "static", "none"]),
    default="dhcp",
    show_default=True,
    help="IPv4 address: from the network's gateway by DHCP (the hashed address when no "
    "gateway answers), the hashed static address, or none (for a DHCP client of your own).",
)
@click.option("--static", is_flag=True, help="Short for --address static.")
@click.option(
    "--dhcp-wait",
    type=click.FloatRange(min=1),
    default=7.0,
    show_default=True,
    metavar="SECONDS",
    help="With DHCP: use the hashed address when no offer came in this long.",
)
@click.option(
    "--release",
    is_flag=True,
    help="With DHCP: give the lease back on a clean stop (one chain event). Without it the "
    "address stays this host's (24 h) and reconnecting writes nothing.",
)
@click.option("--daemon", is_flag=True, help="Go to the background once connected.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    help="With --daemon: log here (default: tok-connect-DEV.log in the runtime dir, or the "
    "journal under systemd).",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON Lines on stdout.")
@click.option("--detached", is_flag=True, hidden=True)  # the --daemon child
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.pass_context
def connect(
    ctx: click.Context,
    token_text: str | None,
    token_file: str | None,
    dev: str,
    wait: float,
    give_up: float,
    persist: bool,
    no_offload: bool,
    address: str,
    static: bool,
    dhcp_wait: float,
    release: bool,
    daemon: bool,
    log_file: str | None,
    as_json: bool,
    detached: bool,
    verbose: int,
) -> None:
    """Join this Linux host to a network with an access token.

    \b
    The token comes from --token-file PATH (or - for stdin) or $ATENET_TOKEN:
      sudo tok connect --token-file ~/office.token
      tok key export office | sudo tok connect --token-file -

    Creates a TAP device (needs root), gives it this host's stable MAC, an IPv4 address from
    the network's gateway by DHCP (--static: the one derived from the MAC, also used when no
    gateway answers) and the IPv6 address derived from the MAC, and carries its frames,
    encrypted, to a node named in the token. Routes go only to the network and to networks it
    is routed to, through the gateway; never a default route.
    When the node stops answering it says so on stderr, tries the token's other nodes, and
    exits (code 4) after --give-up seconds without any answer, unless --persist. Runs in the
    foreground until Ctrl-C (or `tok disconnect`); the TAP device is removed on exit.

    Exit codes: 0 stopped, 1 error, 2 usage, 3 no node answered (--wait), 4 connection lost
    (--give-up). See docs/connect.md.
    """
    setup_logging(verbose)
    if static:
        if ctx.get_parameter_source("address") == ParameterSource.COMMANDLINE and address != (
            "static"
        ):
            raise click.UsageError(f"--static and --address {address} contradict each other")
        address = "static"
    try:
        text = read_token(ctx, token_text, token_file)
    except AtenetError as exc:
        fail(str(exc))
        return
    from atenet.overlay.token import AccessToken

    try:
        token = AccessToken.decode(text)
    except AtenetError as exc:
        fail(str(exc))
        return
    if in_argv(ctx):  # only a real token is worth the warning (a typo gets its one-line error)
        click.echo(ARGV_WARNING, err=True)
    limit = None if persist else give_up
    if daemon:
        extra = ["--address", address, "--dhcp-wait", str(dhcp_wait)]
        extra += ["--release"] if release else []
        _daemonize(text, dev, wait, limit, log_file, no_offload, as_json, verbose, extra)
        return
    from dataclasses import asdict

    from atenet.client.connect import Connected, Connection

    def emit(kind: str, fields: dict[str, Any]) -> None:
        if as_json:
            event = {"event": kind, "time": round(time.time(), 3), **fields}
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
            sys.stdout.flush()
        if kind == "connected" and detached:
            # The parent read this line and went away: nothing more goes to its pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def announce(info: Connected) -> None:
        if not as_json:
            click.echo(
                f"connected to {info.network or token.network_hex} via node {info.node}: "
                f"{info.dev} {info.ipv4 or '-'} {info.ipv6} mac {info.mac} mtu {info.mtu} "
                f"({address_text(asdict(info))})",
            )

    try:
        state_dir = runtime.runtime_dir()
    except AtenetError as exc:
        fail(str(exc))
        return
    conn = Connection(
        token,
        dev,
        offload=not no_offload,
        give_up=limit,
        on_event=emit,
        state_dir=state_dir,
        address=address,
        dhcp_wait=dhcp_wait,
        release=release,
    )

    async def body() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, conn.stop)
        await conn.run(wait, announce)

    try:
        run_loop(body())
    except AtenetError as exc:
        code = getattr(exc, "exit_code", EXIT_ERROR)
        reason = {EXIT_NO_ANSWER: "no_answer", EXIT_LOST: "gave_up"}.get(code, "error")
        if as_json and not (detached and conn.info is not None):
            emit("exit", {"reason": reason, "code": code, "error": str(exc)})
        fail(str(exc), code)
    except KeyboardInterrupt:  # before the signal handlers were in place
        sys.exit(130)
    if as_json:
        emit("exit", {"reason": "stopped", "code": 0})


def _journal_stderr() -> bool:
    """stderr is the systemd journal (JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def _daemonize(
    token_text: str,
    dev: str,
    wait: float,
    give_up: float | None,
    log_file: str | None,
    no_offload: bool,
    as_json: bool,
    verbose: int,
    extra: list[str],
) -> None:
    """Start `tok connect` again in its own session; return once it has connected.

    The token goes to the child through its environment (readable only by its user), never
    its command line. Its log is opened here without following a symlink (0600): in the
    runtime dir, or the journal when we run under systemd."""
    journal = log_file is None and _journal_stderr()
    if journal:
        log_fd, where, offset = os.dup(sys.stderr.fileno()), "the journal", None
    else:
        try:
            path = Path(log_file) if log_file else runtime.log_path(dev)
            log_fd = runtime.open_log(path)
        except AtenetError as exc:
            fail(str(exc))
            return
        where, offset = str(path), os.fstat(log_fd).st_size
    argv = [sys.executable, "-m", "atenet.cli.tok", "connect", "--dev", dev, "--wait", str(wait)]
    argv += ["--persist"] if give_up is None else ["--give-up", str(give_up)]
    argv += ["--json", "--detached"] + (["--no-offload"] if no_offload else [])
    argv += ["-v"] * verbose + extra
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM" or journal}
    env["ATENET_TOKEN"] = token_text
    try:
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    assert child.stdout is not None
    line = child.stdout.readline().decode(errors="replace").strip()
    child.stdout.close()
    try:
        event = json.loads(line) if line else {}
    except ValueError:
        event = {}
    if event.get("event") != "connected":
        code = child.wait()
        error = _last_error(Path(where), offset) if offset is not None else ""
        fail(f"{error or 'tok connect did not connect'} (log: {where})", code or EXIT_ERROR)
        return
    if as_json:
        print_json({**event, "pid": child.pid, "log": where})
        return
    click.echo(
        f"connected to {event['network'] or event['network_id']} via node {event['node']}: "
        f"{event['dev']} {event['ipv4'] or '-'} {event['ipv6']} mac {event['mac']} "
        f"mtu {event['mtu']} ({address_text(event)}) (pid {child.pid}, log {where}; stop with "
        f"`tok disconnect {event['dev']}`)"
    )


def _last_error(path: Path, offset: int) -> str:
    """The child's one-line error from what it appended to the log."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            lines = f.read(1 << 16).decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        prog, sep, message = line.partition(": error: ")
        if sep and " " not in prog.strip().removeprefix("python -m "):
            return message
    return ""


def address_text(info: dict[str, Any], now: float | None = None) -> str:
    """Where the IPv4 address came from, for the `connected` line and `tok status`:
    ``dhcp from 10.1.0.1, lease until 14:02:11``, ``static``, ``static: no DHCP offer in 7 s``,
    ``no IPv4: --address none``."""
    source = info.get("address_source") or "static"
    lease = info.get("lease")
    if source == "dhcp" and isinstance(lease, dict):
        until = time.strftime("%H:%M:%S", time.localtime(float(lease.get("expires") or 0)))
        return f"dhcp from {lease.get('server')}, lease until {until}"
    if source == "dhcp":
        return "dhcp: no lease now, asking the gateway"
    if source == "none":
        return "no IPv4: --address none"
    note = info.get("address_note")
    return f"static: {note}" if note else "static"


# --------------------------------------------------------------------------- disconnect


def _pick(conns: list[dict[str, Any]], dev: str | None) -> dict[str, Any]:
    where = runtime.runtime_dir(create=False)
    if dev is not None:
        for state in conns:
            if state.get("dev") == dev:
                return state
        fail(f"no tok connect is running for {dev} (no state in {where}){_sudo_hint()}")
    if not conns:
        fail(f"no tok connect is running on this host (no state in {where}){_sudo_hint()}")
    if len(conns) > 1:
        devs = ", ".join(str(c.get("dev")) for c in conns)
        raise click.UsageError(f"several connections ({devs}): give the device")
    return conns[0]


def _sudo_hint() -> str:
    if os.geteuid() != 0 and "ATENET_HOME" not in os.environ:
        return "; connections started with sudo are seen with sudo"
    return ""


def _dev_present(state: dict[str, Any]) -> bool:
    """The connection's TAP still exists (only checkable from its own network namespace)."""
    if state.get("netns") != runtime.netns_id():
        return False
    return Path("/sys/class/net", str(state.get("dev"))).exists()


@click.command()
@click.argument("dev", required=False)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds to wait for a clean exit before killing it (SIGKILL).",
)
@json_option
def disconnect(dev: str | None, timeout: float, as_json: bool) -> None:
    """Stop the `tok connect` of device DEV (default: the only one), e.g. one started with
    --daemon; returns once its TAP device is gone."""
    state = _pick(runtime.connections(), dev)
    pid = int(state["pid"])
    name = state.get("dev", "?")
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        fail(f"cannot stop pid {pid} ({name}): it is not yours; run `sudo tok disconnect`")
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    killed = False
    while runtime.pid_alive(pid) or _dev_present(state):
        if time.monotonic() > deadline:
            if killed:
                fail(f"tok connect (pid {pid}) did not stop; its TAP {name} is still there")
            os.kill(pid, signal.SIGKILL)  # the TAP goes with its fd
            killed = True
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    runtime.remove_state(runtime.state_path(str(name), runtime.runtime_dir(create=False)), pid)
    if as_json:
        print_json({"dev": name, "network": state.get("network"), "pid": pid, "killed": killed})
        return
    how = " (killed: it did not stop in time)" if killed else ""
    click.echo(f"disconnected {name} from {state.get('network') or state.get('network_id')}{how}")


# --------------------------------------------------------------------------- status


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def connection_view(state: dict[str, Any], now: float) -> dict[str, Any]:
    """A state file as `tok status --json` shows it: plus how long ago the node answered."""
    ago = runtime.answered_ago(state, now)
    return {
        **{k: v for k, v in state.items() if k != "version"},
        "answered_ago": round(ago, 1) if ago is not None else None,
        "answering": state.get("state") == "answering",
    }


def _print_connection(c: dict[str, Any]) -> None:
    net = c.get("network") or "?"
    click.echo(
        f"{c.get('dev')}: network {net} ({str(c.get('network_id', ''))[:12]}) "
        f"{c.get('ipv4') or '-'} {c.get('ipv6')} mac {c.get('mac')} ({address_text(c)})"
    )
    rtt = f", rtt {c['rtt_ms']:.2f} ms" if c.get("rtt_ms") is not None else ""
    if c["answering"]:
        health = f"answering (last answer {_ago(c['answered_ago'])}{rtt})"
    else:
        then = "retrying (--persist)" if c.get("give_up") is None else (
            f"gives up after {c['give_up']:g} s"
        )  # fmt: skip
        health = f"NOT answering (last answer {_ago(c['answered_ago'])}; {then})"
    fast = f", fast path {c['fastpath']}" if c.get("fastpath") else ""
    fast += f", engine {c['engine']}" if c.get("engine") else ""
    click.echo(f"  node {c.get('node')}: {health}  [pid {c.get('pid')}{fast}]")


def _node_status(url: str) -> tuple[dict[str, Any] | None, str]:
    import urllib.error
    import urllib.request

    from atenet.cli.common import operator_headers

    # The operator token when this host has it (as `tok fdb`): the node's operator-only
    # fields (ports' addresses, the learning switch's counters) show then.
    request = urllib.request.Request(url, headers=operator_headers(url))
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"cannot read {url}: {exc}"


node_url_option = click.option(
    "--node",
    "node_url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="ATENET_NODE",
    help="The local node's HTTP address (`atenet run --http-port`).",
)


@click.command()
@node_url_option
@json_option
@click.pass_context
def status(ctx: click.Context, node_url: str, as_json: bool) -> None:
    """This host's networks (from its running `tok connect`s) and the local node's counters.

    \b
    Client side: each network this host is on, its device and addresses, the node it uses,
    whether that node answers and its round-trip time.
    Node side (when `atenet run` runs here): networks, ports, peers, packets dropped by reason.

    A host whose packets the node drops gets no answer at all (no oracle), so the node side is
    where to look when `tok connect` says no node answered: `revoked_key`, `unknown_key`,
    `auth`, `replay`, `unknown_network` say why.
    """
    now = time.time()
    conns = [connection_view(c, now) for c in runtime.connections()]
    url = node_url.rstrip("/") + "/api/status"
    data, error = _node_status(url)
    explicit = ctx.get_parameter_source("node_url") != ParameterSource.DEFAULT
    if data is None and (explicit or not conns):
        also = "" if conns else " (and no tok connect runs on this host)"
        fail(f"{error}; is `atenet run` running with that --http-port?{also}")
        return
    if as_json:
        out: dict[str, Any] = dict(data) if data is not None else {"node": None}
        if data is None:
            out["node_error"] = error
        out["connections"] = conns
        print_json(out)
        return
    for c in conns:
        _print_connection(c)
    if data is None:
        click.echo(f"no node on this host ({error})")
        return
    if conns:
        click.echo()
    _print_node(data)


def _groups_text(mcast: dict[str, Any]) -> str:
    if not mcast:
        return ""
    if not mcast.get("snooping"):
        return "  multicast snooping off"
    return f"  multicast groups {mcast.get('groups', 0)}"


def _print_node(data: dict[str, Any]) -> None:
    click.echo(f"node {data['node']} at {data['endpoint']}, {data['datagrams']} datagrams in")
    if data.get("fastpath"):
        click.echo(f"  fast path {data['fastpath']}")
    if data["drops"]:
        click.echo("  dropped before any network: " + _drops(data["drops"]))
    for net in data["networks"]:
        click.echo(
            f"network {net['name']} ({net['id'][:12]}) {net['cidr']} "
            f"member={'yes' if net['member'] else 'no'} peers={','.join(net['peers']) or '-'}"
        )
        click.echo(
            f"  to peers {net['frames_to_peers']}  from peers {net['frames_from_peers']}"
            f"  MACs learned {net.get('fdb', 0)}" + _groups_text(net.get("mcast", {}))
        )
        if counters := net.get("fdb_counters"):
            click.echo(
                f"  MAC table {counters['entries']}/{counters['max']} (port {counters['port_max']},"
                f" peer {counters.get('peer_max', '-')}, age {counters['age']} s)"
                f"  moves {counters['moves']}  full {counters['full']}"
                f"  port_full {counters['port_full']}  peer_full {counters.get('peer_full', 0)}"
                f"  mac_theft {counters.get('mac_theft', 0)}"
            )
        if net["drops"]:
            click.echo("  dropped: " + _drops(net["drops"]))
        if line := _nat_line(net.get("nat") or {}):
            click.echo(line)
        for p in net["ports"]:
            click.echo(
                f"  port {_port_name(p)}: in {p['frames_in']} out {p['frames_out']} "
                f"drops {p['drops']} MACs {p.get('learned', 0)}"
                + (" mirror" if p.get("mirror") else "")
            )


def _nat_line(nat: dict[str, Any]) -> str:
    """``  internet (NAT) on: flows 3 (tcp 2, udp 1, icmp 0), up 1.2 kB, down 3 MB, refused
    2 (refused_metadata 1, …)`` — empty while the network has no internet access here."""
    if not nat.get("internet"):
        return ""
    refused = {k: v for k, v in nat.items() if k.startswith("refused_")}
    text = (
        f"  internet (NAT) on: flows {nat.get('flows', 0)} (tcp {nat.get('flows_tcp', 0)},"
        f" udp {nat.get('flows_udp', 0)}, icmp {nat.get('flows_icmp', 0)}),"
        f" bytes up {nat.get('bytes_up', 0)} down {nat.get('bytes_down', 0)},"
        f" refused {nat.get('refused', 0)}"
    )
    return text + (f" ({_drops(refused)})" if refused else "")


def _port_name(port: dict[str, Any]) -> str:
    """``udp:IP:port/k2 "laptop" (host h1) MAC IPv4 IPv6``: what the node knows of it."""
    text = str(port["name"])
    if port.get("label"):
        text += f' "{port["label"]}"'
    if port.get("host"):
        text += f" (host {port['host']})"
    extra = [str(port[k]) for k in ("mac", "ipv4", "ipv6") if port.get(k)]
    return " ".join([text, *extra])


def _drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()))


# --------------------------------------------------------------------------- ping

REPLY = re.compile(r"from ([^:\s]+).*icmp_seq=(\d+)(?: ttl=(\d+))? time=([\d.]+) ms")


def _route_for(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, dev: str | None) -> dict:
    conns = runtime.connections()
    if dev is not None:
        for c in conns:
            if c.get("dev") == dev:
                return c
        return {"dev": dev}  # a device without a state file: ping it anyway, no node hop
    for c in conns:
        for key in ("ipv4", "ipv6"):
            try:
                iface = ipaddress.ip_interface(str(c.get(key)))
            except ValueError:
                continue
            if iface.version == addr.version and addr in iface.network:
                return c
    if len(conns) == 1:
        return conns[0]
    if not conns:
        fail(f"this host is not connected to any network{_sudo_hint()}", 3)
    fail(f"{addr} is in none of this host's networks: give the device with --dev", 3)
    raise AssertionError


def resolve_name(
    name: str, conns: list[dict[str, Any]], dev: str | None, store_url: str | None
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
    """A host name (the name its client sent, or its key's label) on one of this host's networks,
    looked up as `tok hosts` does: in the member nodes' heartbeats, with the network owner's
    key. Returns its address and the device of the network it is on."""
    from atenet.deployment import owner_key_path

    if not owner_key_path().exists():
        raise AtenetError(
            f"{name!r} is not an IP address, and host names are looked up with the network "
            "owner's key (as `tok hosts NETWORK` does), which this user does not have: give "
            "the host's IP address"
        )

    async def lookup() -> list[tuple[str, str, str]]:
        from atenet.chain.keys import Identity
        from atenet.cli.common import connected_store
        from atenet.cli.tok_hosts import collect_hosts
        from atenet.errors import NotAllowed, NotFound
        from atenet.owner import Owner

        store = await connected_store(store_url)
        found: list[tuple[str, str, str]] = []
        try:
            owner = Owner(store, Identity.load(owner_key_path()))
            for conn in conns:
                if dev is not None and conn.get("dev") != dev:
                    continue
                try:
                    chain = await owner.find(str(conn.get("network_id")))
                except (NotAllowed, NotFound):
                    continue
                diagnostics = await chain.load_latest()
                hosts, _ = collect_hosts(diagnostics, set(chain.state.members), time.time())
                for h in hosts:
                    if name in (h["host"], h["label"]) and (h["ipv4"] or h["ipv6"]):
                        found.append((h["ipv4"] or h["ipv6"], str(conn.get("dev")), h["label"]))
        finally:
            await store.close()
        return found

    found = sorted(set(run_loop(lookup())))
    if not found:
        raise AtenetError(
            f"no host named {name!r} on this host's networks (see `tok hosts NETWORK`): give "
            "its IP address"
        )
    if len({addr for addr, _, _ in found}) > 1:
        which = ", ".join(f"{addr} ({label or '-'})" for addr, _, label in found)
        raise AtenetError(f"several hosts are named {name!r}: {which}; give the IP address")
    addr, device, _ = found[0]
    return ipaddress.ip_address(addr.split("/")[0]), device


@click.command()
@click.argument("host")
@click.option("-c", "--count", type=click.IntRange(1, 10000), default=4, show_default=True)
@click.option(
    "-i",
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between echo requests.",
)
@click.option(
    "-W",
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the last reply.",
)
@click.option("--dev", help="The atenet device to ping through (default: the host's network).")
@click.option(
    "--store",
    "store_url",
    envvar="ATENET_STORE",
    metavar="URL",
    help="With a host name: the chain store to look it up in (as `tok hosts`).",
)
@click.option(
    "--mio",
    is_flag=True,
    help="Ping from a mio session (no TAP, no root): the token from --token-file or "
    "ATENET_TOKEN, the node from --node (see `tok nc --help`).",
)
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="PATH", help="With --mio.")
@click.option("--node", "mio_node", envvar="ATENET_NODE", metavar="URL", help="With --mio.")
@json_option
@click.pass_context
def ping(
    ctx: click.Context,
    host: str,
    count: int,
    interval: float,
    timeout: float,
    dev: str | None,
    store_url: str | None,
    mio: bool,
    token_file: str | None,
    mio_node: str | None,
    as_json: bool,
) -> None:
    """Ping HOST through atenet: an IPv4 or IPv6 address in one of this host's networks, or a
    host's name or key label as `tok hosts` shows them (looked up with the owner's key).

    Runs the system ping bound to the atenet device (so it cannot take another path) and
    prints each reply's end-to-end time, with the first hop — this host to its node — from
    `tok connect`'s own control pings (every 5 s). With --json, one summary object.

    With --mio, the echo requests leave from a mio session's own address instead (no TAP or
    root needed; exit code 3 then means no session).

    Exit codes: 0 some reply, 1 no reply, 2 usage, 3 not connected.
    """
    if mio:
        from atenet.cli.tok_mio import mio_ping

        mio_ping(ctx, host, token_file, mio_node, count, interval, timeout, as_json)
        return
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            addr, dev = resolve_name(host, runtime.connections(), dev, store_url)
        except AtenetError as exc:
            fail(str(exc))
            return
    conn = _route_for(addr, dev)
    device = str(conn["dev"])
    node_rtt = conn.get("rtt_ms")
    argv = ["ping", f"-{addr.version}", "-n", "-c", str(count), "-i", f"{interval:g}"]
    argv += ["-W", f"{timeout:g}", "-I", device, str(addr)]
    if not as_json:
        hop = f", node {conn.get('node')} rtt {node_rtt:.2f} ms" if node_rtt is not None else ""
        net = f" (network {conn['network']}{hop})" if conn.get("network") else ""
        click.echo(f"PING {addr} via {device}{net}")
    replies: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_c_locale()
        )
    except OSError as exc:
        fail(f"cannot run ping: {exc.strerror}")
        return
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for line in proc.stdout:
            m = REPLY.search(line)
            if m is None:
                continue
            reply = {"seq": int(m[2]), "time_ms": float(m[4])}
            if m[3]:
                reply["ttl"] = int(m[3])
            replies.append(reply)
            if not as_json:
                click.echo(f"reply from {m[1]}: seq={m[2]} time={m[4]} ms")
        errors = [line.strip() for line in proc.stderr if line.strip()]
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
    times = [r["time_ms"] for r in replies]
    summary: dict[str, Any] = {
        "host": str(addr),
        "dev": device,
        "network": conn.get("network"),
        "node": conn.get("node"),
        "node_rtt_ms": node_rtt,
        "sent": count,
        "received": len(replies),
        "loss_pct": round(100 * (1 - len({r["seq"] for r in replies}) / count), 1),
        "min_ms": min(times) if times else None,
        "avg_ms": round(sum(times) / len(times), 3) if times else None,
        "max_ms": max(times) if times else None,
        "replies": replies,
    }
    if errors and not replies:
        summary["error"] = errors[-1]
    if as_json:
        print_json(summary)
    else:
        stats = (
            f"; end to end min/avg/max {summary['min_ms']}/{summary['avg_ms']}/"
            f"{summary['max_ms']} ms"
            if times
            else ""
        )
        hop = f"; node hop {node_rtt:.2f} ms" if node_rtt is not None else ""
        click.echo(
            f"--- {count} sent, {len(replies)} received, {summary['loss_pct']:g}% loss{stats}{hop}"
        )
        if errors and not replies:
            click.echo(f"tok: ping: {errors[-1]}", err=True)
    sys.exit(0 if replies else 1)


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


@click.command()
@click.argument("network", required=False)
@node_url_option
@json_option
def fdb(network: str | None, node_url: str, as_json: bool) -> None:
    """Where each host of NETWORK is, as a node's learning switch sees it: MAC → local port or
    peer node, IP → MAC from ARP / neighbour discovery snooping, and the multicast groups hosts
    joined (all networks the node serves when NETWORK is omitted; a name or an id prefix).

    Operator data: ask the node on its own host (loopback), or from a host holding its
    operator token (docs/learning.md)."""
    import urllib.error
    import urllib.request

    from atenet.cli.common import operator_headers

    url = node_url.rstrip("/") + "/api/fdb"
    request = urllib.request.Request(url, headers=operator_headers(url))
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        fail(f"{url} refused: HTTP {exc.code} (operator data: ask on the node's host)")
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        fail(f"cannot read {url}: {exc}; is `atenet run` running with that --http-port?")
        return
    nets = data["networks"]
    if network is not None:
        want = network.lower()
        nets = [n for n in nets if n["name"] == network or n["id"].startswith(want)]
        if not nets:
            served = ", ".join(n["name"] or n["id"][:12] for n in data["networks"]) or "none"
            fail(f"node {data['node']} does not serve {network!r} (it serves: {served})")
            return
    if as_json:
        print_json(nets)
        return
    for net in nets:
        click.echo(f"network {net['name']} ({net['id'][:12]}) on node {data['node']}")
        click.echo(f"  {len(net['macs'])} MACs")
        for m in net["macs"]:
            where = f"port {m['port']}" if "port" in m else f"node {m['node']}"
            click.echo(f"    {m['mac']}  {where}")
        click.echo(f"  {len(net['ips'])} addresses")
        for e in net["ips"]:
            click.echo(f"    {e['ip']:<40} {e['mac']}  {e['where']}  {e['age']:g} s ago")
        if not net.get("snooping", True):
            click.echo("  multicast snooping off: every multicast frame floods")
            continue
        click.echo(f"  {len(net.get('groups', []))} multicast groups")
        for g in net.get("groups", []):
            members = ", ".join(m["member"] for m in g["members"])
            click.echo(f"    {g['group']:<40} {members}")


COMMANDS = (connect, disconnect, status, ping, fdb)
