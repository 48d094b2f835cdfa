"""The Internet checksum (RFC 1071) and the pseudo-header sums of UDP, TCP and ICMPv6.

Why the big-integer trick: the one's-complement sum of 16-bit words is the sum modulo 0xFFFF
(because 2**16 ≡ 1 mod 0xFFFF), so reading the whole buffer as one big-endian integer and taking
it modulo 0xFFFF gives the same sum in C speed. Measured on CPython 3.11 for 1400 bytes: ~3.4 µs,
against ~14 µs for ``sum(array("H", ...))`` with a byte swap. The only subtlety is that
one's-complement arithmetic has two zeros: a sum over words that are not all zero is 0xFFFF
("negative zero"), never 0, so :func:`_fold` maps a non-zero total that is ≡ 0 to 0xFFFF.

Partial sums (:func:`ones_sum`, :func:`pseudo_header_v4`, :func:`pseudo_header_v6`) are plain
non-negative integers that can be added together before the final :func:`checksum`; that is how
a pseudo header joins the upper-layer bytes without concatenating buffers.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "checksum",
    "ones_sum",
    "pseudo_header",
    "pseudo_header_v4",
    "pseudo_header_v6",
    "verify",
]

Buffer = bytes | bytearray | memoryview


def ones_sum(data: Buffer) -> int:
    """Unfolded sum of ``data`` as 16-bit big-endian words; an odd last byte is padded with 0.

    The result is only meaningful modulo 0xFFFF; add several of them, then call
    :func:`checksum` (with ``initial``) to fold and complement.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # the pad byte goes after the last byte: shift the whole number left
    return total


def _fold(total: int) -> int:
    """One's-complement 16-bit sum of an unfolded total (0 only when every word was 0)."""
    folded = total % 0xFFFF
    if folded == 0 and total != 0:
        return 0xFFFF
    return folded


def checksum(data: Buffer, initial: int = 0) -> int:
    """The Internet checksum of ``data`` plus an unfolded partial sum ``initial``.

    Put the result into the (zeroed) checksum field of the header it covers.
    """
    return ~_fold(initial + ones_sum(data)) & 0xFFFF


def verify(data: Buffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xFFFF: valid."""
    return _fold(initial + ones_sum(data)) == 0xFFFF


def pseudo_header_v4(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo header (RFC 768, RFC 793): addresses are 4 packed bytes."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length


def pseudo_header_v6(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """Partial sum of the IPv6 pseudo header (RFC 8200 §8.1): addresses are 16 packed bytes.

    ``length`` is the upper-layer packet length (32 bits), ``next_header`` the upper-layer
    protocol (not the first extension header).
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + length + next_header


def pseudo_header(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, protocol: int, length: int
) -> int:
    """Partial pseudo-header sum for either IP version (taken from the type of ``src``).

    This is what UDP, TCP and ICMPv6 add to their own bytes; ICMPv4 has no pseudo header.
    """
    if src.version != dst.version:
        raise ValueError(f"pseudo header mixes IPv{src.version} and IPv{dst.version} addresses")
    return int(src) + int(dst) + protocol + length
