"""The compiled fast path's core (csrc/fast/core.c) against the pure Python reference.

Every C piece is run side by side with the Python code it replaces and must give the same
answers: the replay window (check/update/start and top, on random operation sequences that
include counters near 0 and 2**64 - 1 and huge jumps), AES-256-GCM (byte-equal to
``cryptography``'s AESGCM), ``sealer_seal`` (same bytes and counter as ``Sealer.seal``) and
``opener_open`` (same payload or drop reason and the same window state as ``Opener.open``).
Edge cases that once hung or crashed the process run in a child process with a timeout, so a
regression fails the test instead of killing the suite. The whole file is skipped when the
module is not built; the pure path's own tests (test_seal.py, test_replay.py) run either way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.overlay import seal as seal_mod
from atenet.overlay.replay import ReplayWindow
from atenet.overlay.seal import (
    HEADER_LEN,
    INFO_AES,
    OVERHEAD,
    PACKET_TYPES,
    Opener,
    PacketKey,
    Sealer,
    SealError,
    _hkdf,
    parse_header,
)

_fast = pytest.importorskip(
    "atenet._fast",
    reason="the compiled fast path is not built (scripts/setup.sh or "
    "`python setup.py build_ext --inplace` builds it); the pure path is tested elsewhere",
)

ROOT = Path(__file__).resolve().parent.parent
U64_MAX = (1 << 64) - 1
SECRET = bytes(range(32))
NETWORK = bytes(range(100, 116))


def fast_packet_key(secret: bytes = SECRET, key_id: int = 7) -> PacketKey:
    """A PacketKey with its C key, also when this test process runs with ATENET_PURE=1 (then
    PacketKey leaves ``fast`` None): the comparisons below need both sides either way."""
    key = PacketKey(secret, key_id)
    if key.fast is None:
        key.fast = _fast.Key(_hkdf(secret, INFO_AES))
    return key


@contextlib.contextmanager
def windows_of(cls: type) -> Iterator[None]:
    """Openers made inside build their replay windows from ``cls`` (C or pure)."""
    saved = seal_mod._Window
    seal_mod._Window = cls
    try:
        yield
    finally:
        seal_mod._Window = saved


def run_child(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter with this tree's atenet; its stdout."""
    full_env = os.environ | {"PYTHONPATH": str(ROOT / "src")} | (env or {})
    if env is not None and env.get("ATENET_PURE") is None:
        full_env.pop("ATENET_PURE", None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    return proc.stdout


# --------------------------------------------------------------------------- replay window

# Bases that put a window next to 0, across a 64-bit word, mid-range and at the top of u64.
_BASES = [0, 1, 63, 64, 65, 2047, 1 << 32, 1 << 63, U64_MAX - 5000, U64_MAX - 200, U64_MAX]
_SIZES = [1, 2, 63, 64, 65, 127, 128, 200, 2048]


@st.composite
def window_ops(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]]]:
    size = draw(st.sampled_from(_SIZES))
    base = draw(st.sampled_from(_BASES))
    near = st.integers(-3 * size - 130, 3 * size + 130).map(
        lambda d: min(U64_MAX, max(0, base + d))
    )
    anywhere = st.integers(0, U64_MAX)
    counter = st.one_of(near, near, near, anywhere, st.sampled_from([0, U64_MAX, U64_MAX - 1]))
    op = st.sampled_from(["check", "update", "update", "update", "start"])
    return size, draw(st.lists(st.tuples(op, counter), max_size=120))


@given(window_ops())
@settings(max_examples=400)
def test_c_window_answers_as_the_pure_window(case: tuple[int, list[tuple[str, int]]]) -> None:
    size, ops = case
    c, py = _fast.Window(size), ReplayWindow(size)
    assert c.size == py.size == size and c.top == py.top == -1
    for op, counter in ops:
        assert getattr(c, op)(counter) == getattr(py, op)(counter), (op, counter)
        assert c.top == py.top
    # Every counter the window could still answer for, and the two just outside it.
    top = max(py.top, 0)
    for counter in range(max(0, top - size - 1), min(U64_MAX, top + 2) + 1):
        assert c.check(counter) == py.check(counter), counter


