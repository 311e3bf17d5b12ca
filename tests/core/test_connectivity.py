"""The one connection-state policy: WARNING at the first failure, one summary per interval
while down, INFO on recovery, nothing repeated in between."""

from __future__ import annotations

import logging

import pytest

from citysense.connectivity import Connectivity

log = logging.getLogger("test.connectivity")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    out = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == log.name]
    caplog.clear()
    return out


def test_first_failure_warns_then_one_summary_per_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    clock = Clock()
    state = Connectivity("broker", "127.0.0.1:1883", log, interval=60, clock=clock)
    state.failed("[Errno 111] Connection refused")
    assert records(caplog) == [
        (
            "WARNING",
            "cannot reach the broker at 127.0.0.1:1883: [Errno 111] Connection refused; retrying",
        )
    ]
    for _ in range(10):
        clock.now += 5
        state.failed("[Errno 111] Connection refused")
    assert {level for level, _ in records(caplog)} == {"DEBUG"}
    assert not state.summary_due()
    clock.now += 10
    assert state.summary_due()
    state.summarise("3 readings waiting")
    [(level, text)] = records(caplog)
    assert level == "WARNING"
    assert "unreachable for 60 s (11 failed attempts" in text and "3 readings waiting" in text
    assert not state.summary_due()
    clock.now += 15
    state.recovered()
    assert records(caplog) == [("INFO", "broker at 127.0.0.1:1883 reachable again after 75 s")]
    assert not state.down and not state.summary_due()
    state.recovered()  # nothing to say when it was up
    assert records(caplog) == []


def test_a_lost_connection_is_info_and_a_failed_reconnect_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    state = Connectivity("broker", "b:1883", log, clock=Clock())
    state.lost("keepalive timeout")
    assert [level for level, _ in records(caplog)] == ["INFO"]
    state.failed("timed out")
    assert [level for level, _ in records(caplog)] == ["WARNING"]


def test_the_level_of_the_first_failure_is_the_callers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    state = Connectivity("store", "http://i:8086", log, clock=Clock())
    state.failed("database not found", level=logging.ERROR)
    assert [level for level, _ in records(caplog)] == ["ERROR"]


def test_session_taken_over_is_an_error_naming_the_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    state = Connectivity("broker", "b:1883", log, clock=Clock(), client_id="citysense-ingest-a")
    state.recovered()
    state.lost("Session taken over", 142)
    errors = [text for level, text in records(caplog) if level == "ERROR"]
    assert len(errors) == 1 and "'citysense-ingest-a' is in use by another client" in errors[0]


def test_repeated_closings_right_after_connect_are_a_clash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    clock = Clock()
    state = Connectivity("broker", "b:1883", log, clock=clock, client_id="citysense-edge-gw-1")
    for _ in range(2):  # MQTT 3.1.1: no reason, only a connection closed at once
        state.recovered()
        clock.now += 0.5
        state.lost("Unspecified error", 128)
        clock.now += 1
    assert not [t for lvl, t in records(caplog) if lvl == "ERROR"]
    state.recovered()
    clock.now += 0.5
    state.lost("Unspecified error", 128)
    errors = [t for lvl, t in records(caplog) if lvl == "ERROR"]
    assert errors and "3 times in a row" in errors[0] and "citysense-edge-gw-1" in errors[0]
    for _ in range(5):  # the clash goes on: no ERROR per takeover
        state.recovered()
        clock.now += 0.5
        state.lost("Unspecified error", 128)
    assert not [t for lvl, t in records(caplog) if lvl == "ERROR"]
    clock.now += 60
    state.recovered()
    clock.now += 0.5
    state.lost("Unspecified error", 128)
    assert len([t for lvl, t in records(caplog) if lvl == "ERROR"]) == 1
    # a connection that lived a while is an ordinary loss
    state.recovered()
    clock.now += 600
    state.lost("keepalive timeout", 141)
    assert not [t for lvl, t in records(caplog) if lvl == "ERROR"]
