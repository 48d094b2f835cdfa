"""The replay window: RFC 6479 behaviour, and agreement with a plain reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atenet.overlay.replay import DEFAULT_SIZE, ReplayWindow

U64_MAX = (1 << 64) - 1


def test_default_window_holds_at_least_2048_counters() -> None:
    assert DEFAULT_SIZE >= 2048
    window = ReplayWindow()
    assert window.update(5000)
    # The oldest counter still inside the window is accepted, the one below it is not.
    assert window.check(5000 - DEFAULT_SIZE + 1)
    assert not window.check(5000 - DEFAULT_SIZE)


def test_first_counter_is_accepted_even_zero() -> None:
    window = ReplayWindow()
    assert window.check(0)
    assert window.update(0)
    assert not window.check(0)


def test_in_order_counters_each_accepted_once() -> None:
    window = ReplayWindow(64)
    for counter in range(1000, 1300):
        assert window.check(counter)
        assert window.update(counter)
    for counter in range(1300 - 64, 1300):
        assert not window.check(counter)
        assert not window.update(counter)


def test_duplicate_is_rejected() -> None:
    window = ReplayWindow()
    assert window.update(42)
    assert not window.check(42)
    assert not window.update(42)


def test_out_of_order_inside_window_accepted_once() -> None:
    window = ReplayWindow(128)
    assert window.update(200)
    assert window.update(150)  # late, but inside the window
    assert not window.update(150)
    assert window.update(199)
    assert window.top == 200


def test_older_than_window_rejected() -> None:
    window = ReplayWindow(128)
    assert window.update(1000)
    assert not window.check(1000 - 128)
    assert not window.update(1000 - 128)
    assert not window.update(0)
    assert window.update(1000 - 127)


def test_check_does_not_mark() -> None:
    """Marking waits for authentication, so check alone must leave the window unchanged."""
    window = ReplayWindow()
    assert window.check(7)
    assert window.check(7)
    assert window.top == -1
    assert window.update(7)


def test_far_ahead_counter_slides_window_and_forgets_old_marks() -> None:
    window = ReplayWindow(128)
    for counter in range(100):
        window.update(counter)
    assert window.update(10_000)
    assert window.top == 10_000
    # Everything from before is now too old, marked or not.
    assert not window.check(99)
    assert not window.check(50)
    # The fresh window below the new top is empty.
    assert window.update(10_000 - 127)
    assert window.update(9_999)


def test_slide_by_less_than_window_keeps_marks() -> None:
    window = ReplayWindow(128)
    assert window.update(100)
    assert window.update(90)
    assert window.update(150)  # slides by 50: 90 and 100 are still inside
    assert not window.update(100)
    assert not window.update(90)
    assert window.update(95)


def test_slide_by_exactly_window_size() -> None:
    window = ReplayWindow(128)
    assert window.update(100)
    assert window.update(228)  # 100 is now 128 behind: just outside
    assert not window.check(100)
    assert window.update(101)  # 127 behind: inside, never seen


def test_largest_counter() -> None:
    window = ReplayWindow()
    assert window.update(U64_MAX)
    assert not window.update(U64_MAX)
    assert window.update(U64_MAX - 1)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayWindow(0)


class ReferenceWindow:
    """The obvious model: every accepted counter in a set, plus the maximum."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = -1

    def check(self, counter: int) -> bool:
        if counter in self.seen:
            return False
        return counter > self.top - self.size

    def update(self, counter: int) -> bool:
        if not self.check(counter):
            return False
        self.seen.add(counter)
        self.top = max(self.top, counter)
        return True


SIZES = [1, 2, 63, 64, 65, 128, DEFAULT_SIZE]


@st.composite
def operations(draw: st.DrawFn, size: int) -> list[tuple[bool, int]]:
    """Check/update operations whose counters land near the window's edges, where bugs live.

    Most counters are the current top plus a small offset, or exactly at, just inside, or just
    outside the bottom edge; some are absolute (zero, far jumps, the largest u64).
    """
    ops: list[tuple[bool, int]] = []
    top = -1
    near_edge = st.sampled_from([-size - 1, -size, -size + 1, -1, 0, 1, 2, size - 1, size])
    for _ in range(draw(st.integers(0, 120))):
        marks = draw(st.booleans())
        how = draw(st.integers(0, 9))
        if how < 4:
            counter = top + draw(near_edge)
        elif how < 8:
            counter = top + draw(st.integers(-size - 3, 3))
        else:
            counter = draw(st.sampled_from([0, 1, 10_000, U64_MAX - 1, U64_MAX]))
        counter = min(max(counter, 0), U64_MAX)
        ops.append((marks, counter))
        if marks:
            top = max(top, counter)
    return ops


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=st.sampled_from(SIZES))
def test_matches_reference_model(data: st.DataObject, size: int) -> None:
    window, model = ReplayWindow(size), ReferenceWindow(size)
    for marks, counter in data.draw(operations(size)):
        if marks:
            assert window.update(counter) == model.update(counter), counter
        else:
            assert window.check(counter) == model.check(counter), counter
        assert window.top == model.top
