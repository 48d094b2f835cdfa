"""The switch: ports, flooding, the loop rule, liveness (sans-I/O)."""

from atenet.switch.core import Port, Switch

__all__ = ["Port", "Switch"]
