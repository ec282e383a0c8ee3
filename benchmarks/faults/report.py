"""The campaign's result: the violations, one line each, then one summary line.

The summary line reads::

    seed 7 (short): faults 101 (worker-kill 9, ..., poison-run 2); runs 300 (succeeded 211,
    failed 40, cancelled 29, running 20); steps 2160; executions 2301; violations 24
    (unfinished 20, attempt-ran-twice 4); 251 s

(on one line): faults injected by kind, in the order of ``--kinds``; runs by their final
status in the store; step rows; executions of step code (ledger lines); violations by kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.faults.model import Violation


@dataclass(slots=True)
class Outcome:
    seed: int
    mode: str
    kinds: tuple[str, ...]
    faults: dict[str, int] = field(default_factory=dict)  # injected, by kind
    runs: dict[str, int] = field(default_factory=dict)  # by final status
    steps: int = 0
    executions: int = 0
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        faults = ", ".join(f"{kind} {self.faults.get(kind, 0)}" for kind in self.kinds)
        statuses = ("succeeded", "failed", "cancelled", "running", "pending")
        known = [s for s in statuses if self.runs.get(s)] + sorted(
            s for s in self.runs if s not in statuses
        )
        runs = ", ".join(f"{status} {self.runs[status]}" for status in known)
        by_kind: dict[str, int] = {}
        for v in self.violations:
            by_kind[v.kind] = by_kind.get(v.kind, 0) + 1
        violations = f"violations {len(self.violations)}"
        if by_kind:
            violations += " (" + ", ".join(f"{k} {n}" for k, n in by_kind.items()) + ")"
        return (
            f"seed {self.seed} ({self.mode}): faults {sum(self.faults.values())} ({faults}); "
            f"runs {sum(self.runs.values())} ({runs}); steps {self.steps}; "
            f"executions {self.executions}; {violations}; {sum(self.phases.values()):.0f} s"
        )

    def lines(self) -> list[str]:
        """What the campaign prints on stdout: the violations, then the summary."""
        return [v.line() for v in self.violations] + [self.summary()]

    def write_json(self, path: Path) -> None:
        data: dict[str, Any] = asdict(self)
        data["summary"] = self.summary()
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
