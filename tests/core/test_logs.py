"""Log formats (text, json, journal), the automatic journal choice, and repeated lines
summarised instead of written one per item."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense import logs
from citysense.config import DEMO_STATE_DIR, default_state_dir, load_settings


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.flush()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logs._installed = None


def test_journal_is_chosen_under_systemd_and_has_priorities_and_no_time(
    restore_root: None,
) -> None:
    out = io.StringIO()
    assert logs.configure("DEBUG", "auto", stream=out, environ={"JOURNAL_STREAM": "8:1234"}) == (
        "journal"
    )
    log = logging.getLogger("edge.test")
    log.warning("outbox at %d%%", 91)
    log.info("ready")
    log.error("two\nlines")
    assert out.getvalue().splitlines() == [
        "<4>edge.test: outbox at 91%",
        "<6>edge.test: ready",
        "<3>edge.test: two",
        "<3>lines",
    ]
    assert logs.configure("INFO", "auto", stream=out, environ={}) == "text"


def test_json_is_one_object_per_line_with_fields(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out, environ={})
    logging.getLogger("ingest.x").warning("stored %d", 5, extra={"gateway": "gw-1"})
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("ingest.x").exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "WARNING" and first["logger"] == "ingest.x"
    assert first["message"] == "stored 5" and first["fields"] == {"gateway": "gw-1"}
    assert first["time"].endswith("Z")
    assert "ValueError: bad" in second["exception"]


def test_logs_follow_standard_error_as_it_is_when_written(
    restore_root: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command run in-process configures logging while standard error is a temporary
    capture; once that is closed and replaced, later records go to the new standard error
    instead of failing on the closed one ("--- Logging error ---")."""
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    logs.configure("INFO", "text")
    logging.getLogger("edge.x").warning("one")
    assert "edge.x: one" in first.getvalue()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("edge.x").warning("two")
    assert "edge.x: two" in second.getvalue()
    assert "Logging error" not in capsys.readouterr().err


def test_repeated_lines_are_summarised() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    now = [0.0]
    summary = logs.RepeatSummary(handler, burst=3, window=60.0, clock=lambda: now[0])
    handler.addFilter(summary)
    log = logging.getLogger("edge.repeat")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for seq in range(1000):  # a reconnect re-sends a thousand batches
            log.info("batch %d re-sent", seq)
        log.info("something else")
        lines = out.getvalue().splitlines()
        assert lines == [
            "batch 0 re-sent",
            "batch 1 re-sent",
            "batch 2 re-sent",
            "something else",
        ]
        now[0] = 61.0
        log.info("later")
        lines = out.getvalue().splitlines()
        assert lines[4] == "batch 999 re-sent -- 997 more like this in the last 60 s"
        assert lines[5] == "later"
        for _ in range(5):
            log.info("later")
        summary.flush()
        assert out.getvalue().splitlines()[-1].startswith("later -- 3 more like this")
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_default_state_folder(tmp_path: Path) -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/citysense/edge:/x"}) == Path(
        "/var/lib/citysense/edge"
    )
    expected = (
        Path("/var/lib/citysense") if Path("/var/lib/citysense").is_dir() else Path(DEMO_STATE_DIR)
    )
    assert default_state_dir({}) == expected
    edge = load_settings("edge", {}, environ={"STATE_DIRECTORY": str(tmp_path)})
    assert edge.state_dir == str(tmp_path)
    demo = load_settings("demo", {}, environ={"STATE_DIRECTORY": str(tmp_path)})
    assert demo.state_dir == DEMO_STATE_DIR
    given = load_settings("edge", {"state_dir": "/srv/x"}, environ={"STATE_DIRECTORY": "/y"})
    assert given.state_dir == "/srv/x"


def test_health_reports_what_it_waits_on_and_turns_503_after_the_threshold() -> None:
    from citysense.health import Health

    now = [0.0]
    health = Health(("broker", "store"), unhealthy_after=60.0, clock=lambda: now[0])
    code, body = health.report()
    assert code == 200 and body["status"] == "waiting"
    assert [w["what"] for w in body["waiting_on"]] == ["broker", "store"]  # type: ignore[index,union-attr]
    health.observe("store", True)
    now[0] = 30.0
    health.observe("broker", True)
    assert health.report() == (200, {"status": "ok", "waiting_on": [], "unhealthy_after": 60.0})
    health.observe("broker", False)
    now[0] = 90.0
    assert health.report()[0] == 200  # down 60 s: not longer than the threshold
    health.observe("broker", False)  # still down: counted from when it went
    now[0] = 90.5
    code, body = health.report()
    assert code == 503 and body["status"] == "unhealthy"
    assert body["waiting_on"] == [{"what": "broker", "seconds": 60.5}]
    health.observe("broker", True)
    assert health.render()[0] == 200
