"""A Linux TAP device: raw Ethernet frames between the kernel's network stack and atenet.

``tok connect`` gives the local machine a port on a virtual network through a TAP device: the
kernel sees an ordinary Ethernet interface, and every frame it sends there comes out of
:meth:`TapDevice.read_batch`; every frame passed to :meth:`TapDevice.write` arrives on that
interface as if received from the wire.

Two halves, because they have different costs:

* :class:`TapDevice` — the fd and the hot path. ``open`` is a few ioctls (microseconds), so it may
  run on the event loop. The fd is non-blocking; reads drain the queue on each wake-up and writes
  drop instead of blocking, so a slow kernel queue can never stall the switch.
* :func:`configure_link` — addresses, MTU, MAC and link state through rtnetlink (pyroute2). It
  blocks on netlink round trips and is run once per device, so asyncio callers run it in a worker
  thread: ``await asyncio.to_thread(configure_link, tap.name, ...)``.

Offloads: ``open(..., vnet_hdr=True)`` sets ``IFF_VNET_HDR`` and turns on checksum offload and
TSO4/TSO6 (plus ECN, and USO where the kernel has it) with ``TUNSETOFFLOAD``. Every read then
returns a *packet*: a 10-byte virtio-net header followed by the frame, which may be a TCP
super-frame of up to ``gso_max_size`` bytes with its checksum left partial (see
:mod:`atenet.offload`). The kernel stops segmenting and checksumming for us, and accepts
super-frames we write back, so one syscall moves up to 64 KiB instead of one MTU. The
super-frame size is capped with :func:`configure_link`'s ``gso_max_size`` so that a sealed
super-frame still fits one UDP datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from atenet.errors import AtenetError
from atenet.offload import NO_OFFLOAD, VNET_HDR_LEN

Buffer = bytes | bytearray | memoryview

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
"""What a vnet TAP always asks for: checksum offload and TCP segmentation offload."""
OFFLOADS_USO = OFFLOADS | TUN_F_USO4 | TUN_F_USO6
"""Plus UDP segmentation offload (kernel 6.2+); tried first, dropped on EINVAL."""

# <linux/sockios.h>: interface ioctls on any socket.
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1

# rtnetlink address flag: skip duplicate address detection so an IPv6 address is usable at once.
IFA_F_NODAD = 0x02

IFNAMSIZ = 16
IFREQ_SIZE = 40  # sizeof(struct ifreq) on Linux

# One read returns one frame; the buffer must hold the largest frame the device can hand out:
# a 64 KiB IP packet, its Ethernet header (and a VLAN tag) and the virtio-net header. It stays
# below glibc's 128 KiB mmap threshold, so each read's buffer comes from the heap, not mmap.
READ_SIZE = 65536 + 64

DEFAULT_BATCH = 64


class TapError(AtenetError):
    """A TAP device could not be created, configured or used."""


class NeedsNetAdmin(TapError):
    """The process lacks CAP_NET_ADMIN, which creating or configuring a TAP device requires."""

    def __init__(self) -> None:
        super().__init__(
            "tok connect needs root (CAP_NET_ADMIN) to create a TAP device: run it with sudo"
        )


class TunModuleMissing(TapError):
    """/dev/net/tun does not exist: the tun driver is not loaded (or a container hides it)."""

    def __init__(self) -> None:
        super().__init__(
            f"{TUN_PATH} is missing, so no TAP device can be created: "
            "load the tun module: modprobe tun"
        )


class TapNameBusy(TapError):
    """The requested interface name belongs to a device we cannot attach to."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"network device {name!r} already exists and is in use (or is not a TAP device): "
            f"pick another name or remove it with `ip link del {name}`"
        )
        self.name = name


