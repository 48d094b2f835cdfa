"""The ethereal interface: the gateway port every network gets on every node (sans-I/O)."""
