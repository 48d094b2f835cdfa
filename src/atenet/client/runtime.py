"""Where a running `tok connect` leaves its traces: the runtime dir, its state files and logs.

A connect writes one small JSON state file per TAP device (``DEV.json``: its pid, network,
addresses, node, when the node last answered, the node's round-trip time), so that
`tok status`, `tok ping` and `tok disconnect` can find it without talking to it. The daemon's
log lives there too (``tok-connect-DEV.log``).

The directory is ``/run/atenet`` for root and ``$XDG_RUNTIME_DIR/atenet`` for other users, or
``$ATENET_HOME/run`` when ATENET_HOME is set (as for the config and data dirs: several
deployments, and tests, stay apart). It is created 0700 and refused when it is a symlink, is
owned by another user or is open to others: root writes logs there, so nobody else may plant a
file or a link in it (issue 9, item 7: the old ``/tmp/tok-connect-DEV.log`` followed symlinks).

Import-light on purpose (no asyncio, no crypto): `tok status` and `tok disconnect` load it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from atenet.errors import AtenetError
from atenet.fast import fast_status

STATE_VERSION = 1


def runtime_dir(create: bool = True) -> Path:
    """The runtime dir for this user (see the module docstring); checked and made 0700."""
    home = os.environ.get("ATENET_HOME")
    if home:
        path = Path(home) / "run"
    elif os.geteuid() == 0:
        path = Path("/run/atenet")
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(xdg) if xdg else Path(f"/tmp/atenet-{os.geteuid()}")
        path = base / "atenet" if xdg else base
    if create:
        _ensure_private_dir(path)
    return path


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700, or accept it only if it is a real directory of ours, closed to
    others (a directory someone else controls could hold a planted link for root to follow)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise AtenetError(f"cannot create the runtime dir {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise AtenetError(f"runtime dir {path} is not a directory (a symlink?): remove it")
    if st.st_uid != os.geteuid():
        raise AtenetError(
            f"runtime dir {path} belongs to uid {st.st_uid}, not to you: remove it or set "
            "ATENET_HOME"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def state_path(dev: str, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"{dev}.json"


def log_path(dev: str, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"tok-connect-{dev}.log"


def open_log(path: Path | str) -> int:
    """Open a log file for appending without following a symlink at ``path``; mode 0600.

    Returns the fd. A symlink (``O_NOFOLLOW``), a hard link to another file, or anything other
    than a regular file of ours is refused with a one-line error rather than written through.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise AtenetError(
                f"refusing to write the log {path}: it is a symbolic link (remove it)"
            ) from None
        raise AtenetError(f"cannot open the log {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AtenetError(f"refusing to write the log {path}: not a regular file")
        if st.st_nlink > 1:
            raise AtenetError(f"refusing to write the log {path}: it has other hard links")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # an older tok created it 0644
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (readers never see half a file); mode 0600. It also
    says whether this `tok connect` runs the compiled fast path (``fastpath``: ``on`` or why
    not), which `tok status` shows."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(
        {"version": STATE_VERSION, "fastpath": fast_status(), **state}, sort_keys=True
    ).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_state(path: Path, pid: int | None = None) -> None:
    """Remove the state file, only if it is still ours (``pid``): a newer connect on the same
    device may have replaced it."""
    if pid is not None:
        state = read_state(path)
        if state is not None and state.get("pid") != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: object) -> bool:
    """A live process that is a `tok connect` (guards against a recycled pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"connect" in argv and any(b"tok" in arg for arg in argv)


def connections(directory: Path | None = None) -> list[dict[str, Any]]:
    """The state of every running `tok connect` of this user, by device name; stale files (the
    process is gone: killed with -9, or the machine crashed) are removed on the way."""
    try:
        directory = directory or runtime_dir(create=False)
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    out = []
    for path in paths:
        state = read_state(path)
        if state is None:
            continue
        if not pid_alive(state.get("pid")):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(state)
    return out


def netns_id() -> int:
    """This process's network namespace (its inode): a device name is only unique within one."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def answered_ago(state: dict[str, Any], now: float | None = None) -> float | None:
    last = state.get("last_answer")
    if not isinstance(last, (int, float)):
        return None
    return max(0.0, (now if now is not None else time.time()) - last)