def test_window_update_to_the_last_counter_returns() -> None:
    """Moving a window up to 2**64 - 1 from within a ring's length once looped forever (the
    clearing loop's counter wrapped past 2**64 - 1 to 0): an authenticated sender could hang a
    receiver with two packets. Run in a child so a regression fails instead of hanging."""
    out = run_child(
        """
        from atenet._fast import Window
        for size in (1, 64, 2048):
            for gap in (1, 2, 63, 64, 65, size, size + 70):
                w = Window(size)
                assert w.update(2**64 - 1 - gap)
                assert w.update(2**64 - 1)
                assert w.top == 2**64 - 1 and not w.check(2**64 - 1)
                assert w.check(2**64 - 2) == (gap != 1 and size > 1)
        w = Window(64)
        w.start(2**64 - 1)
        assert not w.check(2**64 - 1) and not w.check(2**64 - 64) and not w.check(0)
        print("ok")
        """,
        timeout=30,
    )
    assert out == "ok\n"


def test_objects_made_without_init_raise_instead_of_crashing() -> None:
    """Key.__new__ / Window.__new__ without __init__ once crashed the interpreter (a NULL
    OpenSSL context; a modulo by zero). Now a ValueError, also through the glue."""
    out = run_child(
        """
        from atenet._fast import Key, Window
        from atenet.overlay.seal import Opener, PacketKey, Sealer
        import atenet._fast as fast
        for call in (
            lambda: Window.__new__(Window).update(1),
            lambda: Window.__new__(Window).check(1),
            lambda: Window.__new__(Window).start(1),
            lambda: Key.__new__(Key).seal(bytes(34), b"x"),
            lambda: Key.__new__(Key).open(bytes(80)),
        ):
            try:
                call()
            except ValueError as err:
                assert "never initialised" in str(err), err
            else:
                raise AssertionError("no error")
        key = PacketKey(bytes(32), 1)
        key.fast = Key.__new__(Key)
        try:
            fast.sealer_seal(Sealer(bytes(16), key, 1, 0), b"x")
        except ValueError:
            pass
        else:
            raise AssertionError("sealed with an uninitialised key")
        opener = Opener(key)
        opener._windows[1] = Window.__new__(Window)
        assert fast.opener_open(opener, bytes(80), 1, 0) is None  # not a usable C window: slow
        print(repr(Window.__new__(Window)))
        """,
        timeout=30,
    )
    assert out.startswith("ReplayWindow(size=0, top=")


def test_window_start_near_zero_marks_only_real_counters() -> None:
    for size in (1, 64, 65, 2048):
        for first in (0, 1, 5, size - 1, size, size + 1):
            c, py = _fast.Window(size), ReplayWindow(size)
            c.start(first)
            py.start(first)
            assert c.top == py.top == first
            for counter in range(0, first + size + 3):
                assert c.check(counter) == py.check(counter), (size, first, counter)
                assert c.update(counter) == py.update(counter), (size, first, counter)


def test_window_rejects_bad_sizes_and_counters() -> None:
    for size in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            _fast.Window(size)
    with pytest.raises(ValueError, match="at most"):
        _fast.Window((1 << 24) + 1)
    w = _fast.Window(64)
    assert w.check(-1) is True and w.check(1 << 64) is True  # nothing accepted yet
    w.update(100)
    assert w.check(-1) is False and w.check(1 << 64) is True
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError, match="u64"):
            w.update(bad)
        with pytest.raises(ValueError, match="u64"):
            w.start(bad)
    with pytest.raises(TypeError):
        w.check("1")  # type: ignore[arg-type]
    assert w.top == 100


# --------------------------------------------------------------------------- AES-256-GCM


@given(
    key=st.binary(min_size=32, max_size=32),
    header=st.binary(min_size=HEADER_LEN, max_size=HEADER_LEN),
    payload=st.one_of(st.binary(max_size=2000), st.integers(0, 70000).map(bytes)),
)
@settings(max_examples=150)
def test_key_seal_and_open_are_byte_equal_to_cryptography(
    key: bytes, header: bytes, payload: bytes
) -> None:
    aead, fast = AESGCM(key), _fast.Key(key)
    sealed = fast.seal(header, payload)
    assert sealed == header + aead.encrypt(header[22:], payload, header)
    assert fast.open(sealed) == payload
    assert fast.open(memoryview(bytearray(sealed))) == payload
    assert aead.decrypt(header[22:], sealed[HEADER_LEN:], header) == payload


