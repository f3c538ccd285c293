"""Every error the orchestrator raises on purpose derives from :class:`AetheriusError`.

::

    AetheriusError
     ├── MalformedEvent        an input could not become an Event (goes to dead letter)
 ├── BadPayload            a JSON input is out of bounds (NUL, past int64, too deep); ``loc`` says where
     ├── RuleError             a rule directory has problems; ``.problems`` lists them all
     ├── ExpressionError       an expression is refused (syntax, sandbox, budget)
     ├── ConfigError           the service configuration is invalid; ``.problems`` lists them all
     ├── StoreError            the execution store failed
     ├── TransportError        an HTTP request did not get an answer (raised by the transport)
     │    └── TransportTimeout     ... within its timeout
     └── StepError             a step attempt failed; ``retryable`` says if trying again may help
          ├── StepTimeout          the attempt ran past its timeout (retryable)
          ├── ServiceUnavailable   an outside service could not be reached or answered 5xx (retryable)
          │    └── LockBusy            another replica holds the lock on the target (retryable)
          ├── ServiceRejected      an outside service refused the request, 4xx (not retryable)
          ├── CommandFailed        agent-manager ran the command and it failed
          ├── NotAllowed           refused by policy (engine.policy), allowlist, change cap (not retryable)
          └── NotApproved          a change that needed approval was denied, or expired (not retryable)

Third-party errors (yaml, pydantic, durable-rules, httpx/aiohttp) are translated where they are met,
so callers only need to know this tree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

Loc = tuple[str | int, ...]


class AetheriusError(Exception):
    """Aetherius error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class MalformedEvent(AetheriusError):
    """The input is not an event this orchestrator understands."""


class BadPayload(AetheriusError):
    """The payload is out of bounds."""

    def __init__(self, message: str | None = None, *, loc: Loc = (), offset: int | None = None) -> None:
        self.loc = loc
        self.msg = message or (self.__doc__ or "").strip()
        where = _path(loc)
        super().__init__(f"at {where}: {self.msg}" if where else
                         f"{self.msg} (at byte {offset})" if offset is not None else self.msg)


def _path(loc: Loc, limit: int = 80) -> str:
    """``context.pods[3].name``; a key that is not an identifier quoted; the middle of a long
    path left out (it comes from a client: it is shown, never trusted)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if part.isidentifier() else repr(part[:limit])
            text += f".{name}" if text else name
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 2):]}"


class ExpressionError(AetheriusError):
    """The expression is refused."""


class ConfigError(AetheriusError):
    """The configuration is invalid."""

    def __init__(self, message: str | None = None, problems: list[ConfigProblem] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message or "\n".join(str(p) for p in self.problems) or None)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: where (the file and line, or the environment
    variable), which key (``service.lease``) and what. Never the value: it may be a secret."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@functools.total_ordering
@dataclass(frozen=True, eq=True)
class Problem:
    """One thing wrong with a rule, located as precisely as we can, and kept as data.

    ``path:line`` is where a person looks (``str()`` prints ``path:line: message``). ``loc`` is
    the field path inside the rule's own document, e.g. ``("steps", 3, "config", "action")``
    (for a bundle, inside its entry), and ``msg`` says what is wrong there without naming the
    place: what a program shows next to the field (the API's 422 items). ``named`` is the
    field as the printed message names it before ``msg``, if it does."""

    path: str
    line: int
    msg: str
    loc: Loc = ()
    named: str | None = None

    @property
    def message(self) -> str:
        """The message as printed after ``path:line:``."""
        return f"{self.named}: {self.msg}" if self.named is not None else self.msg

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"

    def __lt__(self, other: Problem) -> bool:
        # Sorted as printed, so reports read file by file, line by line.
        return (self.path, self.line, self.message) < (other.path, other.line, other.message)


class RuleError(AetheriusError):
    """The rule files are invalid."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in rule files:\n{lines}")


class StoreError(AetheriusError):
    """The execution store failed."""


class TransportError(AetheriusError):
    """The request got no answer."""


class TransportTimeout(TransportError):
    """The request got no answer in time."""


class StepError(AetheriusError):
    """The step failed."""

    retryable: bool = True

    def __init__(self, message: str | None = None, *, retryable: bool | None = None,
                 next_retry_delay: float | None = None, output: object = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.next_retry_delay = next_retry_delay
        self.output = output

    @property
    def kind(self) -> str:
        return type(self).__name__


class StepTimeout(StepError):
    """The step ran past its timeout."""


class ServiceUnavailable(StepError):
    """The outside service could not be reached."""


class LockBusy(ServiceUnavailable):
    """Another holder kept the lock for longer than we may wait; nothing was done."""


class ServiceRejected(StepError):
    """The outside service rejected the request."""

    retryable = False


class CommandFailed(StepError):
    """The command failed."""


class NotAllowed(StepError):
    """Refused by policy."""

    retryable = False


class NotApproved(StepError):
    """The change was not approved: denied by a human, or its approval expired."""

    retryable = False
