"""`tok nc` and `tok serve`: stdin/stdout over a mio TCP socket, no TAP and no root (docs/mio.md).

Both open a mio session (:mod:`atenet.mio.client`): the node runs the TCP/IP stack for this
process, as one port of the network. `tok nc [TOKEN] HOST PORT` is `nc HOST PORT`; `tok serve
[TOKEN] PORT` is `nc -l PORT`, or an echo server, or runs a command per connection. `tok ping
--mio` (cli/tok_client.py) pings from a session the same way.

Registered on the `tok` group by cli/tok.py; import-light at the top (click only), like the
other `tok` modules: asyncio and the client library load when a command runs.

Data goes to stdout, messages to stderr (one line each; with --json, JSON Lines on stderr).
Exit codes (stable): 0 done, 1 the connection failed (refused, reset, timed out, unreachable),
2 usage, 3 no mio session (node unreachable, key refused, node without /mio), 130 Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from atenet.cli.common import fail
from atenet.errors import AtenetError

if TYPE_CHECKING:
    import asyncio

    from atenet.mio.client import Network
    from atenet.overlay.token import AccessToken

EXIT_FAILED = 1
EXIT_NO_SESSION = 3
EXIT_INTERRUPTED = 130

DEFAULT_HTTP_PORT = 8080  # `atenet run --http-port`'s default
CHUNK = 64 * 1024
LINGER = 10.0
"""Seconds to wait, once both directions ended, for the node to report the TCP connection
closed (every byte and the FIN acknowledged) before the session goes (which resets it)."""


class Failed(AtenetError):
    """A one-line error with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code


# --------------------------------------------------------------------------- options


def token_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--token-file, --node and --name: what a mio command needs to open a session."""
    fn = click.option(
        "--node",
        "node_url",
        envvar="ATENET_NODE",
        metavar="URL",
        help="The node's HTTP address, e.g. http://10.0.0.1:8080 (env: ATENET_NODE). Default: "
        f"the first node the token names, on port {DEFAULT_HTTP_PORT} (on 127.0.0.1 when that "
        "node is this machine).",
    )(fn)
    fn = click.option(
        "--name",
        "port_name",
        metavar="NAME",
        help="The name the node shows for this session's port (`tok status`, the web page). "
        "Default: tok-nc, tok-serve-PORT.",
    )(fn)
    fn = click.option(
        "--token-file",
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help="Read the access token from PATH (preferred: a TOKEN argument is visible to every "
        "local user). Env: ATENET_TOKEN.",
    )(fn)
    return fn


def split_token(ctx: click.Context, args: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    """``[TOKEN] NAMES...``: the token (when given first) is taken off; the rest is returned.

    The token may also come from --token-file or $ATENET_TOKEN (see :func:`load_token`)."""
    if len(args) == len(names) + 1:
        ctx.meta["mio_token_argv"] = args[0]
        return list(args[1:])
    if len(args) == len(names):
        return list(args)
    want = " ".join(names)
    raise click.UsageError(f"expected [TOKEN] {want}, got {len(args)} argument(s)")


def load_token(ctx: click.Context, token_file: str | None) -> AccessToken:
    """The token from TOKEN, --token-file or $ATENET_TOKEN (one of them), decoded."""
    from atenet.cli.tok_client import ARGV_WARNING, read_token_file
    from atenet.overlay.token import AccessToken

    argv = ctx.meta.get("mio_token_argv")
    if argv is not None and token_file is not None:
        raise click.UsageError("give the token once: TOKEN or --token-file, not both")
    if token_file == "-":
        raise click.UsageError("--token-file - cannot be used here: stdin carries the data")
    if token_file is not None:
        text = read_token_file(token_file)
    elif argv is not None:
        text = argv
    else:
        text = os.environ.get("ATENET_TOKEN", "").strip()
        if not text:
            raise click.UsageError(
                "no token: give --token-file PATH, set ATENET_TOKEN, or put TOKEN first"
            )
    token = AccessToken.decode(text)
    if argv is not None:
        click.echo(ARGV_WARNING, err=True)
    return token


def token_and_urls(
    ctx: click.Context, token_file: str | None, node_url: str | None
) -> tuple[AccessToken, list[str]]:
    """:func:`load_token` then :func:`node_url_for`, or the one-line error and its exit code."""
    try:
        token = load_token(ctx, token_file)
        return token, node_url_for(token, node_url)
    except Failed as exc:
        fail(str(exc), exc.exit_code)
    except AtenetError as exc:
        fail(str(exc))
    raise AssertionError("fail() exits")


def node_url_for(token: AccessToken, node_url: str | None) -> list[str]:
    """Where to open the session, in order: --node; else the token's first node on the default
    HTTP port — preceded by this machine's loopback when that node is this machine (a node's
    HTTP server listens on 127.0.0.1 unless told otherwise)."""
    if node_url:
        if "://" not in node_url:
            node_url = f"http://{node_url}"
        return [node_url.rstrip("/")]
    if not token.endpoints:
        raise Failed("the token names no node: give the node's HTTP address with --node URL", 2)
    host = token.endpoints[0].rsplit(":", 1)[0]
    urls = [f"http://{host}:{DEFAULT_HTTP_PORT}"]
    loopback = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"
    if loopback not in urls and _is_local(host.strip("[]")):
        urls.insert(0, loopback)
    return urls


def _is_local(host: str) -> bool:
    """``host`` is an address of this machine (binding to it succeeds)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _type, _proto, _name, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
            except OSError:
                return False
    return bool(infos)


