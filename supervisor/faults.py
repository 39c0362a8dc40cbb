"""Which calls get an injected fault: the schedule half of fault injection.

A fault must be reproducible: `count` hits the next N calls, `every` every Nth call, `probability`
with a `seed` draws from its own random stream. Rules come from `[[faults]]` or the API and can be
listed and cleared while serving; tool actors consult the plan from their threads, hence the lock.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass, field

from actors.faults import Fault, FaultKind
from actors.prepare import split_slot_name
from supervisor.config import FaultSettings


@dataclass
class FaultRule:
    id: int
    settings: FaultSettings
    seen: int = 0  # calls of this tool the rule has looked at
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random)
    # Hangs wait on this; set when the rule is cleared or the runtime stops.
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def exhausted(self) -> bool:
        return self.settings.count is not None and self.fired >= self.settings.count

    def fires(self) -> bool:
        s = self.settings
        self.seen += 1
        if s.count is not None:
            hit = self.fired < s.count
        elif s.every is not None:
            hit = self.seen % s.every == 0
        elif s.probability is not None:
            hit = self.rng.random() < s.probability
        else:
            hit = True  # no trigger given: every call
        if hit:
            self.fired += 1
        return hit

    def describe(self) -> dict[str, object]:
        data = self.settings.model_dump(exclude_none=True)
        data.update(id=self.id, seen=self.seen, fired=self.fired, active=not self.exhausted)
        return data


class FaultPlan:
    """Callable as an actor's `FaultSource`: (tool, call_id) -> Fault | None."""

    def __init__(self, rules: tuple[FaultSettings, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rules: list[FaultRule] = []
        for settings in rules:
            self.add(settings)

    def add(self, settings: FaultSettings) -> int:
        rule = FaultRule(next(self._ids), settings, rng=random.Random(settings.seed))
        with self._lock:
            self._rules.append(rule)
        return rule.id

    def clear(self, rule_id: int | None = None, *, tool: str | None = None) -> int:
        """Remove one rule, a tool's rules, or all; returns how many were removed."""
        with self._lock:
            keep: list[FaultRule] = []
            gone: list[FaultRule] = []
            for rule in self._rules:
                match = (rule_id is None or rule.id == rule_id) and (tool is None or rule.settings.tool == tool)
                (gone if match else keep).append(rule)
            self._rules = keep
        for rule in gone:
            rule.released.set()
        return len(gone)

    def release_all(self) -> None:
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            rule.released.set()

    def list(self) -> list[dict[str, object]]:
        with self._lock:
            return [rule.describe() for rule in self._rules]

    def __call__(self, slot: str, call_id: str) -> Fault | None:
        """The fault for this call of `slot` (a tool, or a tool on a pool: "nmap@dmz"), if a rule fires."""
        tool, pool = split_slot_name(slot)
        with self._lock:
            for rule in self._rules:
                if rule.settings.tool != tool or rule.settings.pool not in (None, pool):
                    continue
                if not rule.exhausted and rule.fires():
                    s = rule.settings
                    return Fault(
                        FaultKind(s.kind), delay_sec=s.delay_sec, flood_bytes=s.flood_bytes, released=rule.released
                    )
        return None
