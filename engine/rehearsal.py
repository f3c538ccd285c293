"""Rule rehearsals (``aetherius test``): a storm in, the exact incidents and executions out.

A test file holds ``tests:``, each a case:

.. code-block:: yaml

    tests:
      - name: a crash-looping deployment becomes one incident, diagnosed, memory raised
        events:                                   # any shape intake accepts, at relative times
          - t: 0s
            repeat: 6                             # the same Event patched 6 times (count 1..6),
            every: 10s                            # 10 s apart, like the kubelet's recorder
            event: {kind: Event, reason: BackOff, ...}
        mocks:
          agent_manager:                          # first match answers; unmatched: success, no output
            - match: {action: logs}
              answer: {stdout: "java.lang.OutOfMemoryError: Java heap space"}
          reasoning: {root_cause: OOM, confidence: 0.9}     # none: the built-in classifier answers
          approvals: approve                      # approve | deny; none: nobody can decide
        expect:
          incidents:                              # exactly these (strategy, key), in any order
            - strategy: pod_crashloop
              key: shop/web
              events: 6
              execution:
                status: succeeded
                steps: [collect_logs, check_resources, ai_analysis, decide_action,
                        {execute_remediation: succeeded}, notify_success]
                decisions: {decide_action: increase_memory}
                remediations: [{action: increase_memory, target: {name: web}, dry_run: true}]
                notifications: [{channel: slack, contains: "Pod 问题已自动修复"}]

Events go through the same intake, rule base and correlation as the service, on a virtual
clock (a ten-minute storm runs in milliseconds); each incident's workflow runs at once on
the real runner and step code, against in-process stand-ins: agent-manager and the
reasoning-service answer from ``mocks``, Slack and webhooks are recorded, waits return at
once. Nothing leaves the process. What a case does not name is not compared, except the set
of incidents, which must be exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.approvals import Approval, ApprovalStatus, Channel
from engine.correlation import Incident
from engine.durations import Duration
from engine.events import Event, parse_events
from engine.exceptions import MalformedEvent, Problem
from engine.replay import Replayer
from engine.rules.check import effective_strategies
from engine.rules.loader import RuleSet
from engine.rules.yamlsource import LineMap, load_documents, yaml_error_line
from engine.runner import WorkflowRunner
from engine.statuses import StepStatus
from engine.store import Execution
from steps.base import Settings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()   # t: 0s of every case
AGENT, REASONING, SLACK, WEBHOOK = ("http://agent-manager.test", "http://reasoning.test",
                                    "http://slack.test/hook", "http://webhooks.test/")
MAX_EVENTS = 100_000       # expanded events in one case


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventInput(_Model):
    t: Duration = 0.0
    event: dict[str, Any]
    repeat: Annotated[int, Field(ge=1, le=10_000)] = 1
    every: Duration = 10.0


class AgentMatch(_Model):
    action: str | None = None
    args: list[str] | None = None         # each must be among the request's args
    target: dict[str, Any] | None = None  # each field must equal the request's
    dry_run: bool | None = None


class AgentMock(_Model):
    match: AgentMatch = AgentMatch()
    answer: dict[str, Any] = Field(default_factory=dict)   # merged over a success answer
    http_status: Annotated[int, Field(ge=200, le=599)] = 200


class Mocks(_Model):
    agent_manager: list[AgentMock] = Field(default_factory=list)
    reasoning: dict[str, Any] | None = None
    reasoning_status: Annotated[int, Field(ge=200, le=599)] = 200
    approvals: Literal["approve", "deny"] | None = None


class RemediationExpect(_Model):
    action: str
    target: dict[str, Any] | None = None
    dry_run: bool | None = None


class NotificationExpect(_Model):
    channel: str
    contains: str | None = None


StepExpect = str | dict[str, str]


class ExecutionExpect(_Model):
    workflow: str | None = None
    status: str | None = None
    outcome: str | None = None
    steps: list[StepExpect] | None = None
    decisions: dict[str, str] | None = None
    remediations: list[RemediationExpect] | None = None
    notifications: list[NotificationExpect] | None = None

    @model_validator(mode="after")
    def _one_status_per_step(self) -> ExecutionExpect:
        for item in self.steps or []:
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError("a step is its id, or {id: status}")
        return self


class IncidentExpect(_Model):
    strategy: str
    key: str
    events: int | None = None
    records: int | None = None
    late: int | None = None
    suppressed: int | None = None
    inhibited: dict[str, int] | None = None
    arm: str | None = None
    execution: ExecutionExpect | Literal["none"] | None = None


class Expect(_Model):
    incidents: list[IncidentExpect] = Field(default_factory=list)
    dead_letters: int | None = None


class Case(_Model):
    name: str = Field(min_length=1)
    events: list[EventInput] = Field(default_factory=list)
    mocks: Mocks = Mocks()
    dry_run: bool = True             # remediation.dry_run for this case
    expect: Expect


class TestFile(_Model):
    tests: list[Case] = Field(min_length=1)


@dataclasses.dataclass
class LoadedCase:
    case: Case
    path: str
    line: int

    @property
    def title(self) -> str:
        return f"{self.path}:{self.line}: {self.case.name}"


def test_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            out.append(path)
    return out


def load_cases(paths: Iterable[str | Path]) -> tuple[list[LoadedCase], list[Problem]]:
    """Every case of every file, and every problem (``path:line``)."""
    cases: list[LoadedCase] = []
    problems: list[Problem] = []
    for path in test_files(paths):
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, 0, f"cannot read: {exc}"))
            continue
        try:
            documents = load_documents(text)
        except yaml.YAMLError as exc:
            line, message = yaml_error_line(exc, text)
            problems.append(Problem(name, line, message))
            continue
        if not documents:
            problems.append(Problem(name, 1, "no tests in the file"))
        for data, lines in documents:
            try:
                parsed = TestFile.model_validate(data)
            except ValidationError as exc:
                problems.extend(_problems(name, lines, exc))
                continue
            for i, case in enumerate(parsed.tests):
                problems.extend(_event_problems(name, lines, i, case))
                cases.append(LoadedCase(case, name, lines.line(("tests", i))))
    return cases, problems


def _problems(path: str, lines: LineMap, exc: ValidationError) -> Iterator[Problem]:
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p in (
            "str", "dict[str,str]", "ExecutionExpect", "literal['none']"))))
        where = ".".join(str(p) for p in loc)
        yield Problem(path, lines.line(loc), f"{where}: {error['msg']}" if where else error["msg"])


def _event_problems(path: str, lines: LineMap, i: int, case: Case) -> Iterator[Problem]:
    total = 0
    for j, item in enumerate(case.events):
        total += item.repeat
        try:
            parsed = parse_events(item.event)
        except MalformedEvent as exc:
            yield Problem(path, lines.line(("tests", i, "events", j, "event")), f"not an event: {exc}")
            continue
        if not parsed and _pod(item.event) is None:
            yield Problem(path, lines.line(("tests", i, "events", j, "event")),
                          "this watch line carries no event")
    if total > MAX_EVENTS:
        yield Problem(path, lines.line(("tests", i, "events")),
                      f"{total} events; at most {MAX_EVENTS} in one case")


# ----------------------------------------------------------------------------- the stand-ins


@dataclasses.dataclass
class _Answer:
    status_code: int
    body: Any

    @property
    def content(self) -> bytes:
        return orjson.dumps(self.body)

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return self.body


class StandIns:
    """The runner's HTTP client in a rehearsal: agent-manager and reasoning answer from the
    mocks, everything sent is recorded."""

    def __init__(self, mocks: Mocks) -> None:
        self.mocks = mocks
        self.sent: list[tuple[str, Any]] = []     # (service, payload)

    async def post_json(self, url: str, payload: object, timeout: float, wait: Any = None) -> _Answer:
        body: Any = json.loads(json.dumps(payload, default=str))
        if url.startswith(AGENT):
            self.sent.append(("agent-manager", body))
            return self._agent(body)
        if url.startswith(REASONING):
            self.sent.append(("reasoning", body))
            return _Answer(self.mocks.reasoning_status, self.mocks.reasoning or {})
        service = "slack" if url.startswith(SLACK) else f"webhook:{url[len(WEBHOOK):]}"
        self.sent.append((service, body))
        return _Answer(200, {"ok": True})

    def _agent(self, request: dict[str, Any]) -> _Answer:
        answer: dict[str, Any] = {"status": "success", "exit_code": 0, "stdout": "", "stderr": "",
                                  "duration_ms": 1}
        for mock in self.mocks.agent_manager:
            m = mock.match
            if m.action is not None and m.action != request.get("action"):
                continue
            if m.args is not None and not all(a in (request.get("args") or []) for a in m.args):
                continue
            target = request.get("target") or {}
            if m.target is not None and any(target.get(k) != v for k, v in m.target.items()):
                continue
            if m.dry_run is not None and m.dry_run != request.get("dry_run"):
                continue
            return _Answer(mock.http_status, {**answer, **mock.answer})
        return _Answer(200, answer)


class DecidedGate:
    """Approvals decided at once, as the case says."""

    def __init__(self, decision: Literal["approve", "deny"]) -> None:
        self.decision = decision
        self.opened: dict[tuple[str, int], Approval] = {}

    async def current(self, execution_id: str, seq: int) -> Approval | None:
        return self.opened.get((execution_id, seq))

    async def open(self, approval: Approval) -> tuple[Approval, bool]:
        status = ApprovalStatus.APPROVED if self.decision == "approve" else ApprovalStatus.DENIED
        decided = approval.decided(status, "rehearsal", Channel.API, "decided by the test")
        self.opened[(approval.execution_id, approval.seq)] = decided
        return decided, True

    async def supersede(self, approval: Approval, plan_hash: str) -> None:
        self.opened.pop((approval.execution_id, approval.seq), None)

    async def wait(self, approval: Approval) -> Approval:
        return approval


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Got:
    """What a case produced: incidents, and for each its execution and what it sent."""

    incidents: list[Incident]
    executions: dict[str, Execution]
    sent: dict[str, list[tuple[str, Any]]]
    dead_letters: int


def _pod(obj: Any) -> dict[str, Any] | None:
    inner = obj.get("object") if isinstance(obj.get("object"), dict) else obj
    return inner if inner.get("kind") == "Pod" else None


def _restarted(obj: dict[str, Any], times: int) -> dict[str, Any]:
    """A Pod object whose containers restarted ``times`` more times."""
    copy = json.loads(json.dumps(obj))
    pod = _pod(copy)
    assert pod is not None
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in (pod.get("status") or {}).get(key) or []:
            if isinstance(container, dict):
                container["restartCount"] = int(container.get("restartCount") or 0) + times
    return copy


def expand(case: Case) -> list[tuple[float, int, Event]]:
    """The case's events, as parsed events on the virtual clock (time, order, event).

    A repeated Event is one Event object patched (its count grows, its last time moves); a
    repeated Pod is one Pod restarting (its containers' restart counts grow)."""
    out: list[tuple[float, int, Event]] = []
    order = 0
    counts: dict[str, int] = {}     # an Event object's last count: a later input goes on from it
    for j, item in enumerate(case.events):
        pod = _pod(item.event) is not None
        bases = parse_events(item.event)
        for i in range(item.repeat):
            at = EPOCH + item.t + i * item.every
            if pod:
                for k, event in enumerate(parse_events(_restarted(item.event, i))):
                    event.id = f"t{j}-{i}-{k}"
                    event.first_seen = event.last_seen = at
                    out.append((at, order, event))
                    order += 1
                continue
            for base in bases:
                event = dataclasses.replace(base)
                event.id = f"t{j}-{i}"
                if base.source == "kubernetes":
                    uid = event.event_uid = base.event_uid or f"rehearsal-{j}"
                    event.total_count = counts[uid] = max(base.total_count + i, counts.get(uid, 0) + 1)
                    event.first_seen = EPOCH + item.t
                    event.last_seen = at
                else:
                    event.first_seen = event.last_seen = at
                out.append((at, order, event))
                order += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return out


async def run_case(case: Case, rules: RuleSet, settings: Settings) -> Got:
    replayer = Replayer(effective_strategies(rules).values())
    replayer.feed_events(event for _, _, event in expand(case))
    result = replayer.finish()
    stand_ins = StandIns(case.mocks)
    names = {step.parsed.webhook for wf in rules.workflows.values() for step in wf.steps   # type: ignore[attr-defined]
             if step.type == "notification" and getattr(step.parsed, "webhook", None)}
    settings = dataclasses.replace(
        settings, agent_manager_url=AGENT,
        reasoning_service_url=REASONING if case.mocks.reasoning is not None else None,
        slack_webhook_url=SLACK, webhooks={n: f"{WEBHOOK}{n}" for n in names},
        dry_run=case.dry_run, live=True, virtual_time=True)
    gate = DecidedGate(case.mocks.approvals) if case.mocks.approvals else None
    runner = WorkflowRunner(settings=settings, http=stand_ins, approvals=gate)
    executions: dict[str, Execution] = {}
    sent: dict[str, list[tuple[str, Any]]] = {}
    for incident in result.incidents:
        workflow = rules.workflows.get(incident.workflow_id)
        if workflow is None:
            continue
        before = len(stand_ins.sent)
        executions[incident.id] = await runner.run(
            workflow, incident=incident.context(), events=incident.events_context(),
            execution_id=f"test-{incident.id}")
        sent[incident.id] = stand_ins.sent[before:]
    return Got(result.incidents, executions, sent, len(result.dead_letters))


# ----------------------------------------------------------------------------- comparing


def _steps_got(execution: Execution) -> list[tuple[str, str]]:
    runs = sorted((r for r in execution.runs if r.status != StepStatus.PENDING),
                  key=lambda r: (r.started_at or float("inf"), r.seq))
    return [(r.step_id, str(r.status)) for r in runs]


def compare(case: Case, got: Got) -> list[str]:
    """Every difference between what the case expects and what happened (empty: it passed)."""
    out: list[str] = []
    expect = case.expect
    if expect.dead_letters is not None and expect.dead_letters != got.dead_letters:
        out.append(f"dead letters: expected {expect.dead_letters}, got {got.dead_letters}")
    found = {(i.strategy.id, i.key_text): i for i in got.incidents}
    wanted = {(e.strategy, e.key): e for e in expect.incidents}
    for key in sorted(set(wanted) - set(found)):
        out.append(f"missing incident {key[0]} {key[1]}" + _nearby(key, found))
    for key in sorted(set(found) - set(wanted)):
        incident = found[key]
        arm = f", arm {incident.arm}" if incident.arm is not None else ""
        out.append(f"unexpected incident {key[0]} {key[1]} ({incident.events} events{arm})")
    for key in sorted(set(wanted) & set(found)):
        out.extend(_incident(wanted[key], found[key], got))
    return out


def _nearby(key: tuple[str, str], found: dict[tuple[str, str], Incident]) -> str:
    others = [f"{s} {k}" for s, k in found if s == key[0] or k == key[1]]
    return f" (got {', '.join(sorted(others))})" if others else ""


def _incident(want: IncidentExpect, incident: Incident, got: Got) -> Iterator[str]:
    name = f"incident {want.strategy} {want.key}"
    summary = incident.summary()
    for field in ("events", "records", "late", "suppressed", "inhibited"):
        expected = getattr(want, field)
        value = summary.get(field)
        if expected is not None and expected != value:
            yield f"{name}: {field}: expected {expected!r}, got {value!r}"
    if want.arm is not None:
        arm = summary.get("arm")
        if arm != want.arm:
            yield f"{name}: arm: expected {want.arm!r}, got {arm!r}"
    execution = got.executions.get(incident.id)
    if want.execution == "none":
        if execution is not None:
            yield f"{name}: expected no execution, got workflow {execution.workflow_id} ({execution.status})"
        return
    if want.execution is None:
        return
    if execution is None:
        yield f"{name}: expected an execution, got none (workflow {incident.workflow_id!r} is not loaded)"
        return
    yield from _execution(name, want.execution, execution, got.sent.get(incident.id, []))


def _execution(name: str, want: ExecutionExpect, execution: Execution,
               sent: list[tuple[str, Any]]) -> Iterator[str]:
    for field, value in (("workflow", execution.workflow_id), ("status", str(execution.status)),
                         ("outcome", str(execution.outcome))):
        expected = getattr(want, field)
        if expected is not None and expected != value:
            extra = f" ({execution.error})" if field == "status" and execution.error else ""
            yield f"{name}: {field}: expected {expected!r}, got {value!r}{extra}"
    ran = _steps_got(execution)
    if want.steps is not None:
        expected_lines: list[str] = []
        wanted: list[tuple[str, str | None]] = []
        for item in want.steps:
            step, status = next(iter(item.items())) if isinstance(item, dict) else (item, None)
            wanted.append((step, status))
            expected_lines.append(step if status is None else f"{step}: {status}")
        # A plain id in the expectation matches the step whatever its status: shown bare.
        got_lines = [step if k < len(wanted) and wanted[k] == (step, None) else f"{step}: {status}"
                     for k, (step, status) in enumerate(ran)]
        if expected_lines != got_lines:
            errors = {r.step_id: r.error for r in execution.runs if r.error}
            diff = "\n".join("      " + line for line in difflib.unified_diff(
                expected_lines, got_lines, "expected", "got", lineterm="", n=max(len(ran), len(want.steps))))
            detail = "".join(f"\n      {step}: {error}" for step, error in errors.items())
            yield f"{name}: steps differ:\n{diff}" + (f"\n    errors:{detail}" if detail else "")
    outputs = {r.step_id: r.output for r in execution.runs}
    for step, value in (want.decisions or {}).items():
        output = outputs.get(step)
        chosen = output.get("value") if isinstance(output, dict) else None
        if step not in outputs:
            yield f"{name}, step {step}: expected decision {value!r}, but the step did not run"
        elif chosen != value:
            yield f"{name}, step {step}: decision: expected {value!r}, got {chosen!r}"
    if want.remediations is not None:
        changes = [body for service, body in sent if service == "agent-manager" and "dry_run" in body
                   and not str(body.get("idempotency_key", "")).endswith(":plan")]
        got_changes = [{"action": c.get("action"), "target": c.get("target"), "dry_run": c.get("dry_run")}
                       for c in changes]
        if len(changes) != len(want.remediations) or any(
                not _remediation_matches(w, c) for w, c in zip(want.remediations, changes, strict=False)):
            expected = [w.model_dump(exclude_none=True) for w in want.remediations]
            yield f"{name}: remediations sent: expected {expected}, got {got_changes}"
    if want.notifications is not None:
        notes = [(service, str(body.get("text", "")) if isinstance(body, dict) else str(body))
                 for service, body in sent if service == "slack" or service.startswith("webhook:")]
        logged = [("log", str(r.output.get("text", ""))) for r in execution.runs
                  if r.step_type == "notification" and isinstance(r.output, dict)
                  and r.output.get("channel") == "log"]
        notes += logged
        if len(notes) != len(want.notifications) or any(
                not (w.channel == service or service == f"webhook:{w.channel}")
                or (w.contains is not None and w.contains not in text)
                for w, (service, text) in zip(want.notifications, notes, strict=False)):
            shown = [f"{service}: {text[:120]!r}" for service, text in notes]
            yield (f"{name}: notifications: expected "
                   f"{[w.model_dump(exclude_none=True) for w in want.notifications]}, got {shown}")


def _remediation_matches(want: RemediationExpect, sent: dict[str, Any]) -> bool:
    if want.action != sent.get("action"):
        return False
    if want.dry_run is not None and want.dry_run != sent.get("dry_run"):
        return False
    target = sent.get("target") or {}
    return want.target is None or all(target.get(k) == v for k, v in want.target.items())


# ----------------------------------------------------------------------------- a whole run


@dataclasses.dataclass
class Outcome:
    case: LoadedCase
    failures: list[str]
    seconds: float
    got: Got | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


def rehearse(cases: list[LoadedCase], rules: RuleSet, settings: Settings) -> list[Outcome]:
    async def go() -> list[Outcome]:
        out = []
        loop = asyncio.get_running_loop()
        for loaded in cases:
            began = loop.time()
            try:
                got = await run_case(loaded.case, rules, settings)
            except Exception as exc:  # a broken case fails, the run goes on
                out.append(Outcome(loaded, [f"the case could not run: {type(exc).__name__}: {exc}"],
                                   loop.time() - began))
                continue
            out.append(Outcome(loaded, compare(loaded.case, got), loop.time() - began, got))
        return out

    return asyncio.run(go())


def coverage(outcomes: list[Outcome], rules: RuleSet) -> dict[str, list[str]]:
    """Strategies, workflows and steps that no case reached."""
    strategies: set[str] = set()
    workflows: set[str] = set()
    steps: set[str] = set()
    for outcome in outcomes:
        if outcome.got is None:
            continue
        strategies.update(i.strategy.id for i in outcome.got.incidents)
        for execution in outcome.got.executions.values():
            workflows.add(execution.workflow_id)
            steps.update(f"{execution.workflow_id}.{r.step_id}" for r in execution.runs
                         if r.status != StepStatus.PENDING)
    known = effective_strategies(rules)
    return {
        "strategies": sorted(s for s in known if s not in strategies),
        "workflows": sorted(w for w, wf in rules.workflows.items()
                            if w not in workflows and wf.status == "active"),
        "steps": sorted(f"{w}.{s.id}" for w, wf in rules.workflows.items() if wf.status == "active"
                        for s in wf.steps if f"{w}.{s.id}" not in steps),
    }


def junit(outcomes: list[Outcome]) -> str:
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="aetherius test", tests=str(len(outcomes)),
                       failures=str(sum(1 for o in outcomes if not o.passed)),
                       time=f"{sum(o.seconds for o in outcomes):.3f}")
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", classname=outcome.case.path, name=outcome.case.case.name,
                             time=f"{outcome.seconds:.3f}")
        if outcome.failures:
            failure = ET.SubElement(case, "failure", message=outcome.failures[0].splitlines()[0][:200])
            failure.text = "\n".join(outcome.failures)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