class TapGone(TapError):
    """The TAP device was deleted underneath its open fd (e.g. `ip link del`)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"TAP device {name!r} was removed while in use: reconnect to recreate it")
        self.name = name


def tap_error(err: OSError, name: str) -> AtenetError:
    """Translate an OSError from opening or configuring a TAP device into a user-facing error.

    Kept separate from :meth:`TapDevice.open` so the mapping is testable without root. Errors we
    cannot explain are wrapped with their errno text, still in one line.
    """
    code = err.errno
    if code in (errno.EPERM, errno.EACCES):
        return NeedsNetAdmin()
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return TunModuleMissing()
    if code in (errno.EBUSY, errno.EEXIST, errno.EINVAL):
        # EINVAL from TUNSETIFF means the name exists but is not a TAP we may attach to.
        return TapNameBusy(name)
    if code == errno.EBADFD:
        return TapGone(name)
    return TapError(f"cannot set up TAP device {name!r}: {os.strerror(code or 0)}")


@dataclass(slots=True)
class TapCounters:
    """Frame and byte counts of one TAP device, as seen from atenet (rx = kernel -> atenet)."""

    rx_frames: int = 0
    """Frames read from the kernel."""
    rx_bytes: int = 0
    """Bytes in those frames (Ethernet header included, no FCS)."""
    rx_batches: int = 0
    """Non-empty :meth:`TapDevice.read_batch` calls: rx_frames / rx_batches is the batching gain."""
    tx_frames: int = 0
    """Frames handed to the kernel."""
    tx_bytes: int = 0
    """Bytes in those frames."""
    tx_dropped: int = 0
    """Frames dropped because the kernel queue was full (EAGAIN / ENOBUFS)."""
    tx_errors: int = 0
    """Frames the kernel refused as malformed (too short, too long) or while the device was down."""


def _check_name(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise TapError(
            f"invalid network device name {name!r}: use 1-15 characters, no '/' or spaces"
        )
    return raw


def _check_mac(mac: bytes) -> bytes:
    if len(mac) != 6 or mac[0] & 1 or mac == bytes(6):
        raise ValueError(f"not a unicast MAC address: {mac.hex(':')}")
    return mac


def _enable_offloads(fd: int) -> int:
    """Switch an attached vnet TAP to 10-byte little-endian headers and turn offloads on.

    Returns the TUN_F_* flags in effect. USO is asked for first and dropped if the kernel
    refuses it (EINVAL before 6.2); checksum + TSO have been there since 2.6.
    """
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    # virtio 1.0 byte order (little-endian) on every host, so the header parses the same way
    # whatever the CPU; on little-endian hosts it is what the kernel does anyway.
    fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS_USO)
        return OFFLOADS_USO
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    return OFFLOADS


class TapDevice:
    """An open, non-blocking TAP device (``IFF_TAP | IFF_NO_PI``): one read = one Ethernet frame.

    With ``vnet_hdr`` one read is one *packet* (virtio-net header + frame, see
    :mod:`atenet.offload`) and the frame may be a super-frame; :meth:`write` still takes plain
    frames, :meth:`write_packet` takes packets.

    The device lives as long as the fd: :meth:`close` (or process exit) removes it from the
    kernel, along with its addresses and routes.
    """

    __slots__ = ("_fd", "counters", "name", "offloads", "vnet_hdr")

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool = False, offloads: int = 0) -> None:
        """Wrap an fd already attached with TUNSETIFF; most callers want :meth:`open`."""
        self._fd = fd
        self.name = name
        """The kernel's name for the interface (it may differ from the requested one)."""
        self.vnet_hdr = vnet_hdr
        """Reads and writes carry a virtio-net header (offloads on)."""
        self.offloads = offloads
        """The TUN_F_* offload flags the kernel accepted (0 without vnet_hdr)."""
        self.counters = TapCounters()

    @classmethod
    def open(
        cls,
        name: str = "atenet0",
        mtu: int | None = None,
        mac: bytes | None = None,
        *,
        vnet_hdr: bool = False,
    ) -> TapDevice:
        """Create (or attach to a persistent) TAP device ``name`` in the caller's network namespace.

        ``name`` may be a template such as ``"atenet%d"``; the kernel picks the number. ``mtu``
        and ``mac`` are set right away with socket ioctls, before anyone configures addresses.
        The link stays down until :func:`configure_link` (or ``ip link set up``).

        Raises :class:`NeedsNetAdmin`, :class:`TunModuleMissing`, :class:`TapNameBusy`.
        """
        raw = _check_name(name)
        if mac is not None:
            _check_mac(mac)
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        offloads = 0
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise tap_error(err, name) from None
        try:
            ifr = struct.pack("16sH", raw, flags).ljust(IFREQ_SIZE, b"\0")
            got = fcntl.ioctl(fd, TUNSETIFF, ifr)
            real_name = got[:IFNAMSIZ].rstrip(b"\0").decode()
            if vnet_hdr:
                offloads = _enable_offloads(fd)
            if mtu is not None:
                set_mtu(real_name, mtu)
            if mac is not None:
                set_mac(real_name, mac)
        except OSError as err:
            os.close(fd)
            raise tap_error(err, name) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, real_name, vnet_hdr=vnet_hdr, offloads=offloads)

    def fileno(self) -> int:
        """The device fd, for ``loop.add_reader`` / selectors."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read_batch(self, max_frames: int = DEFAULT_BATCH) -> list[bytes]:
        """Read frames until the kernel queue is empty or ``max_frames`` are read.

        Draining on each wake-up costs one failed read (EAGAIN) per batch instead of one
        event-loop round trip per frame. ``max_frames`` bounds the time spent here so other
        sockets get their turn; a level-triggered reader fires again if frames remain.
        Returns an empty list when nothing was waiting.
        """
        frames: list[bytes] = []
        append = frames.append
        read = os.read
        fd = self._fd
        nbytes = 0
        try:
            for _ in range(max_frames):
                frame = read(fd, READ_SIZE)
                append(frame)
                nbytes += len(frame)
        except BlockingIOError:
            pass
        except OSError as err:
            if err.errno == errno.EBADFD:
                raise TapGone(self.name) from None
            raise
        if frames:
            counters = self.counters
            counters.rx_frames += len(frames)
            counters.rx_bytes += nbytes
            counters.rx_batches += 1
        return frames

    def write(self, frame: Buffer) -> None:
        """Hand one Ethernet frame to the kernel; drop it (and count) rather than block or raise.

        A switch port must never stall the other ports, so a full queue drops the frame
        (``tx_dropped``) and a frame the kernel rejects is counted (``tx_errors``): one bad frame
        from the overlay must not take the port down. Only a deleted device raises.

        On a vnet TAP the frame goes out behind an all-zero header (complete checksums, no
        segmentation), gathered by ``writev`` rather than copied.
        """
        if self.vnet_hdr:
            self._write(os.writev, [NO_OFFLOAD, frame], len(frame))
        else:
            self._write(os.write, frame, len(frame))

    def write_packet(self, packet: Buffer) -> None:
        """Hand the kernel one packet (virtio-net header + frame) on a vnet TAP, as :meth:`write`.

        The kernel checks the header like any virtual machine's (a malformed one is a
        ``tx_errors``) and takes a super-frame whole: its TCP stack never sees the segments.
        """
        if not self.vnet_hdr:
            raise TapError(f"TAP device {self.name!r} has no vnet header: use write(frame)")
        self._write(os.write, packet, len(packet) - VNET_HDR_LEN)

    def _write(self, syscall: Callable[[int, Any], int], data: Any, nbytes: int) -> None:
        try:
            syscall(self._fd, data)
        except BlockingIOError:
            self.counters.tx_dropped += 1
        except OSError as err:
            code = err.errno
            if code == errno.ENOBUFS:
                self.counters.tx_dropped += 1
            elif code in (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.EFAULT):
                self.counters.tx_errors += 1
            elif code == errno.EBADFD:
                raise TapGone(self.name) from None
            else:
                raise
        else:
            counters = self.counters
            counters.tx_frames += 1
            counters.tx_bytes += nbytes

    def close(self) -> None:
        """Close the fd; a non-persistent device disappears with it. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TapDevice {self.name} fd={self._fd}>"


