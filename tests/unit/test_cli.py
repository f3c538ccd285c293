"""``--config`` before or after the command; an invalid configuration stops ``serve`` before it starts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
EVENT = REPO / "tests" / "fixtures" / "core-v1-backoff.json"
COMMANDS = {
    "check": [],
    "replay": ["events.jsonl"],
    "run": ["diagnose_pod_crashloop", "--event", "e.json"],
    "serve": [],
}


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """main() configures logging: leave the root logger as it was."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    yield
    for handler in [h for h in root.handlers if h not in before[0]]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(before[1])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_config_and_verbose_go_before_or_after_the_command(command):
    parse = build_parser().parse_args
    rest = COMMANDS[command]
    for argv in ([command, "--config", "after.yaml", "-v", *rest],
                 ["--config", "after.yaml", "-v", command, *rest]):
        args = parse(argv)
        assert (args.command, args.config, args.verbose) == (command, "after.yaml", True), argv
    args = parse([command, *rest])
    assert (args.config, args.verbose) == (None, False)
    # Both given: the one nearer the command's own options wins.
    assert parse(["--config", "before.yaml", command, "--config", "after.yaml", *rest]).config == "after.yaml"


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("service:\n  replica_id: r1\n  leese: 5s\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("order", ["after", "before"])
def test_serve_refuses_an_invalid_configuration_naming_file_line_and_key(tmp_path, capsys, monkeypatch,
                                                                        order):
    monkeypatch.chdir(tmp_path)   # no log file, no data directory may appear
    path = bad_config(tmp_path)
    argv = ["serve", "--config", str(path)] if order == "after" else ["--config", str(path), "serve"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}:3: service.leese: unknown key (did you mean 'lease'?)",
                   "aetherius: invalid configuration (1 problem(s))"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_the_real_command_exits_non_zero_on_a_misspelt_key(tmp_path):
    path = bad_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIUS_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--config", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{path}:3: service.leese: unknown key" in done.stderr


def test_check_reads_rules_dir_from_the_config_given_after_it(tmp_path, capsys):
    rules = tmp_path / "my-rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text("id: broken\nsteps: []\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"rules:\n  dir: {rules}\n", encoding="utf-8")
    assert main(["check", "--config", str(config)]) == 1
    assert str(rules / "bad.yaml") in capsys.readouterr().out
    assert main(["check", "--config", str(REPO / "config" / "config.yaml"), str(REPO / "rules")]) == 0


def test_run_reads_its_settings_from_the_config_given_after_it(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"rules: {{dir: {REPO / 'rules'}}}\nai: {{timeout: never}}\n", encoding="utf-8")
    assert main(["run", "diagnose_pod_crashloop", "--event", str(EVENT), "--config", str(config)]) == 2
    assert f"{config}:2: ai.timeout: expected a duration" in capsys.readouterr().err
