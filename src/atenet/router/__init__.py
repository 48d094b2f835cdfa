"""The ethereal interface: each network's gateway on each node, as sans-I/O cores.

:mod:`atenet.router.gateway` answers ARP / ND / ping for the gateway's addresses and sends
router advertisements (:mod:`atenet.router.ra`) and routes packets to other networks through
its route table; :mod:`atenet.router.neighbours` is the ARP / ND cache that delivers routed
packets inside a network; :mod:`atenet.router.forward` holds the router primitives (TTL
decrement, fragmentation, ICMP errors, their rate limit); :mod:`atenet.router.dhcp` is the
DHCPv4 server whose bindings are chain events.
``docs/router.md`` describes the behaviour.
"""

from atenet.router.gateway import Gateway
from atenet.router.neighbours import Neighbours

__all__ = ["Gateway", "Neighbours"]
