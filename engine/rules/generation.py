"""A rule generation: the validated set of strategies and workflows that is active, and the
outcome of the last reload. The service swaps generations atomically between two events
(:mod:`engine.service.generations`); the API and the console read them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.exceptions import Problem
from engine.rules.model import Strategy, Workflow


@dataclass
class Generation:
    number: int
    strategies: dict[str, Strategy]
    workflows: dict[str, Workflow]
    digest: str
    loaded_at: float = field(default_factory=time.time)
    files: int = 0


@dataclass
class ReloadStatus:
    ok: bool = True
    generation: int = 0
    last_attempt: float = 0.0
    last_success: float = 0.0
    reason: str = ""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # stored rules left out, and why
    reloads: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "generation": self.generation, "reason": self.reason,
                "last_attempt": self.last_attempt, "last_success": self.last_success,
                "reloads": self.reloads, "failures": self.failures,
                "problems": [str(p) for p in self.problems], "warnings": list(self.warnings)}
