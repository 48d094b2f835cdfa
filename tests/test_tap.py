"""TAP device: error mapping (no root needed) and real frames through namespaces (root)."""

from __future__ import annotations

import asyncio
import errno
import json
import select
import shutil
import sys
import threading
from collections.abc import Iterator

import pytest

from atenet.errors import AtenetError
from atenet.transport.tap import (
    NeedsNetAdmin,
    TapDevice,
    TapError,
    TapNameBusy,
    TunModuleMissing,
    attach_reader,
    configure_link,
    tap_error,
)
from tests.conftest import needs_root
from tests.support.netns import Host, Lab

MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02aa00000002")


# --- errors a user can hit (no root needed) ------------------------------------------------


def test_permission_error_says_run_with_sudo() -> None:
    err = tap_error(PermissionError(errno.EPERM, "Operation not permitted"), "atenet0")
    assert isinstance(err, NeedsNetAdmin)
    assert isinstance(err, AtenetError)
    assert str(err) == (
        "tok connect needs root (CAP_NET_ADMIN) to create a TAP device: run it with sudo"
    )


def test_missing_dev_net_tun_says_modprobe_tun() -> None:
    err = tap_error(FileNotFoundError(errno.ENOENT, "No such file"), "atenet0")
    assert isinstance(err, TunModuleMissing)
    assert "/dev/net/tun" in str(err)
    assert str(err).endswith("modprobe tun")


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EINVAL])
def test_busy_name_names_the_device(code: int) -> None:
    err = tap_error(OSError(code, "busy"), "atenet7")
    assert isinstance(err, TapNameBusy)
    assert "'atenet7'" in str(err)
    assert "\n" not in str(err)


def test_unknown_errno_is_still_one_line_atenet_error() -> None:
    err = tap_error(OSError(errno.ENOMEM, "no memory"), "atenet0")
    assert isinstance(err, TapError)
    assert "atenet0" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b"])
def test_invalid_name_is_refused_before_touching_the_kernel(name: str) -> None:
    with pytest.raises(TapError, match="invalid network device name"):
        TapDevice.open(name)


def test_multicast_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="unicast"):
        TapDevice.open("atenet0", mac=bytes.fromhex("01005e000001"))


# --- real devices inside lab namespaces (root) ---------------------------------------------


def open_configured(
    host: Host, mac: bytes, addr4: str, addr6: str, name: str = "tap0"
) -> TapDevice:
    """Open and configure a TAP inside ``host``'s namespace (the fd stays bound to it)."""

    def setup() -> TapDevice:
        tap = TapDevice.open(name, mtu=1400, mac=mac)
        try:
            configure_link(tap.name, addrs4=[addr4], addrs6=[addr6])
        except BaseException:
            tap.close()
            raise
        return tap

    return host.call(setup)


class Relay:
    """A wire between two TAP devices: the smallest possible 'switch', in a thread."""

    def __init__(self, a: TapDevice, b: TapDevice) -> None:
        self.a, self.b = a, b
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        peer = {self.a: self.b, self.b: self.a}
        while not self._stop.is_set():
            ready, _, _ = select.select([self.a, self.b], [], [], 0.05)
            for src in ready:
                dst = peer[src]
                for frame in src.read_batch():
                    dst.write(frame)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def tap_pair(lab: Lab) -> Iterator[tuple[Host, Host, TapDevice, TapDevice]]:
    a, b = lab.add_host("a"), lab.add_host("b")
    tap_a = open_configured(a, MAC_A, "10.202.0.1/24", "fd00:202::1/64")
    try:
        tap_b = open_configured(b, MAC_B, "10.202.0.2/24", "fd00:202::2/64")
    except BaseException:
        tap_a.close()
        raise
    try:
        yield a, b, tap_a, tap_b
    finally:
        tap_a.close()
        tap_b.close()


@needs_root
def test_open_applies_name_mtu_and_mac(lab: Lab) -> None:
    host = lab.add_host("a")
    tap = host.call(TapDevice.open, "atn%d", 1280, MAC_A)
    try:
        assert tap.name == "atn0"  # the kernel filled in the template
        (info,) = json.loads(host.run(["ip", "-j", "link", "show", "dev", tap.name]).stdout)
        assert info["mtu"] == 1280
        assert info["address"] == MAC_A.hex(":")
        assert tap.read_batch() == []  # non-blocking: nothing queued, no wait
    finally:
        tap.close()
    # A non-persistent TAP goes away with its fd.
    gone = host.run(["ip", "link", "show", "dev", "atn0"], check=False)
    assert gone.returncode != 0