def parse_port(text: str, what: str = "PORT") -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise click.UsageError(f"{what} must be a number from 1 to 65535, not {text!r}")
    return port


# --------------------------------------------------------------------------- messages


class Reporter:
    """Status lines on stderr: text, or JSON Lines with --json (stdout carries only data)."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        if self.as_json:
            line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
            click.echo(line, err=True)
        elif not self.quiet:
            click.echo(f"tok: {text}", err=True)


def _hostport(addr: tuple[str, int] | Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# --------------------------------------------------------------------------- session


async def open_session(token: AccessToken, urls: list[str], name: str) -> Network:
    """A mio session with the first node of ``urls`` that answers; :class:`Failed` (exit 3)
    with the reason. Only an unreachable node moves on to the next URL: a refusal is final."""
    from atenet.mio import client

    unreachable: list[str] = []
    for url in urls:
        try:
            return await client.connect(url, token, host=name)
        except client.MioError as exc:
            raise Failed(str(exc), EXIT_NO_SESSION) from None
        except TimeoutError as exc:
            raise Failed(str(exc) or f"the node at {url} did not answer", EXIT_NO_SESSION) from None
        except OSError as exc:
            unreachable.append(exc.strerror or str(exc))
    raise Failed(
        f"{'; '.join(unreachable)}; give the node's HTTP address with --node", EXIT_NO_SESSION
    )


def session_fields(net: Network) -> dict[str, Any]:
    return {
        "network": net.name,
        "address": str(net.address) if net.address else None,
        "address6": str(net.address6) if net.address6 else None,
        "node": net.welcome.get("node"),
    }


def session_text(net: Network) -> str:
    where = ", ".join(str(a) for a in (net.address, net.address6) if a) or "no address yet"
    node = net.welcome.get("node")
    return f"mio session on {net.name or 'the network'} as {where}" + (
        f" via node {node}" if node else ""
    )


async def pick_address(net: Network, host: str) -> str:
    """``host`` as an IP address: itself, or looked up through the network's DNS."""
    from ipaddress import ip_address

    bare = host.strip("[]")
    try:
        return str(ip_address(bare))
    except ValueError:
        pass
    try:
        found = await net.resolve(host)
    except (OSError, TimeoutError) as exc:
        raise Failed(f"cannot resolve {host!r} through the network: {_why(exc)}") from None
    if not found:
        raise Failed(f"{host!r} has no address on the network's DNS")
    same = [a for a in found if net.address is None or a.version == net.address.version]
    return str((same or found)[0])


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def run_command(body: Callable[[], Any]) -> None:
    """Run the async ``body()`` with one-line errors and the module's exit codes; SIGTERM ends
    it like Ctrl-C but with exit code 0 (a service manager's stop)."""
    import asyncio
    import signal

    from atenet.cli.common import run_loop

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopped = []

        def stop() -> None:
            stopped.append(True)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await body()
        except asyncio.CancelledError:
            if stopped:
                return None
            raise

    try:
        run_loop(main())
    except Failed as exc:
        fail(str(exc), exc.exit_code)
    except AtenetError as exc:
        fail(str(exc))
    except OSError as exc:  # the session broke outside a connection (e.g. while binding)
        fail(_why(exc))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    finally:
        sys.stdout.flush()


