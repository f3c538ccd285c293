"""The ``aetherius`` command (also ``python -m engine``).

- ``aetherius check [DIR]``    validate rule files; every problem as ``path:line: message``
- ``aetherius schema``         JSON Schema of rule files
- ``aetherius replay FILE``    what a recorded event stream turns into, on event time,
                               with each incident's workflow path in dry-run
- ``aetherius run WORKFLOW --event FILE``  one workflow against one event
- ``aetherius test [PATH...]`` rule rehearsals: storms in, the expected incidents and paths out
- ``aetherius serve``          the service: NATS intake, PostgreSQL, Redis, HTTP API

``--config FILE`` and ``-v`` go before or after the command (``aetherius serve --config FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from engine import logs
from engine.cli_admin import add_commands
from engine.config import load_config
from engine.correlation import Incident
from engine.exceptions import AetheriusError, ConfigError, RuleError
from engine.rules.check import effective_strategies, load_valid, rule_warnings

log = logging.getLogger("engine.cli")


def _rules_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "rules", None):
        return Path(args.rules)
    return load_config(args.config).rules.dir


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)   # the policy steps are checked against is the service's
    directory = Path(args.dir) if args.dir else _rules_dir(args)
    try:
        rules = load_valid(directory, config.agent_policy())
    except RuleError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found in {directory}", file=sys.stderr)
        return 1
    strategies = effective_strategies(rules)
    warnings = rule_warnings(rules)   # worth a look, but the rules are valid: exit 0
    for warning in warnings:
        print(warning)
    print(f"OK: {len(rules.files)} file(s), {len(strategies)} strategies "
          f"({len(rules.strategies)} explicit), {len(rules.workflows)} workflows"
          + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from engine.rules.schema import rule_file_schema

    print(json.dumps(rule_file_schema(), indent=2, ensure_ascii=False))
    return 0


def _print_incident(incident: Incident, as_json: bool) -> None:
    s = incident.summary()
    if as_json:
        print(json.dumps(s, ensure_ascii=False))
        return
    covered = ""
    if s["inhibited"]:
        covered = " covers " + ", ".join(f"{k}={v}" for k, v in sorted(s["inhibited"].items()))
    print(f"incident {s['id']}  strategy={s['strategy']}  key={s['key']}  events={s['events']}"
          f"  first={s['first']}  last={s['last']}  workflow={s['workflow']}"
          + (f"  arm={s['arm']}" if "arm" in s else "") + covered)


def _settings(args: argparse.Namespace):
    live = bool(getattr(args, "live", False))
    return load_config(args.config).step_settings(live=live, virtual_time=not live)


_MARK = {"succeeded": "ok", "failed": "FAILED", "skipped": "skipped", "cancelled": "cancelled",
         "timed_out": "timed out"}


def _print_execution(execution, as_json: bool, incident_id: str | None = None,
                     arm: str | None = None) -> None:
    from engine.runner import summary

    line = summary(execution)
    if as_json:
        if incident_id:
            line["incident"] = incident_id
        if arm is not None:
            line["arm"] = arm
        print(json.dumps(line, ensure_ascii=False, default=str))
        return
    path = " -> ".join(f"{s['id']} ({_MARK.get(s['status'], s['status'])})" for s in line["steps"])
    mode = "dry-run" if execution.dry_run else "live"
    print(f"  workflow {execution.workflow_id} [{mode}]: {execution.status}: {path}")


@contextlib.asynccontextmanager
async def _runner(settings):
    """A runner for ``run`` and ``replay``: with an HTTP client only when it calls out."""
    from engine.runner import WorkflowRunner

    if not settings.live:
        yield WorkflowRunner(settings=settings)
        return
    from engine.service.mail import SmtpMailer
    from engine.service.transport import make_client

    async with make_client() as http:
        yield WorkflowRunner(settings=settings, http=http, mailer=SmtpMailer())


async def _run_incidents(incidents: list[Incident], workflows: dict, settings, as_json: bool) -> None:
    async with _runner(settings) as runner:
        for incident in incidents:
            _print_incident(incident, as_json)
            workflow = workflows.get(incident.workflow_id)
            if workflow is None:
                continue
            # Named after the incident, so the same input always prints the same output.
            execution = await runner.run(workflow, incident=incident.context(),
                                         events=incident.events_context(),
                                         execution_id=f"replay-{incident.id}")
            _print_execution(execution, as_json, incident.id, incident.arm)


def cmd_replay(args: argparse.Namespace) -> int:
    from engine import gctune
    from engine.replay import Replayer

    directory = _rules_dir(args)
    config = load_config(args.config)
    rules = load_valid(directory, config.agent_policy())
    replayer = Replayer(effective_strategies(rules).values(), one_shot=True)
    gctune.tune(config.service.gc_thresholds)     # a recording of a storm allocates as a storm does
    try:
        replayer.feed_file(args.file)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    result = replayer.finish()
    asyncio.run(_run_incidents(result.incidents, rules.workflows, _settings(args), args.json))
    for dead in result.dead_letters:
        if args.json:
            print(json.dumps({"kind": "dead_letter", "line": dead.line, "reason": dead.reason}))
        else:
            print(f"{args.file}:{dead.line}: dead letter: {dead.reason}", file=sys.stderr)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['records']} records, {summary['duplicates']} duplicates, "
              f"{summary['dead_letters']} dead letters, {summary['incidents']} incidents",
              file=sys.stderr)
        for strategy_id, arms in sorted(summary.get("arms", {}).items()):
            print(f"experiment {strategy_id}: " + ", ".join(f"{arm}={n}" for arm, n in sorted(arms.items())),
                  file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.correlation import incident_from_event
    from engine.events import OccurrenceTracker, parse_event, read_file
    from engine.exceptions import MalformedEvent
    rules = load_valid(_rules_dir(args), load_config(args.config).agent_policy())
    workflow = rules.workflows.get(args.workflow)
    if workflow is None:
        known = ", ".join(sorted(rules.workflows))
        print(f"aetherius: no workflow {args.workflow!r} (known: {known})", file=sys.stderr)
        return 2
    try:
        items = list(read_file(args.event))
    except OSError as exc:
        print(f"{args.event}: {exc.strerror}", file=sys.stderr)
        return 2
    event = None
    for line, obj in items:
        if isinstance(obj, MalformedEvent):
            raise MalformedEvent(f"{args.event}:{line}: {obj}")
        try:
            event = parse_event(obj)
        except MalformedEvent as exc:
            raise MalformedEvent(f"{args.event}:{line}: {exc}") from None
        if event is not None:
            break
    if event is None:
        print(f"{args.event}: no event in the file", file=sys.stderr)
        return 2
    OccurrenceTracker().observe(event)
    strategy = next((s for s in effective_strategies(rules).values() if s.workflow_id == workflow.id), None)
    incident = incident_from_event(event, strategy.id if strategy else "manual",
                                   strategy.severity if strategy else None)
    settings = _settings(args)

    def show(what: str, execution, run) -> None:
        if args.json:
            print(json.dumps({"kind": "step", "event": what, "id": run.step_id, "type": run.step_type,
                              "status": run.status, "attempt": run.attempts,
                              **({"error": run.error} if run.error else {})}, ensure_ascii=False),
                  flush=True)
            return
        if what == "step_started":
            print(f"-> {run.step_id} ({run.step_type}) attempt {run.attempts}", flush=True)
        else:
            extra = f": {run.error}" if run.error and run.status != "succeeded" else ""
            print(f"   {run.step_id}: {_MARK.get(run.status, run.status)}{extra}", flush=True)

    async def go():
        async with _runner(settings) as runner:
            runner.listeners.append(show)
            return await runner.run(workflow, incident=incident,
                                    events=[{**event.to_dict(), "labels": event.labels}])

    execution = asyncio.run(go())
    if args.json:
        _print_execution(execution, True)
    else:
        mode = "dry-run" if execution.dry_run else "live"
        print(f"execution {execution.id} [{mode}]: {execution.status}"
              + (f" ({execution.error})" if execution.error else ""))
    return 0 if execution.status == "succeeded" else 1


def cmd_test(args: argparse.Namespace) -> int:
    from engine import rehearsal

    config = load_config(args.config)
    directory = _rules_dir(args)
    paths = args.paths or [directory / "tests"]
    cases, problems = rehearsal.load_cases(paths)
    try:
        rules = load_valid(directory, config.agent_policy())
    except RuleError as exc:
        problems += exc.problems
        rules = None
    if problems or rules is None:
        for problem in sorted(problems):
            print(problem, file=sys.stderr)
        print(f"aetherius test: {len(problems)} problem(s) in the test or rule files", file=sys.stderr)
        return 2
    if not cases:
        print(f"aetherius test: no test cases in {', '.join(map(str, paths))}", file=sys.stderr)
        return 2
    if not args.verbose:
        # The steps' own warnings (a failed step, a refusal) are what a case checks; the
        # report says what differs.
        logging.getLogger("engine").setLevel(logging.ERROR)
        logging.getLogger("steps").setLevel(logging.ERROR)
    outcomes = rehearsal.rehearse(cases, rules, config.step_settings(live=True, virtual_time=True))
    failed = [o for o in outcomes if not o.passed]
    if args.format == "junit":
        print(rehearsal.junit(outcomes))
    else:
        for outcome in outcomes:
            mark = "ok  " if outcome.passed else "FAIL"
            print(f"{mark} {outcome.case.title}")
            for incident in outcome.got.incidents if outcome.got is not None else []:
                if incident.arm is not None:   # an experiment's arm, for each incident
                    print(f"     incident {incident.strategy.id} {incident.key_text}: arm {incident.arm}")
            for failure in outcome.failures:
                print(f"     {failure}")
        print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    untested = rehearsal.coverage(outcomes, rules) if args.coverage or args.fail_on_untested else None
    if untested is not None:
        missing = sum(len(v) for v in untested.values())
        out = sys.stderr if args.format == "junit" else sys.stdout
        for kind, names in untested.items():
            if names:
                print(f"untested {kind}: {', '.join(names)}", file=out)
        if not missing:
            print("coverage: every strategy, workflow and step is reached by a test", file=out)
        if args.fail_on_untested and missing:
            return 1
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.service import serve

    config = load_config(args.config)   # an invalid one stops here, before any server starts
    settings = config.logging
    logs.configure(level=settings.level, format=settings.format, file=settings.file,
                   max_bytes=settings.max_bytes, backups=settings.backups, verbose=args.verbose)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))


_CONFIG_HELP = "config file (default: config/config.yaml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aetherius", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=_CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The same options after the command. SUPPRESS: a command that is not given them keeps
    # what was given before it, instead of resetting it to a default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", parents=[common], help="validate rule files and report every problem")
    check.add_argument("dir", nargs="?", help="rule directory or file (default: rules.dir)")
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of rule files")
    schema.set_defaults(func=cmd_schema)

    replay = sub.add_parser("replay", parents=[common],
                            help="run a recorded event stream offline, on event time")
    replay.add_argument("file", help="JSON lines, watch output or a kubectl List ('-' for stdin)")
    replay.add_argument("--rules", help="rule directory (default: rules.dir)")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.add_argument("--live", action="store_true",
                        help="run workflows against the configured services (default: dry-run)")
    replay.set_defaults(func=cmd_replay)

    run = sub.add_parser("run", parents=[common],
                         help="run one workflow against one event (dry-run unless --live)")
    run.add_argument("workflow", help="workflow id")
    run.add_argument("--event", required=True, help="a file with the triggering event")
    run.add_argument("--rules", help="rule directory (default: rules.dir)")
    run.add_argument("--live", action="store_true",
                     help="call agent-manager, reasoning-service and Slack from the config")
    run.add_argument("--json", action="store_true", help="end with one JSON line for the execution")
    run.set_defaults(func=cmd_run)

    test = sub.add_parser("test", parents=[common],
                          help="rule rehearsals: events in, the expected incidents and workflow paths out")
    test.add_argument("paths", nargs="*", type=Path, help="test files or directories (default: RULES/tests)")
    test.add_argument("--rules", help="rule directory (default: rules.dir)")
    test.add_argument("--format", choices=("text", "junit"), default="text",
                      help="junit: JUnit XML on stdout")
    test.add_argument("--coverage", action="store_true",
                      help="list strategies, workflows and steps no test reaches")
    test.add_argument("--fail-on-untested", action="store_true",
                      help="exit 1 if a strategy, workflow or step is reached by no test")
    test.set_defaults(func=cmd_test)

    serve = sub.add_parser("serve", parents=[common],
                           help="run the service (NATS intake, PostgreSQL, Redis, HTTP API)")
    serve.set_defaults(func=cmd_serve)
    add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Warnings and errors to stderr; ``serve`` adds its configured level, format and file.
    logs.configure(level=logging.WARNING, verbose=args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        lines = [str(p) for p in exc.problems] or [str(exc)]
        for line in lines:
            print(line, file=sys.stderr)
        print(f"aetherius: invalid configuration ({len(lines)} problem(s))", file=sys.stderr)
        return 2
    except RuleError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except AetheriusError as exc:
        print(f"aetherius: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