@given(data=st.data())
@settings(max_examples=100)
def test_key_open_refuses_any_altered_byte_and_short_packets(data: st.DataObject) -> None:
    fast = _fast.Key(SECRET)
    sealed = fast.seal(bytes(range(HEADER_LEN)), data.draw(st.binary(max_size=300)))
    at = data.draw(st.integers(0, len(sealed) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = bytearray(sealed)
    altered[at] ^= flip
    assert fast.open(bytes(altered)) is None
    assert fast.open(sealed[: data.draw(st.integers(0, len(sealed) - 1))]) is None
    assert fast.open(sealed) is not None  # a failed open leaves the key usable
    assert _fast.Key(bytes(32)).open(sealed) is None


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1023, 1024, 1025, 4096, 9000, 65000])
def test_both_aes_gcm_codes_agree_at_the_small_packet_boundary(size: int) -> None:
    """Up to 1 KB libsodium seals and opens (when built with it), above OpenSSL: the same bytes
    either side of the boundary, each opens the other's, and a flipped tag bit is refused."""
    header = bytes(range(HEADER_LEN))
    payload = bytes((i * 7) & 0xFF for i in range(size))
    fast = _fast.Key(SECRET)
    sealed = fast.seal(header, payload)
    assert sealed == header + AESGCM(SECRET).encrypt(header[22:], payload, header)
    assert fast.open(sealed) == payload
    bad = bytearray(sealed)
    bad[-1] ^= 1
    assert fast.open(bytes(bad)) is None
    assert _fast.small_aead() in ("libsodium", "openssl")


def test_a_key_is_set_up_once() -> None:
    """Engine threads use a Key without the GIL, so its contexts never change once set."""
    key = _fast.Key(SECRET)
    with pytest.raises(ValueError, match="set up once"):
        key.__init__(bytes(32))
    assert key.open(key.seal(bytes(HEADER_LEN), b"x")) == b"x"


def test_key_arguments_are_checked() -> None:
    for bad in (b"", bytes(16), bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="32 bytes"):
            _fast.Key(bad)
    with pytest.raises(ValueError, match="34 bytes"):
        _fast.Key(SECRET).seal(bytes(33), b"x")
    assert "AES" in repr(_fast.Key(SECRET)) and SECRET.hex() not in repr(_fast.Key(SECRET))


# --------------------------------------------------------------------------- Sealer glue


@given(
    ptype=st.sampled_from(sorted(PACKET_TYPES)),
    start=st.one_of(st.integers(0, U64_MAX - 10), st.integers(U64_MAX - 3, U64_MAX)),
    sender=st.sampled_from([0, 1, 0xDEADBEEF, 0xFFFFFFFF]),
    payloads=st.lists(
        st.one_of(st.binary(max_size=1500), st.sampled_from([9000, 65000]).map(bytes)),
        min_size=1,
        max_size=5,
    ),
    view=st.booleans(),
)
@settings(max_examples=120)
def test_sealer_seal_gives_the_pure_sealers_bytes_and_counter(
    ptype: int, start: int, sender: int, payloads: list[bytes], view: bool
) -> None:
    key = fast_packet_key()
    pure, fast = Sealer(NETWORK, key, sender, start), Sealer(NETWORK, key, sender, start)
    for payload in payloads:
        arg = memoryview(bytearray(payload)) if view else payload
        try:
            expected: bytes | str = bytes(Sealer._seal_pure(pure, arg, ptype))
        except SealError as err:
            expected = err.reason
        try:
            got: bytes | str = _fast.sealer_seal(fast, arg, ptype)
        except SealError as err:
            got = err.reason
            assert "new sender session" in str(err)
        assert got == expected
        assert fast.counter == pure.counter


def test_sealer_seal_refuses_the_counter_after_the_last_as_the_pure_sealer() -> None:
    key = fast_packet_key()
    fast = Sealer(NETWORK, key, 5, U64_MAX)
    last = _fast.sealer_seal(fast, b"x")
    assert parse_header(last)[4] == U64_MAX and fast.counter == 1 << 64
    for _ in range(2):  # refused every time, nothing moves
        with pytest.raises(SealError) as caught:
            _fast.sealer_seal(fast, b"x")
        assert caught.value.reason == "counter" and fast.counter == 1 << 64
    fast.sender_id = 1 << 32  # a sender id that does not pack: the pure path's error too
    fast._counter = 0
    with pytest.raises(SealError):
        Sealer._seal_pure(fast, b"x")
    with pytest.raises(SealError):
        _fast.sealer_seal(fast, b"x")


