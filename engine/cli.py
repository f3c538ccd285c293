"""The ``aetherius`` command (also ``python -m engine``).

- ``aetherius check [DIR]``    validate rule files; every problem as ``path:line: message``
- ``aetherius schema``         JSON Schema of rule files
- ``aetherius replay FILE``    what a recorded event stream turns into, on event time
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.check import effective_strategies, load_valid
from engine.config import load_config
from engine.correlation import Incident
from engine.exceptions import AetheriusError, RuleError

log = logging.getLogger("engine.cli")


def _rules_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "rules", None):
        return Path(args.rules)
    return Path(load_config(getattr(args, "config", None))["rules"]["dir"])


def cmd_check(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else _rules_dir(args)
    try:
        rules = load_valid(directory)
    except RuleError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found in {directory}", file=sys.stderr)
        return 1
    strategies = effective_strategies(rules)
    print(f"OK: {len(rules.files)} file(s), {len(strategies)} strategies "
          f"({len(rules.strategies)} explicit), {len(rules.workflows)} workflows")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from engine.schema import rule_file_schema

    print(json.dumps(rule_file_schema(), indent=2, ensure_ascii=False))
    return 0


def _print_incident(incident: Incident, as_json: bool) -> None:
    s = incident.summary()
    if as_json:
        print(json.dumps(s, ensure_ascii=False), flush=False)
        return
    covered = ""
    if s["inhibited"]:
        covered = " covers " + ", ".join(f"{k}={v}" for k, v in sorted(s["inhibited"].items()))
    print(f"incident {s['id']}  strategy={s['strategy']}  key={s['key']}  events={s['events']}"
          f"  first={s['first']}  last={s['last']}  workflow={s['workflow']}{covered}")


def cmd_replay(args: argparse.Namespace) -> int:
    from engine.events import read_file, read_stream
    from engine.replay import Replayer

    directory = _rules_dir(args)
    rules = load_valid(directory)
    replayer = Replayer(effective_strategies(rules).values(),
                        lambda inc: _print_incident(inc, args.json))
    try:
        items = read_stream(sys.stdin.buffer.read()) if args.file == "-" else read_file(args.file)
        replayer.feed(items)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    result = replayer.finish()
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aetherius", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="config file (default: config/config.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate rule files and report every problem")
    check.add_argument("dir", nargs="?", help="rule directory or file (default: rules.dir)")
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of rule files")
    schema.set_defaults(func=cmd_schema)

    replay = sub.add_parser("replay", help="run a recorded event stream offline, on event time")
    replay.add_argument("file", help="JSON lines, watch output or a kubectl List ('-' for stdin)")
    replay.add_argument("--rules", help="rule directory (default: rules.dir)")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except RuleError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except AetheriusError as exc:
        print(f"aetherius: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
