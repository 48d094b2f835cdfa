"""The userspace TCP/IP stack that serves mio ports (sans-I/O; see docs/stack.md)."""

from atenet.stack.iface import AddressEvent, EchoReply, IcmpError, Interface, UdpSocket

__all__ = ["AddressEvent", "EchoReply", "IcmpError", "Interface", "UdpSocket"]