@pytest.mark.parametrize("ptype", [0, 4, 5, 255, -1, 1000])
def test_sealer_seal_unknown_type_is_a_value_error_and_moves_nothing(ptype: int) -> None:
    key = fast_packet_key()
    pure, fast = Sealer(NETWORK, key, 1, 10), Sealer(NETWORK, key, 1, 10)
    with pytest.raises(ValueError, match="unknown packet type"):
        Sealer._seal_pure(pure, b"x", ptype)
    with pytest.raises(ValueError, match="unknown packet type"):
        _fast.sealer_seal(fast, b"x", ptype)
    assert fast.counter == pure.counter == 10


def test_sealer_seal_needs_a_c_key() -> None:
    key = PacketKey(SECRET, 1)
    key.fast = None
    with pytest.raises(TypeError, match=r"atenet\._fast\.Key"):
        _fast.sealer_seal(Sealer(NETWORK, key, 1, 0), b"x")


# --------------------------------------------------------------------------- Opener glue


def pure_result(
    opener: Opener, packet: bytes, sender: int, counter: int, cls: type = ReplayWindow
) -> bytes | str:
    """The pure Opener.open's payload or drop reason; a window it makes is a ``cls``."""
    with windows_of(cls):
        try:
            return Opener._open_pure(opener, packet, sender, counter)
        except SealError as err:
            return err.reason


def fast_result(opener: Opener, packet: bytes, sender: int, counter: int) -> bytes | str:
    """What a fast caller does: the C call, and the pure path when it hands the packet back
    (which then makes a C window, as Opener does when the fast path is on)."""
    got = _fast.opener_open(opener, packet, sender, counter)
    if got is None:
        assert sender not in opener._windows  # slow only for a sender with no window
        return pure_result(opener, packet, sender, counter, _fast.Window)
    return got


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, int, list[int], list[tuple[str, int, int]]]:
    size = draw(st.sampled_from([1, 8, 64, 100, 2048]))
    start = draw(st.one_of(st.integers(0, 1 << 62), st.integers(U64_MAX - 3000, U64_MAX - 40)))
    # Gaps between sealed packets: mostly in order, sometimes a jump past the window.
    gap = st.sampled_from([0, 0, 0, 1, 5, 63, 64, size, 3 * size])
    gaps = draw(st.lists(gap, min_size=1, max_size=25))
    n = len(gaps)
    kind = st.sampled_from(["deliver", "deliver", "deliver", "flip", "cut", "wrong_args"])
    event = st.tuples(kind, st.integers(0, n - 1), st.integers(0, 10**6))
    events = draw(st.lists(event, max_size=60))
    return size, start, gaps, events


@given(deliveries())
@settings(max_examples=300)
def test_opener_open_gives_the_pure_openers_answers_and_window(
    case: tuple[int, int, list[int], list[tuple[str, int, int]]],
) -> None:
    size, start, gaps, events = case
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 42, start)
    packets = []
    for i, gap in enumerate(gaps):
        if sealer.counter > U64_MAX:
            break  # the last counter was used
        if sealer.counter + gap < U64_MAX:
            sealer.advance(sealer.counter + gap)
        packets.append(_fast.sealer_seal(sealer, i.to_bytes(2, "big") * (i % 7)))
    pure, fast = Opener(key, window_size=size), Opener(key, window_size=size)
    public = Opener(key, window_size=size)  # through Opener.open as the node calls it
    for kind, i, r in events:
        packet = packets[i % len(packets)]
        sender, counter = 42, parse_header(packet)[4]
        if kind == "flip":
            altered = bytearray(packet)
            altered[r % len(packet)] ^= 1 + r % 255
            packet = bytes(altered)
        elif kind == "cut":
            packet = packet[: r % len(packet)]
        elif kind == "wrong_args":
            sender, counter = (43, counter) if r % 2 else (42, min(U64_MAX, counter + 1 + r))
        expected = pure_result(pure, packet, sender, counter)
        assert fast_result(fast, packet, sender, counter) == expected, (kind, i, r)
        if seal_mod._opener_open is not None:  # this process runs the fast path
            with windows_of(_fast.Window):
                try:
                    assert public.open(packet, sender, counter) == expected
                except SealError as err:
                    assert err.reason == expected
        assert sorted(fast._windows) == sorted(pure._windows)
        for sid, window in pure._windows.items():
            assert isinstance(window, ReplayWindow)
            assert isinstance(fast._windows[sid], _fast.Window)
            assert fast._windows[sid].top == window.top
    for sid, window in pure._windows.items():
        top = window.top
        for c in range(max(0, top - size - 1), min(U64_MAX, top + 2) + 1):
            assert fast._windows[sid].check(c) == window.check(c)


