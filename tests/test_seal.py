"""The sealed overlay packet: format, key derivation, authentication of every byte, replays."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.errors import AtenetError
from atenet.overlay.replay import AHEAD_SKEW, PAST_SKEW, Freshness
from atenet.overlay.seal import (
    HEADER_LEN,
    NODE_KEY_ID,
    OVERHEAD,
    TAG_LEN,
    TYPE_CONTROL,
    TYPE_FRAME,
    TYPE_SUPERFRAME,
    VERSION,
    Opener,
    PacketKey,
    Sealer,
    SealError,
    derive_node_secret,
    network_id_of,
    open_packet,
    parse_header,
)

SECRET = bytes(range(32))
NETWORK = bytes(range(0xA0, 0xB0))
SENDER = 0x01020304
START = 0x1122334455667788
FRAME = b"atenet test frame"

# Pinned once from this implementation and cross-checked below against an independent
# HKDF (stdlib hmac) and a plain AESGCM decrypt. If these change, every deployed peer breaks.
KAT_AES_KEY = "a7993718fa6c5d23d1011e2d870183f8261440e0e87e1633c909fedd6d549bde"
KAT_AUTH_KEY = "90f2865a8eeae01fa4c4be68a177843c007d2c85ef4b79003957a6b3484bab50"
KAT_NODE_SECRET = "efa61e848980bfff435ca94dd0f96f66a05bf61624ec209c8122cfe2f630b351"
KAT_PACKET = (
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"  # network id
    "01"  # version
    "01"  # type: Ethernet frame
    "00000001"  # key id
    "01020304"  # sender id
    "1122334455667788"  # counter
    "0407b6a9c0e9e0f90fc169c3329f5ac378"  # ciphertext of FRAME (17 bytes)
    "56cf387d31397260ea780ff92169ef40"  # GCM tag
)


def hkdf_sha256_32(secret: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt and one output block, written out independently of the module."""
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


@pytest.fixture
def key() -> PacketKey:
    return PacketKey(SECRET, 1)


@pytest.fixture
def sealer(key: PacketKey) -> Sealer:
    return Sealer(NETWORK, key, SENDER, START)


# --- constants and key derivation -------------------------------------------------------------


def test_constants_add_up() -> None:
    assert (HEADER_LEN, TAG_LEN, OVERHEAD) == (34, 16, 50)
    assert (TYPE_FRAME, TYPE_SUPERFRAME, TYPE_CONTROL, NODE_KEY_ID, VERSION) == (1, 2, 3, 0, 1)


def test_key_derivation_known_answers(key: PacketKey) -> None:
    assert key.auth_key.hex() == KAT_AUTH_KEY
    assert derive_node_secret(SECRET).hex() == KAT_NODE_SECRET


def test_key_derivation_is_hkdf_sha256_with_the_documented_infos(key: PacketKey) -> None:
    assert hkdf_sha256_32(SECRET, b"atenet/v1 packet aes-256-gcm").hex() == KAT_AES_KEY
    assert hkdf_sha256_32(SECRET, b"atenet/v1 packet sha-256 auth").hex() == KAT_AUTH_KEY
    assert hkdf_sha256_32(SECRET, b"atenet/v1 node-to-node secret").hex() == KAT_NODE_SECRET


def test_aes_and_auth_keys_are_distinct_and_deterministic() -> None:
    a, b = PacketKey(SECRET, 1), PacketKey(SECRET, 1)
    assert a.auth_key == b.auth_key
    assert KAT_AES_KEY != KAT_AUTH_KEY != KAT_NODE_SECRET
    assert a.auth_key != SECRET and bytes.fromhex(KAT_AES_KEY) != SECRET
    assert PacketKey(bytes(32), 1).auth_key != a.auth_key


def test_known_answer_packet(sealer: Sealer) -> None:
    assert sealer.seal(FRAME).hex() == KAT_PACKET


def test_packet_layout_matches_the_documentation() -> None:
    """Open the pinned packet with nothing but AESGCM and the byte layout from protocol.md."""
    packet = bytes.fromhex(KAT_PACKET)
    aead = AESGCM(bytes.fromhex(KAT_AES_KEY))
    header = packet[:34]
    assert header[:16] == NETWORK
    assert header[16] == 1 and header[17] == 1
    assert int.from_bytes(header[18:22], "big") == 1
    assert int.from_bytes(header[22:26], "big") == SENDER
    assert int.from_bytes(header[26:34], "big") == START
    nonce = SENDER.to_bytes(4, "big") + START.to_bytes(8, "big")
    assert aead.decrypt(nonce, packet[34:], header) == FRAME


