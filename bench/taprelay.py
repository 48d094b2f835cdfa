"""A minimal Python switch for the bench: two TAP devices in two namespaces joined by a loop.

    python bench/taprelay.py NS_A ADDR_A NS_B ADDR_B

Opens ``tap0`` in each namespace (addresses as CIDR), prints ``ready`` and relays frames both
ways with ``read_batch``/``write`` until SIGTERM. No UDP, no crypto: it measures the floor
cost of moving frames through TAP devices in Python — what atenet's hot path cannot go below.
"""

from __future__ import annotations

import select
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.netns import in_netns

from atenet.transport.tap import TapDevice, configure_link


def open_tap(addr: str) -> TapDevice:
    tap = TapDevice.open("tap0", mtu=1500)
    configure_link(tap.name, addrs4=[addr])
    return tap


def main() -> None:
    ns_a, addr_a, ns_b, addr_b = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    a = in_netns(ns_a, open_tap, addr_a)
    b = in_netns(ns_b, open_tap, addr_b)
    peer = {a: b, b: a}
    print("ready", flush=True)
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [])
            for src in ready:
                write = peer[src].write
                for frame in src.read_batch():
                    write(frame)
    finally:
        a.close()
        b.close()


if __name__ == "__main__":
    main()
