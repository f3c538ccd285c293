"""Every error the orchestrator raises on purpose derives from :class:`AetheriusError`.

::

    AetheriusError
     ├── MalformedEvent        an input could not become an Event (goes to dead letter)
     ├── RuleError             a rule directory has problems; ``.problems`` lists them all
     ├── ExpressionError       an expression is refused (syntax, sandbox, budget)
     └── ConfigError           the service configuration is invalid

Third-party errors (yaml, pydantic, durable-rules) are translated where they are met,
so callers only need to know this tree.
"""

from __future__ import annotations

from dataclasses import dataclass


class AetheriusError(Exception):
    """Aetherius error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class MalformedEvent(AetheriusError):
    """The input is not an event this orchestrator understands."""


class ExpressionError(AetheriusError):
    """The expression is refused."""


class ConfigError(AetheriusError):
    """The configuration is invalid."""


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a rule file, located as precisely as we can."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class RuleError(AetheriusError):
    """The rule files are invalid."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in rule files:\n{lines}")