def test_packet_key_rejects_bad_secret_and_key_id() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PacketKey(bytes(16), 1)
    with pytest.raises(ValueError, match="u32"):
        PacketKey(SECRET, 1 << 32)
    with pytest.raises(ValueError, match="32 bytes"):
        derive_node_secret(b"short")


def test_packet_key_repr_hides_key_material(key: PacketKey) -> None:
    assert KAT_AUTH_KEY not in repr(key) and key.auth_key.hex() not in repr(key)
    assert repr(key) == "PacketKey(key_id=1)"


# --- seal, parse, open ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 64, 1400, 65000])
def test_round_trip(sealer: Sealer, key: PacketKey, size: int) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    packet = sealer.seal(payload)
    assert len(packet) == size + OVERHEAD
    assert parse_header(packet) == (NETWORK, TYPE_FRAME, 1, SENDER, START)
    assert open_packet(key, packet) == payload
    assert Opener(key).open(packet, SENDER, START) == payload


def test_seal_accepts_a_memoryview_and_opens_one(sealer: Sealer, key: PacketKey) -> None:
    buffer = bytearray(b"xx" + FRAME + b"yy")
    packet = sealer.seal(memoryview(buffer)[2:-2])
    received = memoryview(bytearray(b"\0" * 8 + packet))[8:]
    assert open_packet(key, received) == FRAME
    assert parse_header(received)[4] == START


def test_counter_increments_once_per_packet(sealer: Sealer) -> None:
    counters = [parse_header(sealer.seal(FRAME))[4] for _ in range(3)]
    assert counters == [START, START + 1, START + 2]
    assert sealer.counter == START + 3


def test_same_payload_seals_differently_each_time(sealer: Sealer) -> None:
    """A fresh nonce per packet: equal frames give unrelated ciphertexts."""
    first, second = sealer.seal(FRAME), sealer.seal(FRAME)
    assert first[HEADER_LEN:] != second[HEADER_LEN:]


@pytest.mark.parametrize("ptype", [TYPE_FRAME, TYPE_SUPERFRAME, TYPE_CONTROL])
def test_packet_type_is_carried(sealer: Sealer, key: PacketKey, ptype: int) -> None:
    packet = sealer.seal(FRAME, ptype)
    assert parse_header(packet)[1] == ptype
    assert open_packet(key, packet) == FRAME


def test_node_key_uses_key_id_zero() -> None:
    node_key = PacketKey(derive_node_secret(SECRET), NODE_KEY_ID)
    packet = Sealer(NETWORK, node_key, 9, 0).seal(FRAME)
    assert parse_header(packet)[2] == 0
    assert open_packet(node_key, packet) == FRAME
    with pytest.raises(SealError) as caught:
        open_packet(PacketKey(SECRET, NODE_KEY_ID), packet)
    assert caught.value.reason == "auth"


def test_network_id_of(sealer: Sealer) -> None:
    assert network_id_of(sealer.seal(FRAME)) == NETWORK
    assert network_id_of(memoryview(sealer.seal(FRAME))) == NETWORK


def test_sealer_rejects_bad_arguments(key: PacketKey) -> None:
    with pytest.raises(ValueError, match="network id"):
        Sealer(bytes(15), key, 1, 0)
    with pytest.raises(ValueError, match="sender id"):
        Sealer(NETWORK, key, -1, 0)
    with pytest.raises(ValueError, match="counter"):
        Sealer(NETWORK, key, 1, 1 << 64)
    with pytest.raises(ValueError, match="packet type 9"):
        Sealer(NETWORK, key, 1, 0).seal(FRAME, 9)


def test_sealer_refuses_to_wrap_the_counter(key: PacketKey) -> None:
    sealer = Sealer(NETWORK, key, 1, (1 << 64) - 1)
    last = sealer.seal(FRAME)
    assert parse_header(last)[4] == (1 << 64) - 1
    with pytest.raises(SealError) as caught:
        sealer.seal(FRAME)
    assert caught.value.reason == "counter"
    assert "new sender session" in str(caught.value)


