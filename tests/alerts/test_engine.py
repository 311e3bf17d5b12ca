"""Rule semantics over random series (hypothesis): raise only after ``for``, clear only past
the clear line for the clear time, nothing in the hysteresis band, one alarm per subject."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.engine import Engine, Observation, Observations, Transition
from alerts.rules import Rule

BASE = Rule(
    name="r",
    kind="metric",
    severity="major",
    threshold=100.0,
    above=True,
    clear=80.0,
    for_ms=5000,
    clear_for_ms=3000,
    metric="pm25",
)

samples = st.lists(
    st.tuples(
        st.integers(100, 3000),  # ms since the previous evaluation
        st.one_of(st.none(), st.floats(0, 200, allow_nan=False)),  # None: no data this time
    ),
    min_size=1,
    max_size=80,
)
rules = st.builds(
    lambda above, clear_gap, for_ms, clear_for_ms: replace(
        BASE,
        above=above,
        threshold=100.0 if above else 50.0,
        clear=100.0 - clear_gap if above else 50.0 + clear_gap,
        for_ms=for_ms,
        clear_for_ms=clear_for_ms,
    ),
    st.booleans(),
    st.floats(0, 30),
    st.sampled_from([0, 1000, 2500, 5000, 10_000]),
    st.sampled_from([0, 1000, 3000, 8000]),
)


def run(
    rule: Rule, series: list[tuple[int, float | None]], key: str = "district=a", fast: bool = False
) -> tuple[list[tuple[int, float | None]], list[tuple[int, Transition]]]:
    engine = Engine()
    t = 1_000_000
    timeline: list[tuple[int, float | None]] = []
    out: list[tuple[int, Transition]] = []
    for i, (dt, v) in enumerate(series):
        t += dt
        timeline.append((t, v))
        obs = {} if v is None else {key: Observation({"district": "a"}, v)}
        if fast:  # the engine's vectorised path, with bystanders that never cross
            obs = Observations(obs)
            for n in range(3):
                calm = rule.threshold - 1000 if rule.above else rule.threshold + 1000
                obs[f"district=z{n}"] = Observation({"district": f"z{n}"}, calm)
        out += [(i, tr) for tr in engine.step(rule, obs, t)]
    return timeline, out


def run_start(
    timeline: list[tuple[int, float | None]], i: int, ok: object, floor: int
) -> int | None:
    """Index where the run of samples satisfying ``ok`` that ends at ``i`` begins (not before
    ``floor``); None when sample ``i`` itself does not satisfy it."""
    j = i
    while j >= floor and timeline[j][1] is not None and ok(timeline[j][1]):  # type: ignore[operator]
        j -= 1
    return None if j == i else j + 1


@settings(max_examples=300, deadline=None)
@given(rules, samples)
def test_raise_and_clear_exactly_when_the_condition_has_held(
    rule: Rule, series: list[tuple[int, float | None]]
) -> None:
    timeline, transitions = run(rule, series)
    assert run(rule, series, fast=True)[1] == transitions  # same decisions on the fast path
    by_index = {i: tr for i, tr in transitions}
    assert len(by_index) == len(transitions)  # at most one decision per evaluation
    active = False
    since_change = 0  # index after the last transition
    for i, (t, v) in enumerate(timeline):
        tr = by_index.get(i)
        if not active:
            start = run_start(timeline, i, rule.breached, since_change)
            due = start is not None and t - timeline[start][0] >= rule.for_ms
            assert (tr is not None) == due, (i, v, start)
            if tr is not None:
                assert tr.action == "raise" and tr.at == t and tr.observation.value == v
                active, since_change = True, i + 1
        else:
            start = run_start(timeline, i, rule.cleared, since_change)
            due = start is not None and t - timeline[start][0] >= rule.clear_for_ms
            assert (tr is not None) == due, (i, v, start)
            if tr is not None:
                assert tr.action == "clear"
                active, since_change = False, i + 1


@settings(max_examples=200, deadline=None)
@given(
    rules, st.lists(st.tuples(st.integers(100, 3000), st.floats(-1, 1)), min_size=1, max_size=200)
)
def test_a_value_wobbling_at_the_line_does_not_flap(
    rule: Rule, wobble: list[tuple[int, float]]
) -> None:
    rule = replace(rule, clear=rule.threshold - 5 if rule.above else rule.threshold + 5)
    series: list[tuple[int, float | None]] = [(dt, rule.threshold + w * 4) for dt, w in wobble]
    _, transitions = run(rule, series)
    assert [tr.action for _, tr in transitions] in ([], ["raise"])


@settings(max_examples=100, deadline=None)
@given(rules, samples, samples)
def test_one_alarm_per_subject_and_subjects_are_independent(
    rule: Rule, a: list[tuple[int, float | None]], b: list[tuple[int, float | None]]
) -> None:
    n = min(len(a), len(b))
    b = [(dt, v) for (dt, _), (_, v) in zip(a[:n], b[:n], strict=True)]  # same clock
    a = a[:n]
    engine = Engine()
    t = 1_000_000
    seen: dict[str, list[str]] = {"district=a": [], "district=b": []}
    for (dt, va), (_, vb) in zip(a, b, strict=True):
        t += dt
        obs = {}
        if va is not None:
            obs["district=a"] = Observation({"district": "a"}, va)
        if vb is not None:
            obs["district=b"] = Observation({"district": "b"}, vb)
        for tr in engine.step(rule, obs, t):
            seen[tr.key].append(tr.action)
    for key, series in (("district=a", a), ("district=b", b)):
        actions = seen[key]
        assert all(x == ("raise" if k % 2 == 0 else "clear") for k, x in enumerate(actions))
        assert actions == [tr.action for _, tr in run(rule, series, key)[1]]


def test_a_restarted_engine_knows_its_open_alarms() -> None:
    engine = Engine()
    engine.restore([("r", "district=a")])
    assert engine.active("r", "district=a")
    rule = replace(BASE, clear_for_ms=0)
    assert engine.step(rule, {"district=a": Observation({"district": "a"}, 150.0)}, 1) == []
    [tr] = engine.step(rule, {"district=a": Observation({"district": "a"}, 10.0)}, 2)
    assert tr.action == "clear"
