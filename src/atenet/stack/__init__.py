"""A userspace TCP/IP stack (sans-I/O) for mio ports."""
