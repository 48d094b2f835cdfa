"""Shared fixtures. Each support module owns its fixtures; this file only imports them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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


needs_root = pytest.mark.skipif(
    not is_root(), reason="needs root: creates network namespaces / TAP devices"
)