def _ifreq_ioctl(request: int, payload: bytes, name: str) -> None:
    """Run an interface ioctl (``struct ifreq``) on a throwaway socket in the current netns."""
    ifr = struct.pack("16s", name.encode()) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, request, ifr.ljust(IFREQ_SIZE, b"\0"))


def set_mtu(name: str, mtu: int) -> None:
    """Set an interface's MTU with SIOCSIFMTU (no netlink round trip; safe on the event loop)."""
    if not 68 <= mtu <= 65535:
        raise ValueError(f"MTU {mtu} out of range 68..65535")
    _ifreq_ioctl(SIOCSIFMTU, struct.pack("i", mtu), name)


def set_mac(name: str, mac: bytes) -> None:
    """Set an interface's MAC with SIOCSIFHWADDR (no netlink round trip; safe on the event loop)."""
    _ifreq_ioctl(SIOCSIFHWADDR, struct.pack("H14s", ARPHRD_ETHER, _check_mac(mac)), name)


def _disable_dad(name: str) -> None:
    """Turn off IPv6 DAD on the device, so addresses (incl. link-local) are usable at once.

    Best effort: the sysctl tree is the caller's netns's, and IPv6 may be disabled entirely.
    """
    with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{name}/accept_dad", "w") as f:
        f.write("0")


