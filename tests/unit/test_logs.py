"""One formatter renders the ids on every line, as text or JSON; the service's file rotates."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine import logs
from engine.correlation import Correlator, incident_from_event
from engine.events import parse_event
from engine.rules.check import load_valid
from engine.runner import WorkflowRunner
from steps.base import Settings

REPO = Path(__file__).resolve().parents[2]
IDS = {"incident_id": "inc-1", "execution_id": "exec-2", "step_id": "collect_logs"}


def record(msg: str = "Executing command step %s (attempt %d/%d)", args: tuple = ("collect_logs", 1, 2),
           level: int = logging.INFO, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("engine.runner", level, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """Leave the root logger, and the libraries' loggers, as they were."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    quiet = {name: logging.getLogger(name).level for name in (*logs.QUIET, "nats.aio.client")}
    yield root
    for handler in [h for h in root.handlers if h not in before[0]]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(before[1])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).filters.clear()


def ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_aetherius_handler", False)]


# ------------------------------------------------------------------ formatters


def test_text_renders_the_ids_after_the_message_in_one_order():
    # given in another order than rendered
    line = logs.TextFormatter().format(record(step_id="collect_logs", execution_id="exec-2",
                                              incident_id="inc-1"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO engine\.runner: Executing command step "
                        r"collect_logs \(attempt 1/2\) \[incident_id=inc-1 execution_id=exec-2 "
                        r"step_id=collect_logs\]", line), line


def test_text_renders_only_the_ids_a_line_has():
    assert logs.TextFormatter().format(record("started", (), execution_id="exec-2")).endswith(
        "started [execution_id=exec-2]")
    assert logs.TextFormatter().format(record("plain", (), incident_id=None)).endswith(": plain")


def test_text_puts_a_traceback_after_the_ids():
    try:
        raise ValueError("boom")
    except ValueError:
        line = logs.TextFormatter().format(record("failed", (), level=logging.ERROR, exc_info=sys.exc_info(),
                                                  **IDS))
    first, *rest = line.splitlines()
    assert first.endswith("failed [incident_id=inc-1 execution_id=exec-2 step_id=collect_logs]")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_json_is_one_object_per_line_with_the_same_fields_as_keys():
    try:
        raise ValueError("boom")
    except ValueError:
        line = logs.JsonFormatter().format(record(exc_info=sys.exc_info(), **IDS))
    assert "\n" not in line
    obj = json.loads(line)
    assert set(obj) == {"time", "level", "logger", "message", "incident_id", "execution_id", "step_id",
                        "exception"}
    assert obj["message"] == "Executing command step collect_logs (attempt 1/2)"
    assert (obj["level"], obj["logger"]) == ("INFO", "engine.runner")
    assert {k: obj[k] for k in IDS} == IDS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", obj["time"])
    assert obj["exception"].endswith("ValueError: boom")
    plain = json.loads(logs.JsonFormatter().format(record("no ids", ())))
    assert set(plain) == {"time", "level", "logger", "message"}


def test_the_adapter_adds_its_ids_and_leaves_the_message_alone(caplog):
    adapter = logs.FieldsAdapter(logging.getLogger("engine.runner"),
                                 {"execution_id": "exec-2", "step_id": "s"})
    with caplog.at_level(logging.INFO, logger="engine.runner"):
        adapter.info("Notification sent to %s", "slack", extra={"step_id": "override"})
    (rec,) = caplog.records
    assert rec.getMessage() == "Notification sent to slack"
    assert (rec.execution_id, rec.step_id) == ("exec-2", "override")


# ------------------------------------------------------------------ what the engine logs


def test_the_runner_and_correlation_lines_carry_the_ids(caplog):
    """The seed's words, each line with the ids of what it is about, through the one formatter."""
    rules = load_valid(REPO / "rules")
    raw = json.loads((REPO / "tests" / "fixtures" / "core-v1-backoff.json").read_text())
    event = parse_event(raw)
    incident = incident_from_event(event, "pod_crashloop", "high")

    async def go():
        runner = WorkflowRunner(settings=Settings(live=False, virtual_time=True))
        return await runner.run(rules.workflows["diagnose_pod_crashloop"], incident=incident,
                                events=[event.to_dict()])

    with caplog.at_level(logging.INFO, logger="engine"):
        execution = asyncio.run(go())
    text = "\n".join(logs.TextFormatter().format(r) for r in caplog.records)
    ids = f"incident_id={incident['id']} execution_id={execution.id}"
    assert f"Workflow execution {execution.id} started: workflow=diagnose_pod_crashloop" in text
    assert re.search(rf"Workflow execution {execution.id} started: .* \[{ids}\]$", text, re.M), text
    step = rf"Executing command step collect_logs \(attempt 1/\d+\) \[{ids} step_id=collect_logs\]$"
    assert re.search(step, text, re.M), text
    assert re.search(rf"Workflow execution {execution.id} finished: .* \[{ids}\]$", text, re.M), text
    assert "[execution_id=" not in text and "] [" not in text   # no message mangling left


def test_strategy_matched_carries_the_incident_id(caplog):
    from reactivex.scheduler import HistoricalScheduler

    from engine.rulebase import Hit
    from engine.rules.check import effective_strategies

    strategies = effective_strategies(load_valid(REPO / "rules"))
    event = parse_event(json.loads((REPO / "tests" / "fixtures" / "core-v1-backoff.json").read_text()))
    t0 = event.last_seen
    scheduler = HistoricalScheduler(initial_clock=datetime.fromtimestamp(t0, UTC))
    correlator = Correlator(scheduler)
    with caplog.at_level(logging.INFO, logger="engine.correlation"):
        correlator.add(Hit(strategies["pod_crashloop"], event), now=t0)
        scheduler.advance_to(datetime.fromtimestamp(t0 + 3600, UTC))
    (rec,) = [r for r in caplog.records if r.getMessage().startswith("Strategy matched")]
    line = logs.TextFormatter().format(rec)
    assert line.endswith(f"[incident_id={rec.incident_id}]") and "incident=" not in line, line


# ------------------------------------------------------------------ configure


def test_configure_writes_the_file_and_stderr_through_one_formatter(root_logging, tmp_path, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    path = tmp_path / "var" / "log" / "orchestrator.log"
    logs.configure(level="info", format="json", file=path)
    logging.getLogger("engine.runner").info("Executing %s step", "wait", extra=IDS)
    logging.getLogger("engine.runner").debug("not at info")
    for handler in ours(root_logging):
        handler.flush()
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["step_id"] == "collect_logs"
    assert stderr.getvalue().splitlines() == [line]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_is_formatted_once_for_stderr_and_the_file(root_logging, tmp_path, monkeypatch, fmt):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    path = tmp_path / "orchestrator.log"
    logs.configure(level="info", format=fmt, file=path)
    base = logs.TextFormatter if fmt == "text" else logs.JsonFormatter
    calls = []
    original = base.format

    def counting(self, record):
        calls.append(record.getMessage())
        return original(self, record)

    monkeypatch.setattr(base, "format", counting)
    logging.getLogger("engine.runner").info("Executing %s step", "wait", extra=IDS)
    for handler in ours(root_logging):
        handler.flush()
    assert calls == ["Executing wait step"]
    assert stderr.getvalue().splitlines() == path.read_text(encoding="utf-8").splitlines()
    assert "Executing wait step" in path.read_text(encoding="utf-8")


def test_configure_again_replaces_its_handlers(root_logging, tmp_path):
    logs.configure(file=tmp_path / "a.log")
    logs.configure(level="debug", file=tmp_path / "b.log")
    handlers = ours(root_logging)
    assert len(handlers) == 2 and root_logging.level == logging.DEBUG
    assert [Path(h.baseFilename).name for h in handlers if hasattr(h, "baseFilename")] == ["b.log"]


def test_the_file_is_rotated_by_the_standard_library(root_logging, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    path = tmp_path / "orchestrator.log"
    logs.configure(level="info", file=path, max_bytes=400, backups=2)
    log = logging.getLogger("engine.test")
    for i in range(40):
        log.info("line %02d of a log that grows past its size limit", i, extra={"incident_id": f"inc-{i}"})
    for handler in ours(root_logging):
        handler.flush()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["orchestrator.log", "orchestrator.log.1", "orchestrator.log.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].endswith("line 39 of a log that grows past its size limit "
                                                      "[incident_id=inc-39]")


def test_verbose_means_debug_and_library_chatter_stays_quiet(root_logging, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure(level="warning", verbose=True)
    assert root_logging.level == logging.DEBUG
    logging.getLogger("httpx").info("HTTP Request: POST http://x 200 OK")
    logging.getLogger("engine.x").debug("a debug line")
    assert "HTTP Request" not in stderr.getvalue() and "a debug line" in stderr.getvalue()


def test_nats_client_errors_keep_their_line_but_not_their_traceback(root_logging, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure(level="info")
    try:
        raise ConnectionRefusedError("Connect call failed")
    except ConnectionRefusedError as exc:
        logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=exc)
    assert stderr.getvalue().splitlines()[-1].endswith(
        "ERROR nats.aio.client: nats: encountered error: ConnectionRefusedError: Connect call failed")
    assert "Traceback" not in stderr.getvalue()


def test_serve_logs_as_its_configuration_says(root_logging, tmp_path, monkeypatch):
    """``serve`` configures logging from ``logging.*`` once the configuration is valid."""
    import engine.service
    from engine.cli import main

    async def fake_serve(config):
        logging.getLogger("engine.service.service").info("Aetherius Orchestrator starting",
                                                         extra={"incident_id": "inc-9"})
        logging.getLogger("engine.service.service").debug("only with -v")
        return 0

    monkeypatch.setattr(engine.service, "serve", fake_serve)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("logging: {format: json, level: INFO}\n", encoding="utf-8")
    assert main(["serve", "--config", str(config)]) == 0
    default = tmp_path / "var" / "log" / "orchestrator.log"      # the documented default
    for handler in ours(root_logging):
        handler.flush()
    (line,) = [json.loads(x) for x in default.read_text(encoding="utf-8").splitlines()]
    assert (line["message"], line["incident_id"]) == ("Aetherius Orchestrator starting", "inc-9")
    assert sys.stderr.getvalue().splitlines() == [json.dumps(line, ensure_ascii=False)]

    config.write_text(f"logging: {{file: {tmp_path / 'elsewhere.log'}}}\n", encoding="utf-8")
    assert main(["serve", "-v", "--config", str(config)]) == 0
    for handler in ours(root_logging):
        handler.flush()
    text = (tmp_path / "elsewhere.log").read_text(encoding="utf-8")
    assert "INFO engine.service.service: Aetherius Orchestrator starting [incident_id=inc-9]" in text
    assert "only with -v" in text


def test_in_the_event_loop_a_turns_lines_are_written_together_and_warnings_at_once(root_logging, tmp_path,
                                                                                   monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    path = tmp_path / "orchestrator.log"
    logs.configure(level="info", file=path)
    log = logging.getLogger("engine.runner")
    seen: dict[str, list[str]] = {}

    async def go() -> None:
        log.info("first")
        log.info("second")
        seen["during the turn"] = stderr.getvalue().splitlines()
        await asyncio.sleep(0)
        seen["after the turn"] = stderr.getvalue().splitlines()
        log.info("third")
        log.warning("a warning")
        seen["after a warning"] = stderr.getvalue().splitlines()
        log.info("last")

    asyncio.run(go())
    assert seen["during the turn"] == []
    assert [line.rsplit(": ", 1)[1] for line in seen["after the turn"]] == ["first", "second"]
    assert [line.rsplit(": ", 1)[1] for line in seen["after a warning"]] == [
        "first", "second", "third", "a warning"]
    for handler in ours(root_logging):
        handler.flush()      # (what logging.shutdown does at exit)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first", "second", "third", "a warning", "last"]
    assert stderr.getvalue().splitlines() == lines


def test_a_file_truncated_by_another_program_is_not_rotated_early(root_logging, tmp_path, monkeypatch):
    # logrotate's copytruncate empties the file under the service: the size counted so far
    # is checked against the file before a rotation.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    path = tmp_path / "orchestrator.log"
    logs.configure(level="info", file=path, max_bytes=1000, backups=2)
    log = logging.getLogger("engine.test")
    for i in range(4):      # ~140 bytes each: past 1,000 counted with the 4 after
        log.info("line %02d before the truncation, about eighty characters long", i)
    path.write_bytes(b"")
    for i in range(4):
        log.info("line %02d after the truncation, about eighty characters long.", i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestrator.log"]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 4


def test_on_a_loop_that_is_not_asyncios_lines_are_written_at_once(root_logging, monkeypatch):
    # Temporal runs workflow code on a deterministic loop of its own: nothing is scheduled there.
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure(level="info")

    class WorkflowLoop:
        def call_soon(self, *args):
            raise AssertionError("scheduled a callback on a workflow's loop")

    monkeypatch.setattr(asyncio, "_get_running_loop", lambda: WorkflowLoop())
    logging.getLogger("temporalio.workflow").info("Executing wait step pause")
    assert stderr.getvalue().rstrip().endswith("Executing wait step pause")
