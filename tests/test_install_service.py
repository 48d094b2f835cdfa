"""`atenet install-service`: systemd units that systemd itself accepts, written with the right
modes, and the token kept out of command lines (a credential file)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from atenet import service
from tests.conftest import ROOT, VENV_BIN

TOKEN = (
    "atn1.ATdCrPVgYAmz8ecgKwv3fAwAAAABqaGPPSgiko4LjKWSfEKWC0ghH72ZWgdk0t_cMuQgeV8BDzEyNy4wLjAuMT"
    "o0NDg5Mw"
)


def atenet(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = os.environ | env
    if "ATENET_TOKEN" not in env:
        full.pop("ATENET_TOKEN", None)
    return subprocess.run(
        [VENV_BIN / "atenet", "install-service", *args], env=full, input=stdin,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def files_of(dry_run: str) -> dict[str, str]:
    """The files a --dry-run prints, by path."""
    files: dict[str, str] = {}
    for chunk in dry_run.split("# file: ")[1:]:
        head, _, body = chunk.partition("\n")
        files[head.split()[0]] = body
    return files


def service_section(text: str) -> dict[str, list[str]]:
    """A unit's [Service] keys, each with every value given (systemd allows repeats)."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    values: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    parser.read_string(text)  # it parses as INI at all
    return values


def verify(paths: list[Path]) -> None:
    """systemd's own verdict (when systemd-analyze is installed): no error and no warning."""
    if shutil.which("systemd-analyze") is None:
        return
    proc = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_node_unit_dry_run_runs_this_installations_atenet(tmp_path: Path) -> None:
    proc = atenet("--dry-run", "--user", "atenet", "--", "--http-listen", "0.0.0.0")
    assert proc.returncode == 0, proc.stderr
    files = files_of(proc.stdout)
    assert list(files) == ["/etc/systemd/system/atenet.service"]
    text = files["/etc/systemd/system/atenet.service"]
    unit = service_section(text)
    assert unit["ExecStart"] == [f"{VENV_BIN / 'atenet'} run --http-listen 0.0.0.0"]
    assert unit["User"] == ["atenet"] and "DynamicUser" not in unit
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ReadWritePaths"] == ["/var/lib/atenet"]
    assert unit["CapabilityBoundingSet"] == [""]
    path = tmp_path / "atenet.service"
    path.write_text(text)
    verify([path])
    assert "then: systemctl daemon-reload && systemctl enable --now atenet" in proc.stdout
    assert not (tmp_path / "etc").exists()


def test_connect_unit_takes_its_token_from_a_credential(tmp_path: Path) -> None:
    proc = atenet("--dry-run", "--connect", "office", ATENET_TOKEN=TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout  # a dry run never prints the secret
    unit = service_section(files_of(proc.stdout)["/etc/systemd/system/tok-connect@.service"])
    assert unit["LoadCredential"] == ["atenet-token:/etc/atenet/%i.token"]
    assert unit["ExecStart"] == [
        f"{VENV_BIN / 'tok'} connect --dev ${{ATENET_DEV}} "
        "--token-file ${CREDENTIALS_DIRECTORY}/atenet-token"
    ]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]


def test_install_to_a_root_writes_units_0644_and_the_token_0600(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert atenet("--root", str(root)).returncode == 0
    proc = atenet("--root", str(root), "--connect", "office", "--dev", "atn-office",
                  "--token-file", "-", stdin=TOKEN + "\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    units = root / "etc" / "systemd" / "system"
    node, template = units / "atenet.service", units / "tok-connect@.service"
    token = root / "etc" / "atenet" / "office.token"
    env = root / "etc" / "atenet" / "office.env"
    for path in (node, template, env):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert token.stat().st_mode & 0o777 == 0o600
    assert (token.parent.stat().st_mode & 0o777) == 0o700
    assert token.read_text() == TOKEN + "\n"
    assert env.read_text() == "ATENET_DEV=atn-office\n"
    assert "wrote" in proc.stdout and "systemctl enable --now tok-connect@office" in proc.stdout
    instance = tmp_path / "tok-connect@office.service"  # verify the template as an instance
    instance.write_text(template.read_text())
    verify([node, instance])


@pytest.mark.parametrize(
    ("args", "env", "message", "code"),
    [
        (("--connect", "office"), {}, "no token: pass --token-file", 1),
        (("--connect", "office"), {"ATENET_TOKEN": "junk"}, "not an atenet access token", 1),
        (("--connect", "../etc"), {"ATENET_TOKEN": TOKEN}, "bad network name '../etc'", 1),
        (("--token-file", "-"), {}, "--token-file and --dev go with --connect NAME", 2),
        (("--", "--advertise", "a b"), {}, "no spaces or quotes", 1),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str, code: int
) -> None:
    proc = atenet("--root", str(tmp_path / "root"), *args, **env)
    assert proc.returncode == code
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "root").exists()


def test_contrib_units_are_the_rendered_ones() -> None:
    contrib = ROOT / "contrib" / "systemd"
    assert (contrib / "atenet.service").read_text() == service.node_unit(
        service.DEFAULT_BIN / "atenet"
    )
    assert (contrib / "tok-connect@.service").read_text() == service.connect_unit(
        service.DEFAULT_BIN / "tok"
    )
