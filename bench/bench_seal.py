"""Micro-benchmark of the overlay packet format and the replay window.

    python bench/bench_seal.py          # a table
    python bench/bench_seal.py --json   # the same numbers as JSON, for tracking over time

Measures, for 64, 1400 and 65000-byte payloads:

- seal: ``Sealer.seal`` (header + AES-256-GCM), one call per packet;
- open: the receive path, ``parse_header`` + ``Opener.open`` (replay check, decrypt, mark);
- the baseline the design rejected: a fresh AES-256-CTR context plus HMAC-SHA256 per packet,
  sealing and opening (verify, then decrypt).

and the replay window's in-order ``check`` + ``update``, against a ring of 64-bit words (the
RFC 6479 layout) to justify using one Python int as the bitmap. Each number is the best of a
few rounds, so a busy machine inflates it less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from atenet.overlay.replay import DEFAULT_SIZE, ReplayWindow
from atenet.overlay.seal import HEADER_LEN, Opener, PacketKey, Sealer, parse_header

SIZES = (64, 1400, 65000)
ROUNDS = 5
ROUND_SECONDS = 0.05


def best_per_op(run: Callable[[int], None], ops: int) -> float:
    """Seconds per operation: best of ROUNDS rounds of ``run(ops)``, ops scaled to the budget."""
    start = time.perf_counter()
    run(ops)
    once = time.perf_counter() - start
    ops = max(1, min(ops, int(ops * ROUND_SECONDS / max(once, 1e-9))))
    best = once / ops if ops else once
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run(ops)
        best = min(best, (time.perf_counter() - start) / ops)
    return best


def bench_sealed(size: int) -> dict[str, float]:
    """Seal and open one payload size with the real format."""
    key = PacketKey(os.urandom(32), 1)
    network = os.urandom(16)
    payload = os.urandom(size)
    sealer = Sealer(network, key, 7, time.time_ns())

    def seal(n: int) -> None:
        for _ in range(n):
            sealer.seal(payload)

    # Opening needs fresh counters, so open a pre-sealed batch in order with a fresh Opener.
    batch = [sealer.seal(payload) for _ in range(max(1, min(5000, 20_000_000 // size)))]

    def open_(n: int) -> None:
        opener = Opener(key)
        for packet in batch[:n]:
            _, _, _, sender_id, counter = parse_header(packet)
            opener.open(packet, sender_id, counter)

    return {
        "seal_s": best_per_op(seal, 20000),
        "open_s": best_per_op(open_, len(batch)),
    }


def bench_baseline(size: int) -> dict[str, float]:
    """A fresh AES-256-CTR context and HMAC-SHA256 per packet (encrypt-then-MAC)."""
    aes_key, mac_key = os.urandom(32), os.urandom(32)
    header = os.urandom(HEADER_LEN)
    payload = os.urandom(size)
    iv = os.urandom(16)

    def seal_one() -> bytes:
        encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
        body = header + encryptor.update(payload) + encryptor.finalize()
        mac = hmac.HMAC(mac_key, hashes.SHA256())
        mac.update(body)
        return body + mac.finalize()[:16]

    packet = seal_one()

    def seal(n: int) -> None:
        for _ in range(n):
            seal_one()

    def open_(n: int) -> None:
        for _ in range(n):
            mac = hmac.HMAC(mac_key, hashes.SHA256())
            mac.update(packet[:-16])
            if not constant_time.bytes_eq(mac.finalize()[:16], packet[-16:]):
                raise AssertionError("baseline packet failed its own MAC")
            decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor()
            decryptor.update(packet[HEADER_LEN:-16])
            decryptor.finalize()

    return {"seal_s": best_per_op(seal, 20000), "open_s": best_per_op(open_, 20000)}


class RingWindow:
    """RFC 6479's layout (a ring of 64-bit words), only to compare against ReplayWindow."""

    BLOCKS = 64  # window of (64 - 1) * 64 = 4032 counters

    def __init__(self) -> None:
        self.top = -1
        self.ring = [0] * self.BLOCKS

    def check(self, counter: int) -> bool:
        behind = self.top - counter
        if behind < 0:
            return True
        if behind >= (self.BLOCKS - 1) * 64:
            return False
        return not (self.ring[(counter >> 6) & (self.BLOCKS - 1)] >> (counter & 63)) & 1

    def update(self, counter: int) -> bool:
        ring, top = self.ring, self.top
        if counter > top:
            current, target = top >> 6, counter >> 6
            for block in range(current + 1, current + 1 + min(target - current, self.BLOCKS)):
                ring[block & (self.BLOCKS - 1)] = 0
            self.top = counter
        elif top - counter >= (self.BLOCKS - 1) * 64:
            return False
        index, bit = (counter >> 6) & (self.BLOCKS - 1), 1 << (counter & 63)
        if ring[index] & bit:
            return False
        ring[index] |= bit
        return True


