"""What both commands share: the --store option, running coroutines, one-line errors."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import click

from atenet.chain.store import ChainStore, open_store
from atenet.errors import AtenetError

P = ParamSpec("P")
T = TypeVar("T")

store_option = click.option(
    "--store",
    "store_url",
    envvar="ATENET_STORE",
    default=None,
    metavar="URL",
    help="Chain store: sqlite:///path/file.sqlite (default: the embedded store in the user's "
    "data dir) or nats://host:port[,host:port...]. Env: ATENET_STORE.",
)


def _export_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A --store given before the subcommand applies to it (through ATENET_STORE)."""
    if value:
        os.environ["ATENET_STORE"] = value
    return value


group_store_option = click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    expose_value=False,
    callback=_export_store,
    help="Chain store URL for every subcommand (same as the subcommands' --store).",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error to stderr and exit."""
    prog = click.get_current_context(silent=True)
    name = prog.find_root().info_name if prog is not None else "atenet"
    click.echo(f"{name}: error: {message}", err=True)
    sys.exit(code)


def run_loop(coro: Awaitable[T]) -> T:
    """Run ``coro`` on uvloop when it is installed (much faster UDP), else stdlib asyncio.
    ATENET_NO_UVLOOP=1 forces stdlib asyncio (for comparisons)."""
    if not os.environ.get("ATENET_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def run_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, T | None]:
    """Run an async command body; turn AtenetError into a one-line error, Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return run_loop(fn(*args, **kwargs))  # type: ignore[arg-type]
        except AtenetError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)
        return None

    return wrapper


async def connected_store(url: str | None) -> ChainStore:
    store = open_store(url)
    await store.connect()
    return store


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def operator_headers(url: str) -> dict[str, str]:
    """``Authorization: Bearer …`` with the node's operator credential for a request to ``url``
    (e.g. `tok status --node URL`), when the URL names an address of this machine and this
    config dir holds the node's ``operator-token``; otherwise nothing, so the credential never
    goes to another host. Loopback URLs need none (the node trusts loopback), but get it too."""
    import socket
    from urllib.parse import urlsplit

    from atenet.paths import config_dir

    host = urlsplit(url).hostname
    if not host:
        return {}
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return {}
    for family, _type, _proto, _name, sockaddr in infos:
        # Binding succeeds only for an address one of this machine's interfaces holds.
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
            except OSError:
                return {}
    try:
        token = (config_dir() / "operator-token").read_text().strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token and infos else {}
