"""atenet: a distributed virtual Ethernet switch.

Each virtual network is backed by a chain (a signed, encrypted, append-only log) kept in a chain
store; nodes subscribe to the chains of the networks they serve and switch Ethernet frames
between their ports. See docs/ for the formats and DESIGN.md for the big picture.
"""

__version__ = "0.1.0"
