"""The one back-off recipe."""

from __future__ import annotations

from citysense.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.delay() == 0.5


def test_jitter_stays_within_half_and_whole() -> None:
    b = Backoff(1.0, 1.0, jitter=True)
    for _ in range(200):
        assert 0.5 <= b.delay() <= 1.0


def test_cap_below_first_is_first() -> None:
    assert Backoff(2.0, 1.0).delay() == 2.0
