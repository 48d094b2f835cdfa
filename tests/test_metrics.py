"""/metrics through prometheus_client (issue 9, item 4; issue 8 "Metrics"): a network name with
``"``, ``}``, ``\\`` or a newline cannot break a scrape, and every family has HELP and TYPE."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from atenet.node.http import serve_http
from atenet.node.metrics import exposition, registry
from atenet.overlay.seal import TYPE_CONTROL, PacketKey, Sealer
from tests.support.chains import serving_node
from tests.support.loopback_node import free_port

EVIL = 'evil"} atenet_fake_total 1e9\n# TYPE x\\'


def families(text: str) -> dict[str, object]:
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    for family in parsed.values():
        assert family.type != "unknown" and family.documentation, family.name
        assert f"# HELP {family.name}" in text and f"# TYPE {family.name}" in text, family.name
    return parsed


def status_with(name: str) -> dict[str, object]:
    port = {"name": f"udp:127.0.0.1:4000/k1 {name}", "kind": "udp", "frames_in": 3,
            "frames_out": 4, "bytes_in": 5, "bytes_out": 6, "drops": 1}  # fmt: skip
    network = {"id": "ab" * 16, "name": name, "member": True, "frames_to_peers": 2,
               "frames_from_peers": 1, "ports": [port], "drops": {"runt": 7}}  # fmt: skip
    return {"datagrams": 10, "send_errors": 0, "uptime": 1.5, "drops": {"short": 1},
            "networks": [network, {**network, "id": "cd" * 16}]}  # fmt: skip


def test_a_hostile_network_name_is_escaped_and_the_scrape_parses() -> None:
    text = exposition(registry(lambda: status_with(EVIL))).decode()
    parsed = families(text)
    assert "atenet_fake" not in parsed
    drops = [s for s in parsed["atenet_drops"].samples if s.labels["network"] == EVIL]
    assert [s.value for s in drops] == [7.0, 7.0]  # two networks of one name: two series
    ports = parsed["atenet_port_frames_in"].samples
    assert {s.labels["network_id"] for s in ports} == {"ab" * 16, "cd" * 16}
    assert parsed["atenet_datagrams"].samples[0].value == 10


async def test_a_real_nodes_metrics_with_a_quoted_network_name(tmp_path: Path) -> None:
    """The chain is created through the chain API (``tok`` may refuse such names)."""
    name = 'q"u}o{t\\e=,'
    async with serving_node(tmp_path, (1,), name=name) as (daemon, world, secrets):
        net = world.chain.network_id
        sock_addr = ("127.0.0.1", daemon.udp_port)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sealer = Sealer(net, PacketKey(secrets[1], 1), 5, time.time_ns())
        hello = json.dumps({"op": "hello", "instance": daemon.instance}).encode()
        http_port = free_port()
        runner = await serve_http(daemon, "127.0.0.1", http_port, token="op")
        try:
            for _ in range(50):
                await loop.sock_sendto(sock, sealer.seal(hello, TYPE_CONTROL), sock_addr)
                await asyncio.sleep(0.1)
                if net in daemon.core.networks and len(daemon.core.networks[net].switch):
                    break
            url = f"http://127.0.0.1:{http_port}/metrics"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
        finally:
            await runner.cleanup()
            sock.close()
    parsed = families(text)
    ports = parsed["atenet_ports"].samples
    assert [(s.labels["network"], s.value) for s in ports] == [(name, 1.0)]
    assert parsed["atenet_port_frames_in"].samples[0].labels["network"] == name
    assert "atenet_lookup_drops" in parsed and "atenet_http_drops" in parsed
