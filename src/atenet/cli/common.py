"""What both commands share: the --store option, running coroutines, one-line errors.

Imported by every `tok` and `atenet` invocation, `--help` included, so it imports only click and
the standard library's cheap modules at the top; asyncio, logging and the stores load when a
command runs (see docs/cli.md, "Start-up time").
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from atenet.errors import AtenetError

if TYPE_CHECKING:
    from atenet.chain.store import ChainStore

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
    import asyncio

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


class NoStore(AtenetError):
    """A command that only reads was pointed at a SQLite store file that does not exist."""


def existing_sqlite(url: str | None) -> tuple[str, Path] | None:
    """(url, path) of the SQLite store ``url`` names (the default one when None), or None for
    another backend. Checks the URL, and refuses a file that does not exist (NoStore)."""
    from atenet.chain.store import check_store_url, default_store_url

    url = url or default_store_url()
    check_store_url(url)
    if not url.startswith("sqlite://"):
        return None
    path = Path(url.removeprefix("sqlite://"))
    if not path.exists():
        raise NoStore(f"no store at {path}: run `atenet init` or check --store")
    return url, path


async def connected_store(url: str | None, *, create: bool = True) -> ChainStore:
    """Open the store ``url`` names (checked up front: a malformed URL is a one-line error).

    With ``create=False`` (commands that only read or change existing networks) a SQLite file
    that does not exist is refused rather than created empty: a mistyped path would otherwise
    look like a store with no networks in it."""
    from atenet.chain.store import open_store

    store = open_store(url)
    path = getattr(store, "path", None)
    if not create and store.url.startswith("sqlite://") and path is not None and not path.exists():
        raise NoStore(f"no store at {path}: run `atenet init` or check --store")
    await store.connect()
    return store


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def setup_logging(verbose: int) -> None:
    import logging

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