def test_opener_open_is_slow_without_a_window_and_touches_nothing() -> None:
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 9, 1000)
    packet = _fast.sealer_seal(sealer, b"hello")
    with windows_of(_fast.Window):
        opener = Opener(key)
        assert _fast.opener_open(opener, packet, 9, 1000) is None
        assert len(opener) == 0  # nothing made, nothing marked
        assert opener.open(packet, 9, 1000) == b"hello"  # the pure path makes the window
        assert _fast.opener_open(opener, packet, 9, 1000) == "replay"
        following = _fast.sealer_seal(sealer, b"again")
        assert _fast.opener_open(opener, following, 9, 1001) == b"again"
        assert opener._windows[9].top == 1001
    with windows_of(ReplayWindow):
        pure = Opener(key)
        pure.open(packet, 9, 1000)
        assert _fast.opener_open(pure, following, 9, 1001) is None  # a pure window: pure path
        assert pure._windows[9].top == 1000


def test_opener_open_checks_in_opener_opens_order() -> None:
    """A short packet whose counter the window already holds is a ``replay`` in Opener.open
    (the window is consulted first); the C glue once said ``short``."""
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 9, 1000)
    first = _fast.sealer_seal(sealer, b"hello")
    with windows_of(_fast.Window):
        opener = Opener(key)
        opener.open(first, 9, 1000)
        assert _fast.opener_open(opener, first[:10], 9, 1000) == "replay"
        assert _fast.opener_open(opener, first[:10], 9, 1001) == "short"
        assert _fast.opener_open(opener, first[: OVERHEAD - 1], 9, 1001) == "short"
        assert _fast.opener_open(opener, first, 9, 1001) == "auth"  # header says 1000
        assert opener._windows[9].top == 1000


def test_opener_open_range_checks_its_arguments() -> None:
    """``2**32 + 9`` once passed as sender 9 (the "k" format truncates)."""
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 9, 1000)
    packet = _fast.sealer_seal(sealer, b"x")
    with windows_of(_fast.Window):
        opener = Opener(key)
        opener.open(packet, 9, 1000)
        for sender, counter in (((1 << 32) + 9, 1001), (-1, 1001), (9, 1 << 64), (9, -1)):
            with pytest.raises(OverflowError):
                _fast.opener_open(opener, packet, sender, counter)
        with pytest.raises(TypeError):
            _fast.opener_open(opener, packet, "9", 1001)
        assert opener._windows[9].top == 1000


# --------------------------------------------------------------------------- which path runs


def test_an_opener_made_with_the_fast_path_on_uses_c_windows() -> None:
    code = """
        from atenet.fast import FAST, fast_status
        from atenet.overlay.seal import Opener, PacketKey, Sealer
        key = PacketKey(bytes(32), 1)
        opener = Opener(key)
        opener.open(Sealer(bytes(16), key, 3, 50).seal(b"x"), 3, 50)
        window = opener._windows[3]
        print(FAST is not None, fast_status(), type(window).__module__, type(window).__name__,
              type(key.fast).__name__, Sealer.seal.__name__, Opener.open.__name__)
    """
    assert run_child(code, env={}).split() == [
        "True", "on", "atenet._fast", "Window", "Key", "_seal_fast", "_open_fast"
    ]  # fmt: skip
    pure = run_child(code, env={"ATENET_PURE": "1"})
    assert pure.split()[:1] == ["False"]
    assert "off (ATENET_PURE is set)" in pure
    assert pure.split()[-5:] == [
        "atenet.overlay.replay",
        "ReplayWindow",
        "NoneType",
        "seal",
        "open",
    ]
    # ATENET_PURE=0 (or empty) leaves the fast path on.
    assert run_child(code, env={"ATENET_PURE": "0"}).split()[:2] == ["True", "on"]