def bench_window(make: Callable[[], ReplayWindow | RingWindow]) -> dict[str, float]:
    """In-order accept (check then update), the common case, and a check alone."""
    window = make()
    next_counter = [1_700_000_000_000_000_000]

    def accept(n: int) -> None:
        counter = next_counter[0]
        check, update = window.check, window.update
        for c in range(counter, counter + n):
            if check(c):
                update(c)
        next_counter[0] = counter + n

    def check_only(n: int) -> None:
        c = next_counter[0] - 100
        check = window.check
        for _ in range(n):
            check(c)

    def loop_only(n: int) -> None:
        for _c in range(n):
            pass

    loop = best_per_op(loop_only, 200_000)
    return {
        "accept_s": best_per_op(accept, 200_000) - loop,
        "check_s": best_per_op(check_only, 200_000) - loop,
    }


def run() -> dict[str, object]:
    sizes = {}
    for size in SIZES:
        sealed, base = bench_sealed(size), bench_baseline(size)
        sizes[str(size)] = {
            "seal_us": sealed["seal_s"] * 1e6,
            "seal_gbit_s": size * 8 / sealed["seal_s"] / 1e9,
            "open_us": sealed["open_s"] * 1e6,
            "open_gbit_s": size * 8 / sealed["open_s"] / 1e9,
            "baseline_seal_us": base["seal_s"] * 1e6,
            "baseline_open_us": base["open_s"] * 1e6,
            "baseline_over_gcm_seal": base["seal_s"] / sealed["seal_s"],
        }
    window = bench_window(ReplayWindow)
    ring = bench_window(RingWindow)
    return {
        "python": sys.version.split()[0],
        "sizes": sizes,
        "replay_window": {
            "size": DEFAULT_SIZE,
            "accept_ns": window["accept_s"] * 1e9,
            "check_ns": window["check_s"] * 1e9,
            "ring_of_words_accept_ns": ring["accept_s"] * 1e9,
            "ring_of_words_check_ns": ring["check_s"] * 1e9,
        },
    }


def print_table(results: dict[str, object]) -> None:
    sizes = results["sizes"]
    assert isinstance(sizes, dict)
    print(f"atenet seal benchmark (Python {results['python']}, best of {ROUNDS} rounds)\n")
    print(
        f"{'payload B':>9} | {'seal µs':>8} {'Gbit/s':>7} | {'open µs':>8} {'Gbit/s':>7} | "
        f"{'CTR+HMAC seal µs':>16} {'open µs':>8} {'ratio':>6}"
    )
    print("-" * 90)
    for size, row in sizes.items():
        print(
            f"{size:>9} | {row['seal_us']:8.2f} {row['seal_gbit_s']:7.2f} | "
            f"{row['open_us']:8.2f} {row['open_gbit_s']:7.2f} | "
            f"{row['baseline_seal_us']:16.2f} {row['baseline_open_us']:8.2f} "
            f"{row['baseline_over_gcm_seal']:5.1f}x"
        )
    window = results["replay_window"]
    assert isinstance(window, dict)
    print(
        f"\nreplay window ({window['size']} counters, Python int bitmap): "
        f"accept {window['accept_ns']:.0f} ns/op, check {window['check_ns']:.0f} ns/op"
    )
    print(
        f"  ring of 64-bit words (RFC 6479 layout), for comparison: "
        f"accept {window['ring_of_words_accept_ns']:.0f} ns/op, "
        f"check {window['ring_of_words_check_ns']:.0f} ns/op"
    )
    print("\nopen = parse_header + Opener.open (replay check, decrypt, mark).")
    print("ratio = CTR+HMAC seal time / AES-GCM seal time.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = run()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
