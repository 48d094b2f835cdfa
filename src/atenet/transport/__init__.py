"""Transports: the thin I/O adapters that move frames between the switch core and the OS.

Each adapter hides its OS tricks (non-blocking fds, batched reads, later offloads) behind a small
interface, so the sans-I/O core never knows whether a frame came from a TAP device, a UDP socket
or a WebSocket. ``tap`` is the Linux TAP device used by ``tok connect``.
"""
