"""Where atenet keeps its files: config (keys, deployment record) and data (the SQLite store).

Both follow the XDG base directories through platformdirs, and ``ATENET_HOME`` overrides both
(``$ATENET_HOME/config``, ``$ATENET_HOME/data``) so tests and several deployments on one machine
stay apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def config_dir() -> Path:
    home = os.environ.get("ATENET_HOME")
    path = Path(home) / "config" if home else Path(platformdirs.user_config_dir("atenet"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def data_dir() -> Path:
    home = os.environ.get("ATENET_HOME")
    path = Path(home) / "data" if home else Path(platformdirs.user_data_dir("atenet"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
