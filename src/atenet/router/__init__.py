"""The ethereal interface: each network's gateway on each node, as sans-I/O cores.

:mod:`atenet.router.gateway` answers ARP / ND / ping for the gateway's addresses and sends
router advertisements (:mod:`atenet.router.ra`); :mod:`atenet.router.forward` holds the router
primitives (TTL decrement, ICMP errors, their rate limit) that routing between networks and NAT
build on; :mod:`atenet.router.dhcp` is the DHCPv4 server whose bindings are chain events.
``docs/router.md`` describes the behaviour.
"""

from atenet.router.gateway import Gateway

__all__ = ["Gateway"]
