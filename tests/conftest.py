"""Shared fixtures and the suite's running rules (parallel workers, compile cache, Hypothesis
profile): see docs/testing.md. Each support module owns its fixtures; this file imports them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.chains import world  # noqa: F401
from tests.support.nats_cluster import (  # noqa: F401
    fresh_nats_cluster,
    fresh_nats_server,
    nats_cluster,
    nats_server,
)
from tests.support.netns import lab  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# The suite starts hundreds of `atenet` and `tok` processes. With PYTHONDONTWRITEBYTECODE
# set (some machines set it for everything) each of them compiles atenet and the standard
# library again: ~0.1 s of CPU per command, ~0.2 s per node start. Children get a compile cache
# of their own instead, in a temporary directory this process removes at the end, so nothing
# is written next to the sources either way. xdist workers inherit it from the controller.
_PYCACHE: Path | None = None
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    _PYCACHE = Path(tempfile.mkdtemp(prefix="atenet-pytest-pycache-"))
    os.environ["PYTHONPYCACHEPREFIX"] = str(_PYCACHE)
    del os.environ["PYTHONDONTWRITEBYTECODE"]

# Property tests assert outcomes, never speed (timing goals are not asserted: the machine is
# shared and the suite runs on parallel workers). Hypothesis' default 200 ms per-example
# deadline and its "too slow" health check are timing checks that fail on a busy machine.
settings.register_profile("atenet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atenet")


@pytest.fixture
def atenet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ATENET_HOME (config + data dirs) for one test; children inherit it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ATENET_HOME", str(home))
    monkeypatch.delenv("ATENET_STORE", raising=False)
    return home


def is_root() -> bool:
    return os.geteuid() == 0


def _shared_scope(item: pytest.Item) -> bool:
    """True if ``item`` uses a fixture shared beyond one test (module, class or package scope)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope in ("module", "class", "package")
        for defs in info.name2fixturedefs.values()
        for d in defs
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests that share a module-scoped fixture together on one pytest-xdist worker.

    The suite runs in parallel (``-n 3 --dist loadgroup``, see README) because most slow tests
    wait rather than compute. Tests distribute one by one, except those sharing an expensive
    module fixture (a lab of nodes): several workers would each build their own copy, and some
    modules' tests run in order against one lab (test_connect_lab kills and restarts its nodes).
    An ``xdist_group`` per module keeps them on one worker, in file order; loadgroup also starts
    the largest groups first, so these long modules do not end up as the run's tail. Without
    xdist the mark does nothing. Runs first so xdist's own hook sees the marks.
    """
    for item in items:
        if _shared_scope(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


needs_root = pytest.mark.skipif(
    not is_root(), reason="needs root: creates network namespaces / TAP devices"
)


# ---------------------------------------------------------------- tests that must run alone

_LOCKS = pytest.StashKey[tuple[int, int, Path]]()


def pytest_configure(config: pytest.Config) -> None:
    """On a pytest-xdist worker, open the run's two lock files (see ``_alone_or_shared``).

    Workers configure before any of them runs a test (xdist schedules only once every worker
    has collected), so every worker holds both files open before the first test starts."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    base = Path(tempfile.gettempdir()) / f"atenet-pytest-{workerinput['testrunuid']}"
    fds = [os.open(f"{base}.{name}", os.O_RDWR | os.O_CREAT, 0o600) for name in ("turn", "room")]
    config.stash[_LOCKS] = (fds[0], fds[1], base)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PYCACHE is not None:  # set only in the process that made it (workers inherit the env)
        shutil.rmtree(_PYCACHE, ignore_errors=True)
    locks = config.stash.get(_LOCKS, None)
    if locks is None:
        return
    turn, room, base = locks
    os.close(turn)
    os.close(room)
    for name in ("turn", "room"):  # the first worker to finish removes them; others hold fds
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{base}.{name}")


@contextlib.contextmanager
def _alone_or_shared(locks: tuple[int, int, Path], alone: bool) -> Iterator[None]:
    """A readers-writer lock across the run's workers (flock on two files).

    Every test holds ``room`` shared; a test marked ``alone`` holds it exclusively, so it runs
    while no other test does. ``turn`` is a turnstile that keeps the alone test from starving:
    a test takes it only to get into the room, and the alone test keeps it while it waits and
    runs, so no new test enters behind it."""
    turn, room, _ = locks
    fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    except BaseException:
        fcntl.flock(turn, fcntl.LOCK_UN)
        raise
    if not alone:
        fcntl.flock(turn, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(room, fcntl.LOCK_UN)
        if alone:
            fcntl.flock(turn, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tests marked ``alone`` (they compare a rate measured in two phases, which other tests'
    CPU use would skew on a 2-core machine) run with no other test at the same time. Outermost
    wrapper, so a wait for the lock does not count against pytest-timeout."""
    locks = item.config.stash.get(_LOCKS, None)
    if locks is None:
        return (yield)
    with _alone_or_shared(locks, item.get_closest_marker("alone") is not None):
        return (yield)