# --------------------------------------------------------------------------- stdin / stdout


class StdinPump:
    """stdin's bytes on the event loop, read by a daemon thread (stdin may be a file, a pipe or
    a terminal; a blocking read in a thread works for all and never leaves the descriptor
    non-blocking for the shell). At most a few chunks wait: a slow peer slows the reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int = 0) -> None:
        import asyncio
        import threading

        self._loop = loop
        self._fd = fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(4)
        threading.Thread(target=self._run, name="tok-stdin", daemon=True).start()

    def _run(self) -> None:
        import asyncio

        while True:
            try:
                data = os.read(self._fd, CHUNK)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(data), self._loop).result()
            except Exception:  # the loop is gone: nobody wants more
                return
            if not data:
                return


def write_stdout(data: bytes) -> None:
    """All of ``data`` to fd 1 (in an executor thread: a slow stdout must not stall the loop)."""
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


async def pipe_stdio(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pump: StdinPump
) -> tuple[int, int]:
    """stdin → the connection (then a half-close), the connection → stdout, until both ended.

    Returns (bytes sent, bytes received). Raises :class:`Failed` when the connection breaks."""
    import asyncio

    loop = asyncio.get_running_loop()
    counts = [0, 0]

    async def up() -> None:
        while True:
            data = await pump.queue.get()
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            counts[0] += len(data)
            await writer.drain()

    async def down() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            counts[1] += len(data)
            try:
                await loop.run_in_executor(None, write_stdout, data)
            except BrokenPipeError:  # stdout's reader left (`| head`): stop reading quietly
                return

    await both_ways(up(), down(), writer)
    return counts[0], counts[1]


async def both_ways(up: Any, down: Any, writer: asyncio.StreamWriter) -> None:
    """Run both directions; the first failure ends the other and becomes :class:`Failed`.
    When both ended, wait (up to LINGER) for the node to report the connection closed, so the
    last bytes are acknowledged before the session (and with it the socket) goes."""
    import asyncio
    import contextlib

    tasks = [asyncio.ensure_future(up), asyncio.ensure_future(down)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise Failed(f"the connection broke: {_why(exc)}")
    finally:
        for task in tasks:
            task.cancel()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), LINGER)
    writer.close()


# --------------------------------------------------------------------------- tok nc


@click.command("nc")
@click.argument("args", nargs=-1, metavar="[TOKEN] HOST PORT")
@token_options
@click.option(
    "-u",
    "--udp",
    is_flag=True,
    help="UDP: each stdin read is one datagram; every datagram to the socket goes to stdout.",
)
@click.option(
    "-w",
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="TCP: give up connecting after this long (exit 1).",
)
@click.option(
    "--linger",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="UDP: after stdin's end, wait this long for replies before exiting.",
)
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr (errors only).")
@click.option("--json", "as_json", is_flag=True, help="Status lines as JSON Lines on stderr.")
@click.pass_context
def nc(
    ctx: click.Context,
    args: tuple[str, ...],
    token_file: str | None,
    node_url: str | None,
    port_name: str | None,
    udp: bool,
    timeout: float,
    linger: float,
    quiet: bool,
    as_json: bool,
) -> None:
    """Like `nc HOST PORT`, but from a mio session: the node runs the TCP/IP stack, so no TAP
    device and no root are needed. stdin goes to HOST:PORT, what comes back goes to stdout.

    \b
      tok nc --token-file lan.token 10.20.30.40 22 < request > reply
      echo hello | ATENET_TOKEN=atn1.… tok nc 10.20.30.40 7
      tok nc -u --token-file lan.token 10.20.30.1 53 < query.bin

    HOST is an IP address of the network (or a name its DNS knows). At the end of stdin the
    connection is half-closed (the peer reads EOF) and `tok nc` goes on printing until the peer
    closes too. The token comes from --token-file, $ATENET_TOKEN or TOKEN; the node from
    --node (default: the token's first node, port 8080). Status lines go to stderr.

    Exit codes: 0 done, 1 the connection failed (refused, reset, timed out), 2 usage, 3 no mio
    session (node unreachable, key refused), 130 Ctrl-C.
    """
    host, port_text = split_token(ctx, args, ("HOST", "PORT"))
    port = parse_port(port_text)
    token, urls = token_and_urls(ctx, token_file, node_url)
    report = Reporter(as_json, quiet)

    async def body() -> None:
        import asyncio

        net = await open_session(token, urls, port_name or "tok-nc")
        try:
            report("session", session_text(net), **session_fields(net))
            address = await pick_address(net, host)
            pump = StdinPump(asyncio.get_running_loop())
            if udp:
                await nc_udp(net, address, port, pump, linger, report)
                return
            try:
                reader, writer = await net.open_connection(address, port, timeout=timeout)
            except TimeoutError:
                raise Failed(f"connecting to {_hostport((address, port))} timed out") from None
            except OSError as exc:
                where = _hostport((address, port))
                raise Failed(f"cannot connect to {where}: {_why(exc)}") from None
            local = writer.get_extra_info("sockname")
            report(
                "connected",
                f"connected to {_hostport((address, port))} from {_hostport(local)}",
                remote=[address, port],
                local=list(local),
            )
            sent, received = await pipe_stdio(reader, writer, pump)
            report("closed", f"closed: {sent} bytes sent, {received} received", sent=sent,
                   received=received)  # fmt: skip
        finally:
            await net.close()

    run_command(body)


async def nc_udp(
    net: Network, address: str, port: int, pump: StdinPump, linger: float, report: Reporter
) -> None:
    """stdin's reads as datagrams to address:port; datagrams from there to stdout."""
    import asyncio

    sock = await net.open_datagram()
    report("bound", f"UDP from port {sock.port} to {_hostport((address, port))}", port=sock.port)
    loop = asyncio.get_running_loop()

    async def down() -> None:
        # Every datagram to this socket's port is printed: a kernel answering from an
        # unconnected socket picks its preferred source address (over IPv6 often its SLAAC
        # address, not the one we sent to), so matching HOST exactly would lose real replies.
        # Others are named on stderr.
        while True:
            data, peer = await sock.recvfrom()
            if (peer[0], peer[1]) != (address, port):
                report("datagram", f"datagram from {_hostport(peer)}", peer=list(peer))
            await loop.run_in_executor(None, write_stdout, data)

    receiving = asyncio.ensure_future(down())
    try:
        while True:
            data = await pump.queue.get()
            if not data:
                break
            try:
                sock.sendto(data, (address, port))
            except OSError as exc:
                raise Failed(f"cannot send to {_hostport((address, port))}: {_why(exc)}") from None
        done, _ = await asyncio.wait([receiving], timeout=linger)
        for task in done:
            if task.exception() is not None and not net._closed.is_set():
                raise Failed(f"receiving failed: {_why(task.exception())}")  # type: ignore[arg-type]
    finally:
        receiving.cancel()
        sock.close()


# --------------------------------------------------------------------------- tok serve


@click.command("serve")
@click.argument("args", nargs=-1, metavar="[TOKEN] PORT")
@token_options
@click.option("--echo", is_flag=True, help="Echo every connection back (any number at once).")
@click.option(
    "--exec",
    "command",
    metavar="CMD",
    help="Run CMD for every connection, its stdin and stdout joined to the connection (split "
    "like a shell would, but run without one).",
)
@click.option(
    "--max-conns",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="With --echo/--exec: connections served at once; more are reset.",
)
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr (errors only).")
@click.option("--json", "as_json", is_flag=True, help="Status lines as JSON Lines on stderr.")
@click.pass_context
def serve(
    ctx: click.Context,
    args: tuple[str, ...],
    token_file: str | None,
    node_url: str | None,
    port_name: str | None,
    echo: bool,
    command: str | None,
    max_conns: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Listen on TCP PORT of a mio session, like `nc -l PORT`, without TAP or root.

    \b
      tok serve --token-file lan.token 9000 < file       # one connection, then exit
      tok serve --token-file lan.token 7 --echo          # an echo server, until Ctrl-C
      tok serve --token-file lan.token 8000 --exec 'python3 handler.py'

    The session gets its own address on the network (printed on stderr: `listening on
    ADDRESS:PORT`); hosts of the network connect to it there. Without --echo or --exec the
    first connection is joined to stdin/stdout (half-closed at the end of stdin) and `tok
    serve` exits when it ends; connections arriving meanwhile are reset. With --echo or --exec
    it serves every connection until Ctrl-C or SIGTERM.

    Exit codes: 0 done (or stopped by SIGTERM), 1 error (port in use, the connection broke),
    2 usage, 3 no mio session (node unreachable, key refused), 130 Ctrl-C.
    """
    (port_text,) = split_token(ctx, args, ("PORT",))
    port = parse_port(port_text)
    if echo and command:
        raise click.UsageError("--echo and --exec contradict each other: pick one")
    argv: list[str] = []
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise click.UsageError(f"--exec {command!r}: {exc}") from None
        if not argv:
            raise click.UsageError("--exec needs a command")
    token, urls = token_and_urls(ctx, token_file, node_url)
    report = Reporter(as_json, quiet)

    async def body() -> None:
        net = await open_session(token, urls, port_name or f"tok-serve-{port}")
        try:
            report("session", session_text(net), **session_fields(net))
            if echo or argv:
                await serve_many(net, port, argv, max_conns, report)
            else:
                await serve_one(net, port, report)
        finally:
            await net.close()

    run_command(body)


async def listen(net: Network, port: int, handler: Any, report: Reporter) -> Any:
    try:
        server = await net.start_server(handler, port=port)
    except OSError as exc:
        raise Failed(f"cannot listen on port {port}: {_why(exc)}") from None
    where = [_hostport((str(a), server.port)) for a in (net.address, net.address6) if a]
    report(
        "listening",
        f"listening on {' and '.join(where) or f'port {server.port}'}",
        port=server.port,
        addresses=[str(a) for a in (net.address, net.address6) if a],
    )
    return server


async def serve_one(net: Network, port: int, report: Reporter) -> None:
    """The first connection joined to stdin/stdout; exit when it ended."""
    import asyncio

    loop = asyncio.get_running_loop()
    first: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if first.done():
            writer.transport.abort()  # busy: like `nc -l`, one connection
        else:
            first.set_result((reader, writer))

    server = await listen(net, port, handler, report)
    closed = asyncio.ensure_future(net.wait_closed())
    try:
        await asyncio.wait([first, closed], return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            raise Failed("the node closed the mio session")
        reader, writer = first.result()
        peer = writer.get_extra_info("peername")
        report("accepted", f"connection from {_hostport(peer)}", peer=list(peer))
        pump = StdinPump(loop)
        sent, received = await pipe_stdio(reader, writer, pump)
        report("closed", f"closed: {sent} bytes sent, {received} received", sent=sent,
               received=received)  # fmt: skip
    finally:
        closed.cancel()
        server.close()


async def serve_many(
    net: Network, port: int, argv: list[str], max_conns: int, report: Reporter
) -> None:
    """Every connection echoed, or handed to a new process of ``argv``, until stopped."""
    import asyncio

    active: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(active) >= max_conns:
            report("refused", f"reset {_hostport(peer)}: {max_conns} connections already",
                   peer=list(peer))  # fmt: skip
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        active.add(task)
        report("accepted", f"connection from {_hostport(peer)}", peer=list(peer))
        try:
            if argv:
                await run_exec(argv, reader, writer)
            else:
                await run_echo(reader, writer)
            report("closed", f"{_hostport(peer)} closed", peer=list(peer))
        except Failed as exc:
            report("error", f"{_hostport(peer)}: {exc}", peer=list(peer), error=str(exc))
            writer.transport.abort()
        finally:
            active.discard(task)

    server = await listen(net, port, handle, report)
    try:
        await net.wait_closed()
        raise Failed("the node closed the mio session")
    finally:
        server.close()
        for task in list(active):
            task.cancel()


async def run_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def up() -> None:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def nothing() -> None:
        return None

    await both_ways(up(), nothing(), writer)


async def run_exec(
    argv: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The connection as ``argv``'s stdin and stdout; stderr stays ours (the terminal, a log)."""
    import asyncio
    import contextlib

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise Failed(f"cannot run {argv[0]}: {_why(exc)}") from None
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def to_proc() -> None:
        try:
            while data := await reader.read(CHUNK):
                stdin.write(data)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # the command stopped reading: the rest of the input is not wanted
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    async def from_proc() -> None:
        while data := await stdout.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    try:
        # The command's output ending is the end: its input side may never see an EOF (an
        # HTTP client keeps its connection open until the reply ends).
        feeding = asyncio.ensure_future(to_proc())
        await both_ways(from_proc(), asyncio.sleep(0), writer)
        feeding.cancel()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await proc.wait()


# --------------------------------------------------------------------------- tok ping --mio


def mio_ping(
    ctx: click.Context,
    host: str,
    token_file: str | None,
    node_url: str | None,
    count: int,
    interval: float,
    timeout: float,
    as_json: bool,
) -> None:
    """`tok ping --mio HOST`: ICMP echo from a mio session (no TAP, no root)."""
    token, urls = token_and_urls(ctx, token_file, node_url)
    results: list[float | None] = []
    summary: dict[str, Any] = {}

    async def body() -> None:
        import asyncio

        net = await open_session(token, urls, "tok-ping")
        try:
            address = await pick_address(net, host)
            summary.update(host=address, **session_fields(net))
            if not as_json:
                click.echo(f"PING {address} from a mio session ({session_text(net)})")
            for seq in range(1, count + 1):
                started = time.monotonic()
                try:
                    rtt: float | None = await net.ping(address, timeout=timeout)
                except TimeoutError:
                    rtt = None
                except OSError as exc:
                    if not results:
                        raise Failed(f"cannot ping {address}: {_why(exc)}") from None
                    rtt = None
                results.append(rtt)
                if not as_json:
                    if rtt is None:
                        click.echo(f"seq={seq} timeout")
                    else:
                        click.echo(f"reply from {address}: seq={seq} time={rtt * 1000:.2f} ms")
                if seq < count:
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            await net.close()

    run_command(body)
    if not summary:
        return
    times = [r * 1000 for r in results if r is not None]
    summary.update(
        sent=len(results),
        received=len(times),
        loss_pct=round(100 * (1 - len(times) / max(1, len(results))), 1),
        min_ms=round(min(times), 3) if times else None,
        avg_ms=round(sum(times) / len(times), 3) if times else None,
        max_ms=round(max(times), 3) if times else None,
        replies=[None if r is None else round(r * 1000, 3) for r in results],
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        stats = (
            f", rtt min/avg/max {summary['min_ms']}/{summary['avg_ms']}/{summary['max_ms']} ms"
            if times
            else ""
        )
        click.echo(
            f"--- {len(results)} sent, {len(times)} received, {summary['loss_pct']:g}% loss{stats}"
        )
    sys.exit(0 if times else 1)


COMMANDS = (nc, serve)
