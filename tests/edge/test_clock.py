"""The gateway's time line follows the wall clock forwards and never steps back for long."""

from __future__ import annotations

import logging

import pytest

from edge.clock import ACCEPT_BACK_STEP_AFTER_S, GatewayClock


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0

    def tick(self, s: float) -> None:
        self.wall += s
        self.mono += s


def make() -> tuple[Clocks, GatewayClock]:
    c = Clocks()
    return c, GatewayClock(lambda: c.wall, lambda: c.mono)


def test_follows_the_wall_clock_and_its_forward_steps() -> None:
    c, clock = make()
    assert clock.now() == c.wall
    c.tick(10)
    assert clock.now() == c.wall
    c.wall += 3600  # stepped ahead: readings only look older
    assert clock.now() == c.wall


def test_keeps_its_time_line_when_the_wall_clock_steps_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c, clock = make()
    c.tick(5)
    before = clock.now()
    c.wall -= 3600
    with caplog.at_level(logging.WARNING, "edge.clock"):
        assert clock.now() == pytest.approx(before)
        c.tick(7)
        assert clock.now() == pytest.approx(before + 7)
    assert sum("stepped back by 3600 s" in r.getMessage() for r in caplog.records) == 1
    c.wall += 3600  # stepped forward again: back on the line, and followed
    assert clock.now() == pytest.approx(c.wall)


def test_a_lasting_backward_step_is_taken_as_a_correction() -> None:
    c, clock = make()
    c.wall -= 3600
    line = clock.now()
    assert line == pytest.approx(c.wall + 3600)
    c.tick(ACCEPT_BACK_STEP_AFTER_S + 1)
    assert clock.now() == pytest.approx(c.wall)
    c.tick(1)
    assert clock.now() == pytest.approx(c.wall)


def test_jitter_is_not_a_step() -> None:
    c, clock = make()
    c.wall -= 0.5
    assert clock.now() == c.wall