# --------------------------------------------------------------------------- no leaks


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _churn(rounds: int) -> None:
    """Seal and open through the glue on every path: ok, replay, auth, short, slow and errors."""
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 1, 1 << 40)
    spent = Sealer(NETWORK, key, 2, U64_MAX)
    spent._counter = 1 << 64
    opener = Opener(key, window_size=64)
    payload = bytes(1200)
    first = _fast.sealer_seal(sealer, payload)
    with windows_of(_fast.Window):
        opener.open(first, 1, 1 << 40)
    for i in range(rounds):
        packet = _fast.sealer_seal(sealer, payload, 1 + i % 3)
        counter = (1 << 40) + 1 + i
        assert _fast.opener_open(opener, packet, 1, counter) == payload
        if i % 8 == 0:
            assert _fast.opener_open(opener, packet, 1, counter) == "replay"
            assert _fast.opener_open(opener, packet[:-1] + b"\0", 1, counter + 1) == "auth"
            assert _fast.opener_open(opener, packet[:20], 1, counter + 1) == "short"
            assert _fast.opener_open(opener, packet, 7, counter) is None
            with contextlib.suppress(ValueError):
                _fast.sealer_seal(sealer, payload, 9)
            with contextlib.suppress(SealError):
                _fast.sealer_seal(spent, payload)
            assert _fast.Key(SECRET).open(_fast.Key(SECRET).seal(packet[:34], payload)) == payload


def test_100k_seals_and_opens_keep_memory_bounded() -> None:
    _churn(10_000)  # warm up: caches, pymalloc arenas, the SealError class lookup
    gc.collect()
    before = _rss_bytes()
    _churn(100_000)
    gc.collect()
    grown = _rss_bytes() - before
    # A leaked 1.2 KB payload per call would be > 100 MB; a leaked small int ~3 MB.
    assert grown < 2 * 1024 * 1024, f"RSS grew {grown} bytes over 100k seal+open calls"


def test_the_glue_leaves_no_python_objects_behind() -> None:
    """tracemalloc sees every PyMem/PyObject allocation, including the C module's: after a
    warm-up, 20k more rounds on every path must not grow what is traced."""
    _churn(2000)
    gc.collect()
    tracemalloc.start()
    try:
        _churn(200)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        _churn(20_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes still allocated after 20k rounds"


def test_counter_takes_each_value_once_and_refuses_after_the_last() -> None:
    """The Sealer's counter cell (shared with GIL-free engine threads): take, advance, spent."""
    c = _fast.Counter(5)
    assert [c.take(), c.take()] == [5, 6] and c.value == 7
    c.advance(3)  # never down
    assert c.value == 7
    c.advance(100)
    assert c.take() == 100 and c.value == 101
    c.value = U64_MAX
    assert c.take() == U64_MAX and c.value == 1 << 64
    assert c.take() is None and c.value == 1 << 64  # spent: refused every time
    c.advance(5)
    assert c.value == 1 << 64  # advance never revives a spent counter
    c.value = 0
    assert c.take() == 0
    c.advance((1 << 64) + 5)  # a clock beyond every counter: spent, as the pure sealer
    assert c.take() is None
    for bad in (-1, (1 << 64) + 1, "7"):
        with pytest.raises((ValueError, TypeError)):
            _fast.Counter(bad)
    assert repr(_fast.Counter(3)) == "Counter(3)"


def test_a_fast_sealer_keeps_its_counter_in_the_shared_cell() -> None:
    if seal_mod.FAST is None:
        pytest.skip("ATENET_PURE=1: the Sealer keeps a plain int counter")
    key = fast_packet_key()
    sealer = Sealer(NETWORK, key, 1, 10)
    cell = sealer._cell  # type: ignore[attr-defined]
    sealer.seal(b"x")
    assert cell.take() == 11  # the seal took 10; what the cell hands out next, nobody else gets
    assert parse_header(sealer.seal(b"y"))[4] == 12 and sealer.counter == 13
    sealer.advance(1_000)
    assert sealer.counter == cell.value == 1_000
