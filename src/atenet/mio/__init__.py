"""mio: programs join an atenet network without root or a TCP/IP stack of their own.

The node runs the TCP/IP stack (``atenet.stack``) for a program, as one switch port; the
program speaks socket commands to it over a WebSocket bus (:mod:`atenet.mio.bus`, docs/mio.md).
"""
