"""The DHCP bind limits hold per access key, not per port object (node/core.py `_to_gateway`).

bench/bench_dhcp.py showed one key holder writing the node's whole lease budget (a burst of 64,
then 2 per second) by spreading random-MAC REQUESTs over the 64 ports a key may hold on a node,
or by reopening its session (a new port, a new full bucket), and so starving every other
client of new bindings on that node. Keyed by access key, one key gets the per-port budget
(8, then 1 per 30 s) however many sessions it opens, and the others keep theirs.
"""

from __future__ import annotations

from scapy.all import BOOTP, DHCP, Ether  # type: ignore[attr-defined]

from atenet.switch.core import Port
from tests.support.chains import World
from tests.test_dhcp import client_frame
from tests.test_gateway_node import GW, NOW, commit, node


class KeyPort(Port):
    """A local port opened with access key ``key_id`` that keeps what it is given."""

    def __init__(self, name: str, key_id: int) -> None:
        super().__init__(name, "test", NOW, key_id)
        self.got: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.got.append(frame)


def acks_for(port: KeyPort, mac: bytes) -> list[bytes]:
    return [
        f for f in port.got if f.startswith(mac) and ("message-type", 5) in Ether(f)[DHCP].options
    ]


async def test_one_key_with_many_sessions_gets_one_budget_and_cannot_starve_other_keys(
    world: World,
) -> None:
    _core, runtime, _ = node(world)
    sessions = [KeyPort(f"spray{i}", 1) for i in range(12)]  # 12 sessions of key 1
    for port in sessions:
        runtime.add_port(port.name, port)
    n = 0
    for port in sessions:
        for _ in range(8):  # each session's own budget, if it had one
            n += 1
            mac = bytes([2, 0xEE, 0, 0, n >> 8, n & 0xFF])
            ip = f"10.9.8.{n % 250 + 2}"
            runtime.switch.from_local(port, client_frame(mac, "request", requested=ip))
    sprayed = len(runtime.binds)
    await commit(world, runtime, world.node_a)
    assert sprayed == 8  # the key's budget, not 8 per session (it was 64: the server's)
    assert runtime.dhcp.counters["bind_rate_limited"] == 96 - 8

    honest = KeyPort("honest", 2)
    runtime.add_port("honest", honest)
    mac = bytes.fromhex("02aa000000ff")
    runtime.switch.from_local(honest, client_frame(mac, "discover"))
    (offer,) = [f for f in honest.got if f.startswith(mac)]
    ip = Ether(offer)[BOOTP].yiaddr
    runtime.switch.from_local(honest, client_frame(mac, "request", requested=ip, server_id=GW))
    await commit(world, runtime, world.node_a)
    assert len(acks_for(honest, mac)) == 1  # another key still gets its binding
    assert world.chain.state.leases[ip]["mac"] == mac.hex(":")