@needs_root
def test_same_name_twice_is_busy(lab: Lab) -> None:
    host = lab.add_host("a")
    first = host.call(TapDevice.open, "tap0")
    try:
        with pytest.raises(TapNameBusy, match="'tap0'"):
            host.call(TapDevice.open, "tap0")
        with pytest.raises(TapNameBusy, match="'lo'"):
            host.call(TapDevice.open, "lo")  # exists, but is not a TAP
    finally:
        first.close()


@needs_root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_open_says_run_with_sudo(lab: Lab) -> None:
    host = lab.add_host("a")
    script = (
        "from atenet.transport.tap import TapDevice\n"
        "from atenet.errors import AtenetError\n"
        "try:\n    TapDevice.open('tap0')\nexcept AtenetError as e:\n    print(e)\n"
    )
    out = host.run(
        ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--",
         sys.executable, "-c", script]
    )  # fmt: skip
    assert out.stdout.strip() == (
        "tok connect needs root (CAP_NET_ADMIN) to create a TAP device: run it with sudo"
    )


@needs_root
def test_configure_link_sets_addresses_usable_at_once(
    tap_pair: tuple[Host, Host, TapDevice, TapDevice],
) -> None:
    a, _, tap_a, _ = tap_pair
    addrs = json.loads(a.run(["ip", "-j", "addr", "show", "dev", tap_a.name]).stdout)[0]
    assert "UP" in addrs["flags"]
    by_family = {(x["family"], x["local"]) for x in addrs["addr_info"]}
    assert ("inet", "10.202.0.1") in by_family
    assert ("inet6", "fd00:202::1") in by_family
    v6 = next(x for x in addrs["addr_info"] if x["local"] == "fd00:202::1")
    assert not v6.get("tentative"), "nodad: the IPv6 address must not wait for DAD"
    # Idempotent: configuring the same addresses again is not an error.
    a.call(configure_link, tap_a.name, addrs4=["10.202.0.1/24"], addrs6=["fd00:202::1/64"])


@needs_root
def test_ping_between_namespaces_through_two_taps_and_a_relay(
    tap_pair: tuple[Host, Host, TapDevice, TapDevice],
) -> None:
    a, b, tap_a, tap_b = tap_pair
    with Relay(tap_a, tap_b):
        assert a.ping("10.202.0.2", count=3, timeout=5)
        assert b.ping("fd00:202::1", count=3, timeout=5)
    # Every frame one side read was written to the other, and the counters agree.
    assert tap_a.counters.rx_frames >= 6  # ARP + 3 echo requests + ND/echo replies
    assert tap_a.counters.rx_frames == tap_b.counters.tx_frames
    assert tap_b.counters.rx_frames == tap_a.counters.tx_frames
    assert tap_a.counters.rx_bytes == tap_b.counters.tx_bytes
    assert tap_a.counters.tx_dropped == tap_a.counters.tx_errors == 0
    assert tap_a.counters.rx_batches <= tap_a.counters.rx_frames


@needs_root
def test_write_counts_malformed_frame_instead_of_raising(
    tap_pair: tuple[Host, Host, TapDevice, TapDevice],
) -> None:
    _, _, tap_a, _ = tap_pair
    tap_a.write(b"\x00" * 5)  # shorter than an Ethernet header: the kernel says EINVAL
    assert tap_a.counters.tx_errors == 1
    assert tap_a.counters.tx_frames == 0


def is_arp_request_for(frame: bytes, ip: bytes) -> bool:
    return frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01" and frame[38:42] == ip


@needs_root
async def test_attach_reader_delivers_batches_to_the_callback(lab: Lab) -> None:
    host = lab.add_host("a")
    tap = open_configured(host, MAC_A, "10.202.0.1/24", "fd00:202::1/64")
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[list[bytes]] = asyncio.Queue()
    detach = attach_reader(loop, tap, seen.put_nowait)
    try:
        # Nobody answers, so the kernel keeps asking: ARP requests appear on the TAP.
        ping = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", host.ns, "ping", "-c", "1", "-W", "1", "10.202.0.9",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await ping.wait()
        found = False
        async with asyncio.timeout(5):
            while not found:
                batch = await seen.get()
                assert batch, "the callback only runs with a non-empty batch"
                found = any(is_arp_request_for(f, bytes([10, 202, 0, 9])) for f in batch)
        assert tap.counters.rx_frames >= 1
    finally:
        detach()
        tap.close()