def configure_link(
    name: str,
    mac: bytes | None = None,
    mtu: int | None = None,
    addrs4: Iterable[str] = (),
    addrs6: Iterable[str] = (),
    *,
    up: bool = True,
    gso_max_size: int | None = None,
    txqlen: int | None = None,
) -> None:
    """Set MAC, MTU and addresses of interface ``name`` and bring it up, via rtnetlink.

    ``gso_max_size`` caps the super-frames the kernel builds for a vnet TAP (IFLA_GSO_MAX_SIZE,
    the whole skb as the stack sees it). ``txqlen`` is how many frames (or super-frames) the
    kernel queues for us to read before dropping: a short queue keeps latency under load low,
    because a TCP sender fills whatever queue sits in front of the bottleneck.

    Blocking (netlink round trips, pyroute2 setup): from asyncio, run it in a worker thread with
    ``await asyncio.to_thread(configure_link, ...)``. Acts on the calling thread's network
    namespace. Addresses are CIDR strings (``"10.202.0.1/24"``, ``"fd00::1/64"``); adding an
    address that is already there is not an error, so reconnecting is idempotent. IPv6 addresses
    are added with ``nodad`` (and DAD is disabled on the device), so they work immediately
    instead of after a ~1 s tentative phase.
    """
    # pyroute2 is heavy to import and only needed here, off the hot path.
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    ifaces4 = [ipaddress.IPv4Interface(a) for a in addrs4]
    ifaces6 = [ipaddress.IPv6Interface(a) for a in addrs6]
    if mac is not None:
        _check_mac(mac)
    _disable_dad(name)
    try:
        with IPRoute() as ipr:
            index = _link_index(ipr, name)
            link: dict[str, object] = {}
            if mac is not None:
                link["address"] = mac.hex(":")
            if mtu is not None:
                link["mtu"] = mtu
            if gso_max_size is not None:
                link["gso_max_size"] = gso_max_size
            if txqlen is not None:
                link["txqlen"] = txqlen
            if link:
                ipr.link("set", index=index, **link)
            for iface4 in ifaces4:
                ipr.addr(
                    "replace",
                    index=index,
                    address=str(iface4.ip),
                    prefixlen=iface4.network.prefixlen,
                    family=socket.AF_INET,
                )
            for iface6 in ifaces6:
                ipr.addr(
                    "replace",
                    index=index,
                    address=str(iface6.ip),
                    prefixlen=iface6.network.prefixlen,
                    family=socket.AF_INET6,
                    flags=IFA_F_NODAD,
                )
            if up:
                ipr.link("set", index=index, state="up")
    except NetlinkError as err:
        raise tap_error(OSError(err.code, os.strerror(err.code)), name) from None