def reason_of(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(SealError) as caught:
        call(*args)
    assert isinstance(caught.value, AtenetError)
    return caught.value.reason


def test_every_header_byte_is_authenticated(sealer: Sealer, key: PacketKey) -> None:
    packet = sealer.seal(FRAME)
    for at in range(HEADER_LEN):
        for flip in (0x01, 0x80):
            altered = bytearray(packet)
            altered[at] ^= flip
            assert reason_of(open_packet, key, bytes(altered)) == "auth", (at, flip)


def test_every_ciphertext_and_tag_byte_is_authenticated(sealer: Sealer, key: PacketKey) -> None:
    packet = sealer.seal(FRAME)
    for at in range(HEADER_LEN, len(packet)):
        altered = bytearray(packet)
        altered[at] ^= 0x01
        assert reason_of(open_packet, key, bytes(altered)) == "auth", at


def test_wrong_key_fails_auth(sealer: Sealer) -> None:
    packet = sealer.seal(FRAME)
    assert reason_of(open_packet, PacketKey(bytes(32), 1), packet) == "auth"
    assert reason_of(Opener(PacketKey(bytes(32), 1)).open, packet, SENDER, START) == "auth"


@pytest.mark.parametrize("length", [0, 1, 16, 33, 34, 49])
def test_truncated_packet_is_short(sealer: Sealer, key: PacketKey, length: int) -> None:
    packet = sealer.seal(FRAME)[:length]
    assert reason_of(parse_header, packet) == "short"
    assert reason_of(open_packet, key, packet) == "short"
    assert reason_of(Opener(key).open, packet, SENDER, START) == "short"


def test_truncated_ciphertext_fails_auth(sealer: Sealer, key: PacketKey) -> None:
    packet = sealer.seal(FRAME)
    assert reason_of(open_packet, key, packet[:-1]) == "auth"
    assert reason_of(open_packet, key, packet + b"\0") == "auth"


def test_empty_payload_packet_is_exactly_the_overhead(sealer: Sealer, key: PacketKey) -> None:
    packet = sealer.seal(b"")
    assert len(packet) == OVERHEAD
    assert open_packet(key, packet) == b""


def test_parse_header_rejects_other_versions_and_types(sealer: Sealer) -> None:
    packet = bytearray(sealer.seal(FRAME))
    packet[16] = 2
    assert reason_of(parse_header, bytes(packet)) == "version"
    packet[16] = VERSION
    for bad_type in (0, 4, 255):
        packet[17] = bad_type
        assert reason_of(parse_header, bytes(packet)) == "type"


# --- Opener: authentication plus replay window ------------------------------------------------


def open_parsed(opener: Opener, packet: bytes) -> bytes:
    """What the receive path does: parse, then open with the parsed sender and counter."""
    _, _, _, sender_id, counter = parse_header(packet)
    return opener.open(packet, sender_id, counter)


def test_replayed_packet_is_rejected(sealer: Sealer, key: PacketKey) -> None:
    opener = Opener(key)
    packet = sealer.seal(FRAME)
    assert open_parsed(opener, packet) == FRAME
    assert reason_of(open_parsed, opener, packet) == "replay"


def test_out_of_order_within_window_accepted_once(sealer: Sealer, key: PacketKey) -> None:
    opener = Opener(key)
    packets = [sealer.seal(bytes([i])) for i in range(10)]
    for i in (0, 9, 3, 5, 1, 2, 4, 8, 6, 7):
        assert open_parsed(opener, packets[i]) == bytes([i])
    for packet in packets:
        assert reason_of(open_parsed, opener, packet) == "replay"


def test_a_new_window_is_closed_below_its_first_counter(sealer: Sealer, key: PacketKey) -> None:
    """A sender's packets sealed before the first one this receiver took are refused: the
    receiver cannot tell a late one from a capture (e.g. a flood it was not sent at the time)."""
    opener = Opener(key)
    earlier, first = sealer.seal(b"earlier"), sealer.seal(b"first")
    assert open_parsed(opener, first) == b"first"
    assert reason_of(open_parsed, opener, earlier) == "replay"


def test_packet_older_than_window_rejected(key: PacketKey) -> None:
    opener = Opener(key, window_size=64)
    sealer = Sealer(NETWORK, key, SENDER, 0)
    old = sealer.seal(b"old")
    for _ in range(64):
        sealer.seal(b"skipped")
    assert open_parsed(opener, sealer.seal(b"new")) == b"new"  # counter 65
    assert reason_of(open_parsed, opener, old) == "replay"


def test_forged_packet_does_not_move_the_window(sealer: Sealer, key: PacketKey) -> None:
    """A forgery with a huge counter fails auth and must not make genuine packets look stale."""
    opener = Opener(key)
    assert open_parsed(opener, sealer.seal(FRAME)) == FRAME
    forged = bytearray(sealer.seal(FRAME))
    forged[26:34] = b"\xff" * 8
    assert reason_of(open_parsed, opener, bytes(forged)) == "auth"
    assert open_parsed(opener, sealer.seal(FRAME)) == FRAME


def test_senders_have_separate_windows(key: PacketKey) -> None:
    opener = Opener(key)
    one, two = Sealer(NETWORK, key, 1, 100), Sealer(NETWORK, key, 2, 100)
    assert open_parsed(opener, one.seal(b"a")) == b"a"
    assert open_parsed(opener, two.seal(b"b")) == b"b"  # same counter, other sender
    assert len(opener) == 2


def test_opener_authenticates_the_sender_and_counter_it_is_given(
    sealer: Sealer, key: PacketKey
) -> None:
    """A caller passing values that differ from the header gets auth, not a corrupted window."""
    opener = Opener(key)
    packet = sealer.seal(FRAME)
    assert reason_of(opener.open, packet, SENDER, START + 1) == "auth"
    assert reason_of(opener.open, packet, SENDER + 1, START) == "auth"
    assert len(opener) == 0
    assert opener.open(packet, SENDER, START) == FRAME


def test_unauthenticated_senders_get_no_window(sealer: Sealer, key: PacketKey) -> None:
    opener = Opener(key)
    for sender_id in range(50):
        packet = Sealer(NETWORK, PacketKey(bytes(32), 1), sender_id, 0).seal(FRAME)
        assert reason_of(open_parsed, opener, packet) == "auth"
    assert len(opener) == 0


def test_sender_table_is_bounded(key: PacketKey) -> None:
    """Full of senders active within the skew, a new sender is refused, not let in by
    forgetting a window whose packets would then be accepted once more."""
    opener = Opener(key, max_senders=3)
    for sender_id in range(3):
        open_parsed(opener, Sealer(NETWORK, key, sender_id, 0).seal(FRAME))
    assert reason_of(open_parsed, opener, Sealer(NETWORK, key, 9, 0).seal(FRAME)) == "senders_full"
    assert len(opener) == 3


def test_evicted_sender_falls_back_to_the_time_floor(key: PacketKey) -> None:
    """A window is only forgotten once its sender is older than the skew; a captured packet of
    that sender replayed afterwards meets the floor instead of a fresh window (before the fix
    the oldest window was dropped as soon as the table was full, and its packets opened again)."""
    fresh = Freshness()
    opener = Opener(key, max_senders=2, freshness=fresh)
    t0 = 1_700_000_000.0
    fresh.set_now(t0)
    old = Sealer(NETWORK, key, 1, int(t0 * 1e9))
    captured = old.seal(b"captured")
    assert open_parsed(opener, captured) == b"captured"
    open_parsed(opener, Sealer(NETWORK, key, 2, int(t0 * 1e9)).seal(FRAME))
    fresh.set_now(t0 + PAST_SKEW + 1)  # sender 1 fell silent longer than the skew
    newcomer = Sealer(NETWORK, key, 3, int((t0 + PAST_SKEW + 1) * 1e9))
    assert open_parsed(opener, newcomer.seal(FRAME)) == FRAME  # room made by forgetting 1 and 2
    assert len(opener) == 1
    assert reason_of(open_parsed, opener, captured) == "stale"


def test_fresh_sender_floor_and_ceiling(key: PacketKey) -> None:
    """A sender with no window here: counters older than now - skew, below the receiver's
    start, or too far ahead are refused before any crypto (a forged tag still says stale)."""
    t0 = 1_700_000_000.0
    fresh = Freshness(start_ns=int(t0 * 1e9))
    fresh.set_now(t0 + 100)
    opener = Opener(key, freshness=fresh)

    def sealed_at(t: float, sender: int) -> bytes:
        return Sealer(NETWORK, key, sender, int(t * 1e9)).seal(FRAME)

    assert reason_of(open_parsed, opener, sealed_at(t0 + 100 - PAST_SKEW - 1, 1)) == "stale"
    assert reason_of(open_parsed, opener, sealed_at(t0 + 100 + AHEAD_SKEW + 1, 2)) == "future"
    assert open_parsed(opener, sealed_at(t0 + 100 - PAST_SKEW + 1, 3)) == FRAME
    assert open_parsed(opener, sealed_at(t0 + 100 + AHEAD_SKEW - 1, 4)) == FRAME
    # Right after a (re)start, anything sealed before it is a capture, however recent.
    restarted = Freshness(start_ns=int((t0 + 100) * 1e9))
    restarted.set_now(t0 + 100)
    opener_after = Opener(key, freshness=restarted)
    assert reason_of(open_parsed, opener_after, sealed_at(t0 + 99, 5)) == "stale"
    assert len(opener) == 2


def test_sealer_advance_tracks_the_clock_and_never_goes_back(key: PacketKey) -> None:
    sealer = Sealer(NETWORK, key, 1, 100)
    sealer.seal(FRAME)
    sealer.advance(50)  # behind: unchanged, counters never repeat
    assert sealer.counter == 101
    sealer.advance(10**18)
    assert sealer.counter == 10**18
    assert parse_header(sealer.seal(FRAME))[4] == 10**18


def test_forget_drops_a_window(sealer: Sealer, key: PacketKey) -> None:
    opener = Opener(key)
    packet = sealer.seal(FRAME)
    open_parsed(opener, packet)
    opener.forget(SENDER)
    opener.forget(SENDER)  # idempotent
    assert len(opener) == 0


# --- hostile input ----------------------------------------------------------------------------

REASONS = {"short", "version", "type", "auth", "replay", "stale", "future"}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_random_bytes_only_raise_seal_error(data: bytes) -> None:
    key = PacketKey(SECRET, 1)
    opener = Opener(key)
    try:
        _, _, _, sender_id, counter = parse_header(data)
        opener.open(data, sender_id, counter)
    except SealError as err:
        assert err.reason in REASONS
    else:
        pytest.fail("random bytes authenticated")


@settings(max_examples=200, deadline=None)
@given(
    at=st.integers(0, HEADER_LEN + len(FRAME) + TAG_LEN - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, OVERHEAD + len(FRAME)),
)
def test_mutated_packets_only_raise_seal_error(at: int, value: int, cut: int) -> None:
    """Near-valid packets (one byte changed, then maybe truncated) are the interesting input."""
    key = PacketKey(SECRET, 1)
    packet = bytearray(Sealer(NETWORK, key, SENDER, START).seal(FRAME))
    changed = packet[at] != value
    packet[at] = value
    packet = packet[:cut]
    try:
        _, _, _, sender_id, counter = parse_header(bytes(packet))
        payload = Opener(key).open(bytes(packet), sender_id, counter)
    except SealError as err:
        assert err.reason in REASONS
    else:
        assert not changed and cut == len(FRAME) + OVERHEAD and payload == FRAME


def test_new_senders_are_metered_before_decryption(key: PacketKey) -> None:
    """A key holder minting a sender id per packet (each an AES open, a window and an answer
    at the node) gets the burst, then the rate; known senders are never limited, and forged
    packets naming new senders do not drain the bucket (it is charged after authentication).
    Before the bucket, 5,000 such hellos/s filled the 4,096 windows and made every further one
    scan the table: the abuse suite's normal pair fell to 79 %."""
    t0 = 1_700_000_000.0
    fresh = Freshness(start_ns=int(t0 * 1e9))
    fresh.set_now(t0)
    opener = Opener(key, freshness=fresh, new_sender_rate=10, new_sender_burst=5)

    def new_sender(sender: int, secret: bytes | None = None) -> bytes:
        sealing = key if secret is None else PacketKey(secret, key.key_id)
        return Sealer(NETWORK, sealing, sender, int(fresh.now * 1e9)).seal(FRAME)

    for sender in range(20):  # forgeries under new sender ids: auth, and nothing charged
        assert reason_of(open_parsed, opener, new_sender(1000 + sender, bytes(32))) == "auth"
    known = Sealer(NETWORK, key, 1, int(t0 * 1e9))
    assert open_parsed(opener, known.seal(FRAME)) == FRAME
    accepted = [s for s in range(2, 12) if open_or_reason(opener, new_sender(s)) == FRAME]
    assert len(accepted) == 4  # the burst of 5, one taken by sender 1
    assert open_or_reason(opener, new_sender(50)) == "new_sender_rate"
    assert open_parsed(opener, known.seal(FRAME)) == FRAME  # an existing session is untouched
    fresh.set_now(t0 + 0.5)  # half a second at 10/s: five more
    assert [open_or_reason(opener, new_sender(s)) for s in range(60, 66)] == [FRAME] * 5 + [
        "new_sender_rate"
    ]


def open_or_reason(opener: Opener, packet: bytes) -> bytes | str:
    try:
        return open_parsed(opener, packet)
    except SealError as err:
        return err.reason
