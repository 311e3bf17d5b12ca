"""Rule semantics, pure: from one number per subject per evaluation to raise/clear decisions.

For each (rule, subject) a :class:`Tracker` remembers since when the raise condition has held
(no alarm yet) or since when the clear condition has held (an alarm is active):

* an alarm is raised at the first evaluation at which the value has been past the threshold
  at every evaluation for at least ``for`` (``for = 0``: at once);
* an active alarm is cleared at the first evaluation at which the value has been past the
  clear line at every evaluation for at least ``clear_for``; between the clear line and the
  threshold (the hysteresis band) nothing changes, so a value wobbling around the threshold
  does not flap;
* one alarm per (rule, subject) at a time; a subject with no value this time (no data)
  restarts both timers and changes nothing else.

Time is the caller's (epoch ms), so the same code runs live, in tests and in benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from alerts.rules import Rule


def subject_key(subject: Mapping[str, str]) -> str:
    """``{"district": "zhengdong"}`` -> ``district=zhengdong`` (the identity of a subject)."""
    if len(subject) == 1:
        for k, v in subject.items():
            return f"{k}={v}"
    return ",".join(f"{k}={v}" for k, v in sorted(subject.items()))


@dataclass(frozen=True, slots=True)
class Observation:
    subject: dict[str, str]
    value: float
    evidence: dict[str, Any] = field(default_factory=dict)


class Observations(dict[str, Observation]):
    """Observations by subject key, with their values as an array: the engine looks only at
    subjects past a rule's line (found vectorised) and at those it already tracks."""

    _keys: list[str] | None = None
    _values: np.ndarray | None = None

    def breaching(self, rule: Rule) -> list[str]:
        if self._keys is None or self._values is None or len(self._keys) != len(self):
            self._keys = list(self)
            self._values = np.fromiter((o.value for o in self.values()), float, len(self))
        v = self._values
        t = rule.threshold
        if rule.above:
            mask = v >= t if rule.inclusive else v > t
        else:
            mask = v <= t if rule.inclusive else v < t
        keys = self._keys
        return [keys[i] for i in np.flatnonzero(mask)]


@dataclass(frozen=True, slots=True)
class Transition:
    action: Literal["raise", "clear"]
    rule: Rule
    key: str
    observation: Observation
    at: int


@dataclass(slots=True)
class Tracker:
    active: bool = False
    breach_since: int | None = None
    clear_since: int | None = None


class Engine:
    """Trackers of every (rule, subject); :meth:`step` evaluates one rule at one time."""

    def __init__(self) -> None:
        #: rule name -> subject key -> tracker (only subjects past a line or with an alarm)
        self.trackers: dict[str, dict[str, Tracker]] = {}

    def restore(self, active: Iterable[tuple[str, str]]) -> None:
        """Mark (rule name, subject key) pairs as having an active alarm (after a restart)."""
        self.trackers = {}
        for rule, key in active:
            self.trackers.setdefault(rule, {})[key] = Tracker(active=True)

    def active(self, rule: str, key: str) -> bool:
        t = self.trackers.get(rule, {}).get(key)
        return t is not None and t.active

    def step(
        self, rule: Rule, observations: Mapping[str, Observation], now: int
    ) -> list[Transition]:
        """Decisions for ``rule`` given this evaluation's ``observations`` (by subject key)."""
        out: list[Transition] = []
        trackers = self.trackers.setdefault(rule.name, {})
        if isinstance(observations, Observations):  # only subjects that can change
            keys: Iterable[str] = observations.breaching(rule)
            if trackers:
                keys = dict.fromkeys([*keys, *(k for k in trackers if k in observations)])
        else:
            keys = observations
        for key in keys:
            obs = observations[key]
            t = trackers.get(key)
            value = obs.value
            if t is None:
                if not rule.breached(value):
                    continue  # the common case: nothing to remember
                t = trackers[key] = Tracker()
            if not t.active:
                if rule.breached(value):
                    if t.breach_since is None:
                        t.breach_since = now
                    if now - t.breach_since >= rule.for_ms:
                        t.active, t.breach_since, t.clear_since = True, None, None
                        out.append(Transition("raise", rule, key, obs, now))
                else:
                    del trackers[key]
            elif rule.cleared(value):
                if t.clear_since is None:
                    t.clear_since = now
                if now - t.clear_since >= rule.clear_for_ms:
                    del trackers[key]
                    out.append(Transition("clear", rule, key, obs, now))
            else:
                t.clear_since = None
        for key in [k for k in trackers if k not in observations]:
            t = trackers[key]
            if t.active:
                t.clear_since = None  # no data: the clear time starts again
            else:
                del trackers[key]
        return out

    def forget(self, rule: str, key: str) -> None:
        """Drop what is known of (rule, subject), e.g. after a failed write of its alarm."""
        self.trackers.get(rule, {}).pop(key, None)

    def set_active(self, rule: str, key: str) -> None:
        self.trackers.setdefault(rule, {})[key] = Tracker(active=True)