DEFAULT_ROUTE_METRIC = 1024
"""The metric of a default route through a TAP (the kernel's own for a router advertisement's):
a default route the host already has (metric 0 when static, 100-600 from NetworkManager) keeps
winning, so connecting to a network with internet access never takes over a host's uplink."""


def _metric(dst: str) -> dict[str, int]:
    """The route's priority: :data:`DEFAULT_ROUTE_METRIC` for a default route, else none."""
    return {"priority": DEFAULT_ROUTE_METRIC} if dst.endswith("/0") else {}


def update_addresses(
    name: str,
    *,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    routes_add: Iterable[tuple[str, str]] = (),
    routes_remove: Iterable[tuple[str, str]] = (),
) -> None:
    """Change addresses and gateway routes of interface ``name`` after :func:`configure_link`:
    what a DHCP lease that comes, changes or goes needs.

    Addresses are CIDR strings (v4 or v6), routes ``(destination CIDR, gateway address)``
    pairs through ``name``. Removals come first (routes, then addresses) and an address or
    route that is already gone is not an error; additions replace what is there. Blocking
    (netlink round trips): from asyncio, run it in a worker thread.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def family(text: str) -> int:
        return socket.AF_INET6 if ":" in text else socket.AF_INET

    gone = (errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)
    try:
        with IPRoute() as ipr:
            index = _link_index(ipr, name)
            for dst, via in routes_remove:
                try:
                    ipr.route(
                        "del", dst=dst, gateway=via, oif=index, family=family(dst), **_metric(dst)
                    )
                except NetlinkError as err:
                    if err.code not in gone:
                        raise
            for text in remove:
                iface = ipaddress.ip_interface(text)
                try:
                    ipr.addr(
                        "del",
                        index=index,
                        address=str(iface.ip),
                        prefixlen=iface.network.prefixlen,
                        family=family(text),
                    )
                except NetlinkError as err:
                    if err.code not in gone:
                        raise
            for text in add:
                iface = ipaddress.ip_interface(text)
                ipr.addr(
                    "replace",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    family=family(text),
                    **({"flags": IFA_F_NODAD} if iface.version == 6 else {}),
                )
            for dst, via in routes_add:
                ipr.route(
                    "replace", dst=dst, gateway=via, oif=index, family=family(dst), **_metric(dst)
                )
    except NetlinkError as err:
        raise tap_error(OSError(err.code, os.strerror(err.code)), name) from None


def attach_reader(
    loop: asyncio.AbstractEventLoop,
    tap: TapDevice,
    callback: Callable[[list[bytes]], object],
    max_frames: int = DEFAULT_BATCH,
) -> Callable[[], None]:
    """Call ``callback(frames)`` with each batch the TAP device yields; return a detach function.

    One wake-up reads up to ``max_frames`` frames (until EAGAIN) and hands them over as one
    list, so the consumer can seal once per batch. If more frames remain, the level-triggered
    reader fires again on the next loop iteration, after other ready sockets had their turn.
    An exception from ``callback`` goes to the loop's exception handler; the reader stays.
    """
    fd = tap.fileno()
    read_batch = tap.read_batch

    def on_readable() -> None:
        frames = read_batch(max_frames)
        if frames:
            callback(frames)

    loop.add_reader(fd, on_readable)

    def detach() -> None:
        loop.remove_reader(fd)

    return detach


def _link_index(ipr: Any, name: str) -> int:
    """The interface index of device ``name`` through an open ``IPRoute``."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise TapError(f"no network device {name!r}: open the TAP device first")
    return int(found[0])
