"""systemd units for a node (`atenet run`) and a client (`tok connect`), and their installation.

``atenet install-service`` renders these units with the absolute paths of this installation's
``atenet`` and ``tok`` and writes them under ``/etc/systemd/system`` (``contrib/systemd/`` holds
the same units rendered for ``/usr/local/bin``). Choices, and why:

* Logs go to stdout/stderr, i.e. the journal (``journalctl -u atenet``): no log files to rotate.
* The node needs no privilege at all: a dynamic user (or ``--user NAME``), no capabilities,
  a read-only system (``ProtectSystem=strict``) except its state directory ``/var/lib/atenet``
  (``ATENET_HOME``: keys, the embedded store).
* The client needs ``CAP_NET_ADMIN`` (TAP device, addresses, routes) and nothing else. Its access
  token is a systemd credential (``LoadCredential=``): the file ``/etc/atenet/NAME.token``
  (0600, root) is handed to the service only, never appears on a command line or in the
  environment, and ``tok connect --token-file`` reads it from ``$CREDENTIALS_DIRECTORY``.
* ``tok-connect@NAME`` is a template: one instance per network, each with its own token file and
  optional ``/etc/atenet/NAME.env`` (``ATENET_DEV=...`` for the TAP device name).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from atenet.errors import AtenetError

NODE_UNIT = "atenet.service"
CONNECT_UNIT = "tok-connect@.service"
UNIT_DIR = Path("/etc/systemd/system")
TOKEN_DIR = Path("/etc/atenet")
NODE_HOME = "/var/lib/atenet"
#: Where ``contrib/systemd/`` expects the commands (``pip install atenet`` as root puts them there).
DEFAULT_BIN = Path("/usr/local/bin")

_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
"""

NODE_TEMPLATE = """\
# atenet node: serves every network of this host's deployment (`atenet run`).
# Installed by `atenet install-service` (docs/cli.md); logs: journalctl -u atenet
[Unit]
Description=atenet node (distributed virtual Ethernet switch)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
{user}Environment=ATENET_HOME={home}
Environment=PYTHONUNBUFFERED=1
{store}StateDirectory=atenet
StateDirectoryMode=0700
ExecStartPre={atenet} init
ExecStart={atenet} run{args}
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
ReadWritePaths={home}
CapabilityBoundingSet=
AmbientCapabilities=
PrivateDevices=yes
ProtectKernelTunables=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
{hardening}
[Install]
WantedBy=multi-user.target
"""

CONNECT_TEMPLATE = """\
# atenet client: joins this host to the network whose token is /etc/atenet/%i.token
# (`tok connect`). Installed by `atenet install-service --connect NAME`;
# start: systemctl enable --now tok-connect@NAME; logs: journalctl -u tok-connect@NAME
[Unit]
Description=atenet client for network %i (tok connect)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
Environment=ATENET_DEV=atenet0
EnvironmentFile=-/etc/atenet/%i.env
Environment=ATENET_HOME=/var/lib/atenet-connect/%i
Environment=PYTHONUNBUFFERED=1
StateDirectory=atenet-connect/%i
StateDirectoryMode=0700
LoadCredential=atenet-token:/etc/atenet/%i.token
ExecStart={tok} connect --dev ${{ATENET_DEV}} --token-file ${{CREDENTIALS_DIRECTORY}}/atenet-token
Restart=always
RestartSec=5
ReadWritePaths=/var/lib/atenet-connect/%i
CapabilityBoundingSet=CAP_NET_ADMIN
AmbientCapabilities=CAP_NET_ADMIN
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_PACKET
{hardening}
[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class UnitFile:
    """A file to install: where (absolute, before --root), its text and its mode."""

    path: Path
    text: str
    mode: int = 0o644


def command_path(name: str) -> Path:
    """The absolute path of this installation's ``atenet`` or ``tok`` command."""
    here = Path(sys.argv[0]).absolute().parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return Path(found).absolute()
    raise AtenetError(f"cannot find the `{name}` command on PATH: install atenet first")


def _protect_home(*commands: Path) -> str:
    """``yes`` hides /home, /root and /run/user; ``read-only`` when a command lives there (a
    virtualenv in a checkout, as scripts/setup.sh makes)."""
    homes = ("/home/", "/root/", "/run/user/")
    return "read-only" if any(str(c).startswith(homes) for c in commands) else "yes"


def node_unit(
    atenet: Path, user: str | None = None, store: str | None = None, args: tuple[str, ...] = ()
) -> str:
    """The text of ``atenet.service``."""
    for arg in args:
        if any(c.isspace() or c in "\"'\\%$" for c in arg):
            raise AtenetError(f"cannot put {arg!r} in a unit's ExecStart: no spaces or quotes")
    if user is not None and (not user or not all(c.isalnum() or c in "-_." for c in user)):
        raise AtenetError(f"bad --user {user!r}: a system user name")
    if store is not None and any(c.isspace() for c in store):
        raise AtenetError(f"bad --store {store!r}: no spaces")
    return NODE_TEMPLATE.format(
        user=f"User={user}\n" if user else "DynamicUser=yes\n",
        home=NODE_HOME,
        store=f"Environment=ATENET_STORE={store}\n" if store else "",
        atenet=atenet,
        args="".join(f" {a}" for a in args),
        hardening=_HARDENING.format(protect_home=_protect_home(atenet)),
    )


def connect_unit(tok: Path) -> str:
    """The text of the ``tok-connect@.service`` template."""
    return CONNECT_TEMPLATE.format(
        tok=tok, hardening=_HARDENING.format(protect_home=_protect_home(tok))
    )


def check_instance_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise AtenetError(f"bad network name {name!r} for a service: letters, digits, - _ .")
    if name.startswith("."):
        raise AtenetError(f"bad network name {name!r} for a service: must not start with '.'")
    return name


def check_dev(dev: str) -> str:
    if not 0 < len(dev) < 16 or not all(c.isalnum() or c in "-_." for c in dev):
        raise AtenetError(f"bad device name {dev!r}: at most 15 letters, digits, - _ .")
    return dev


def install(files: list[UnitFile], root: Path) -> list[Path]:
    """Write ``files`` under ``root`` (``/`` for the real thing) with their modes; return the
    paths written. Each file is written to a temporary name and renamed, so a unit is never
    half-written; a directory holding a secret file is made 0700."""
    written = []
    for f in files:
        target = root / f.path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if f.mode == 0o600:
            os.chmod(target.parent, 0o700)  # a directory of secrets lists its names to root only
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
        try:
            os.write(fd, f.text.encode())
            os.fchmod(fd, f.mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        written.append(target)
    return written
