"""Hot reload under load, with the service as a process.

The issue's test: 10,000 events stream in while the rules are reloaded 20 times, 5 of
the versions invalid. Every event is accounted for, the invalid versions never take
effect, and valid changes take effect within 1 s. A running execution keeps the
workflow version it pinned when its workflow changes under it.

The rules are a small set of our own (one bundle file rewritten by each version, so
every version is exactly one atomic write), plus ``manual.yaml``: a symlink to a file
*outside* the rules directory. The file watcher does not see writes to that target, so
the versions written there take effect only through ``POST /api/v1/rules/reload`` or
SIGHUP, which proves those triggers work on their own.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import orjson
import pytest

from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql

STREAM_EVENTS = 10_000
STREAM_WORKLOADS = 200
STREAM_SECONDS = 20.0          # the stream is paced to run through most of the reloads
FINAL_STATES = {"attached", "suppressed", "inhibited", "unmatched", "duplicate"}
RELOADED = re.compile(r"Rules reloaded: generation (\d+) \((\d+) strategies, (\d+) workflows\) \[([^,\]]+),")

CRASH = """\
  - id: crash
    name: Crash loop
    category: pod_failure
    workflow_id: probe_wf
    priority: 10
    symptoms:
      - pattern: "^Back-off restarting failed container"
        conditions: {kind: Pod, reason: BackOff}
    correlation: {key: [namespace, workload], quiet: 500ms, max_window: 3s, cooldown: 1h}
"""

PROBE = """\
  - id: probe_{n}
    name: Reload probe {n}
    workflow_id: probe_wf
    symptoms:
      - conditions: {{reason: ReloadProbe{n}}}
    correlation: {{key: [namespace, workload], quiet: 200ms, max_window: 2s, cooldown: 1h}}
"""

PROBE_WF = """\
  - id: probe_wf
    name: Note the incident
    steps:
      - id: note
        type: notification
        config: {channel: log, message: "incident {{ incident.strategy }} {{ incident.key }}"}
"""

PINNED = {
    "old": """\
  - id: pinned_wf
    name: A workflow that waits
    steps:
      - id: old_wait
        type: wait
        config: {duration: 4s}
        on_success: [old_done]
      - id: old_done
        type: notification
        config: {channel: log, message: "old steps"}
""",
    "new": """\
  - id: pinned_wf
    name: A workflow that waits (changed)
    steps:
      - id: new_wait
        type: wait
        config: {duration: 100ms}
        on_success: [new_done]
      - id: new_done
        type: notification
        config: {channel: log, message: "new steps"}
""",
}

# The invalid versions. Each adds a strategy ``invalid_<kind>`` for reason
# ``InvalidProbe_<kind>`` (so an event with that reason would open an incident if the
# version took effect) and a defect; the line marked ``# DEFECT`` is where the problem
# must be reported.
DEFECTS = {
    "yaml_syntax": ("strategies", """\
  - id: invalid_yaml_syntax
    name: broken: yaml  # DEFECT
    workflow_id: probe_wf
    symptoms:
      - conditions: {reason: InvalidProbe_yaml_syntax}
"""),
    "unknown_step": ("both", """\
  - id: invalid_unknown_step
    workflow_id: teleport_wf
    symptoms:
      - conditions: {reason: InvalidProbe_unknown_step}
""", """\
  - id: teleport_wf
    steps:
      - id: beam
        type: teleport  # DEFECT
        config: {to: mars}
"""),
    "missing_workflow": ("strategies", """\
  - id: invalid_missing_workflow
    workflow_id: no_such_workflow  # DEFECT
    symptoms:
      - conditions: {reason: InvalidProbe_missing_workflow}
"""),
    "bad_regex": ("strategies", """\
  - id: invalid_bad_regex
    workflow_id: probe_wf
    symptoms:
      - pattern: "([unclosed"  # DEFECT
        conditions: {reason: InvalidProbe_bad_regex}
"""),
    "escaping_expression": ("both", """\
  - id: invalid_escaping_expression
    workflow_id: escape_wf
    symptoms:
      - conditions: {reason: InvalidProbe_escaping_expression}
""", """\
  - id: escape_wf
    steps:
      - id: decide
        type: decision
        config:
          conditions:
            - if: "().__class__.__bases__[0].__subclasses__()"  # DEFECT
              then: done
          default: done
      - id: done
        type: notification
        config: {channel: log, message: "escaped"}
"""),
}


def render(probes: list[int], pinned: str, defect: str | None = None) -> str:
    strategies = CRASH + "".join(PROBE.format(n=n) for n in probes)
    workflows = PROBE_WF + PINNED[pinned]
    if defect is not None:
        where, *parts = DEFECTS[defect]
        if where == "strategies":
            strategies += parts[0]
        else:
            strategies += parts[0]
            workflows += parts[1]
    return f"strategies:\n{strategies}workflows:\n{workflows}"


def manual_text(probes: list[int], extra: str = "") -> str:
    if not probes and not extra:
        return "strategies: []\n"
    return "strategies:\n" + "".join(PROBE.format(n=n) for n in probes) + extra


def defect_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "# DEFECT" in line)


def write_atomically(path: Path, text: str) -> None:
    """Write as editors and config management do: a temporary file, then a rename, so a
    reload never reads a half-written file. The temporary file is outside the rules
    directory (and not *.yaml), so only the rename is seen."""
    tmp = path.parent.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)




def backoff(event_id: str, namespace: str, workload: str, reason: str = "BackOff",
            message: str = "Back-off restarting failed container app in pod") -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = f"{workload}-5d8f7c9b4-{uuid.uuid4().hex[:5]}"
    return orjson.dumps({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.{event_id}", "namespace": namespace, "uid": f"uid-{event_id}"},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "uid": f"pod-{event_id}",
                           "fieldPath": "spec.containers{app}"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "kubelet", "host": "node-1"},
    })


class Stream(threading.Thread):
    """Publishes STREAM_EVENTS BackOff events over many workloads, paced over
    STREAM_SECONDS, each with its own Nats-Msg-Id, on its own event loop."""

    def __init__(self, nats_url: str, subject: str) -> None:
        super().__init__(daemon=True)
        self.nats_url, self.subject = nats_url, subject
        self.ids = [f"stream-{i:05d}" for i in range(STREAM_EVENTS)]
        self.published = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    async def _run(self) -> None:
        nc = await nats.connect(self.nats_url)
        js = nc.jetstream()
        window = 100
        started = time.monotonic()
        try:
            for start in range(0, STREAM_EVENTS, window):
                ids = self.ids[start:start + window]
                acks = await asyncio.gather(*[
                    js.publish(self.subject, backoff(i, "stream", f"wl{n % STREAM_WORKLOADS}"),
                               headers={"Nats-Msg-Id": i})
                    for n, i in enumerate(ids, start)], return_exceptions=True)
                self.errors.extend(a for a in acks if isinstance(a, BaseException))
                self.published += len(ids)
                due = started + STREAM_SECONDS * self.published / STREAM_EVENTS
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await nc.close()


@dataclass
class Probe:
    event_id: str
    reason: str
    strategy: str | None      # the strategy it must match; None: it must stay unmatched


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (rules / "main.yaml").write_text(render([], "old"), encoding="utf-8")
    (outside / "manual.yaml").write_text(manual_text([]), encoding="utf-8")
    (rules / "manual.yaml").symlink_to(outside / "manual.yaml")
    return rules


@pytest.fixture
def service(tmp_path, rules_dir, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix):
    proc = ServiceProcess(tmp_path / "svc", pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                          nats_url=nats_url, nats_prefix=nats_prefix, rules_dir=rules_dir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def client(service):
    with service.client(timeout=10) as http:
        yield http


def test_reloads_under_load(service: ServiceProcess, client: httpx.Client, rules_dir: Path, pg_dsn: str,
                            tmp_path: Path):
    main, manual = rules_dir / "main.yaml", tmp_path / "outside" / "manual.yaml"

    def status() -> dict:
        response = client.get("/api/v1/rules/status")
        response.raise_for_status()
        return response.json()

    def settle() -> dict:
        """Wait until no reload has happened for 300 ms (a valid reload mirrors the file
        rules into PostgreSQL, whose NOTIFY triggers one more reload)."""
        last = status()
        quiet_since = time.monotonic()
        deadline = quiet_since + 5
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = status()
            if (now["reloads"], now["failures"]) != (last["reloads"], last["failures"]):
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= 0.3:
                return now
        raise AssertionError(f"reloads never settled: {last}")

    def wait_generation(changed, started: float) -> tuple[dict, float]:
        """Poll the status every 20 ms until ``changed(status)``; return it and the time taken."""
        while time.monotonic() - started < 5:
            now = status()
            if changed(now):
                return now, time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"the new rules were not active in 5 s: {status()}\n{service.log()[-3000:]}")

    def labels() -> list[str]:
        return [m[3] for m in RELOADED.findall(service.log())]

    probes: list[Probe] = []
    probe_seq = iter(range(1_000_000))

    def send_probe(reason: str, strategy: str | None) -> Probe:
        event_id = f"probe-{next(probe_seq):03d}-{reason}"
        # A workload of its own: every probe forms its own incident (no cooldown in the way).
        service.publish([backoff(event_id, "probes", f"p{len(probes)}", reason=reason, message="probe")],
                        msg_ids=[event_id])
        probe = Probe(event_id, reason, strategy)
        probes.append(probe)
        return probe

    def incident_of(probe: Probe) -> list[dict]:
        return _sql(pg_dsn, "SELECT i.id, i.strategy_id FROM events e "
                            "JOIN incidents i ON i.id = e.incident_id WHERE e.id = $1", probe.event_id)

    base = settle()
    assert base["ok"], base

    # The 20 versions: (kind, trigger) where kind is "valid" or a defect name.
    # An invalid main.yaml is repaired by the next version, so a watched valid one follows it.
    plan = [("valid", "watch"), ("valid", "watch"), ("yaml_syntax", "watch"), ("valid", "watch"),
            ("valid", "api"), ("unknown_step", "watch"), ("valid", "watch"), ("valid", "sighup"),
            ("missing_workflow", "watch"), ("valid", "watch"), ("pinned", "watch"), ("bad_regex", "api"),
            ("valid", "api"), ("valid", "watch"), ("escaping_expression", "watch"), ("valid", "watch"),
            ("valid", "sighup"), ("valid", "watch"), ("valid", "watch"), ("valid", "watch")]
    assert len(plan) == 20 and sum(kind in DEFECTS for kind, _ in plan) == 5
    assert all(plan[i + 1] == ("valid", "watch") for i, (kind, trigger) in enumerate(plan)
               if kind in DEFECTS and trigger == "watch")

    stream = Stream(service.nats_url, service.subjects[0])
    stream.start()

    watch_probes: list[int] = []
    manual_probes: list[int] = []
    pinned = "old"
    latencies: dict[str, list[float]] = {"watch": [], "api": [], "sighup": []}
    triggers: list[tuple[str, str]] = []        # (trigger, reason logged for its generation)
    during_stream = 0
    old_execution: dict | None = None
    new_execution: dict | None = None

    for number, (kind, trigger) in enumerate(plan, 1):
        before = settle()
        gen = before["generation"]
        if 0 < stream.published < STREAM_EVENTS:
            during_stream += 1

        if kind in DEFECTS:
            # ---------------------------------------------------------------- invalid
            if trigger == "api":
                text = manual_text(manual_probes, DEFECTS[kind][1])
                path = rules_dir / "manual.yaml"        # the path the service reads (the link)
                write_atomically(manual, text)
                response = client.post("/api/v1/rules/reload")
                assert response.status_code == 422, response.text
                now = response.json()
            else:
                text = render(watch_probes, pinned, kind)
                path = main
                write_atomically(main, text)
                deadline = time.monotonic() + 5
                while (now := status())["failures"] == before["failures"]:
                    assert time.monotonic() < deadline, f"version {number} ({kind}) was never reloaded"
                    time.sleep(0.02)
            where = f"{path}:{defect_line(text)}:"
            assert now["ok"] is False, now
            # The generation is the one active before. (The service's 10 s poll of the rule
            # tables may have reloaded the same rules just before the write: same digest.)
            kept = now["generation"]
            assert now["digest"] == before["digest"] and kept in (gen, gen + 1), (number, kind, before, now)
            if kept != gen:
                polled = (f"generation {kept} ({before['strategies']} strategies, 2 workflows) "
                          f"[database change (poll), digest {before['digest']}]")
                assert polled in service.log(), (number, kind, before, now)
            assert any(p.startswith(where) for p in now["problems"]), (where, now["problems"])
            assert all(re.match(r"^.+:\d+: ", p) for p in now["problems"]), now["problems"]
            service.wait_for(lambda kept=kept, where=where: re.search(
                rf"ERROR engine\.service\.generations: Rules invalid \(.*?\), keeping generation {kept}: "
                + re.escape(where), service.log()), timeout=5)
            # Nothing of the invalid version is active: its strategy matches nothing ...
            send_probe(f"InvalidProbe_{kind}", None)
            # ... and the previous generation still opens incidents.
            last = watch_probes + manual_probes
            previous = max(last) if last else None
            if previous is not None:
                probe = send_probe(f"ReloadProbe{previous}", f"probe_{previous}")
                found = service.wait_for(lambda probe=probe: incident_of(probe), timeout=10, interval=0.05)
                assert found[0]["strategy_id"] == f"probe_{previous}"
            after = status()
            assert after["generation"] == kept and after["ok"] is False, after
            if trigger == "api":
                # Repair the outside file silently: the next version's reload reads it.
                write_atomically(manual, manual_text(manual_probes))
            continue

        # -------------------------------------------------------------------- valid
        if kind == "pinned":
            # An execution of the old steps is waiting when its workflow changes.
            response = client.post("/api/v1/workflows/pinned_wf/execute", json={})
            assert response.status_code == 202, response.text
            old_execution = response.json()
            pinned = "new"
        label = {"watch": "file change", "api": "api", "sighup": "SIGHUP"}[trigger]
        if trigger == "watch":
            watch_probes.append(number)
            started = time.monotonic()
            write_atomically(main, render(watch_probes, pinned))
            now, latency = wait_generation(lambda s, old=before["digest"]: s["digest"] != old, started)
        else:
            manual_probes.append(number)
            watched = labels().count("file change")
            write_atomically(manual, manual_text(manual_probes))
            time.sleep(0.3)      # the watcher does not see this file: nothing happens by itself
            assert labels().count("file change") == watched, "the watcher saw a write outside the directory"
            trigger_gen = status()["generation"]
            started = time.monotonic()
            if trigger == "api":
                response = client.post("/api/v1/rules/reload")
                assert response.status_code == 200, response.text
                assert response.json()["generation"] > trigger_gen, response.text
            else:
                service.proc.send_signal(signal.SIGHUP)
            now, latency = wait_generation(lambda s, old=trigger_gen: s["generation"] > old, started)
        latencies[trigger].append(latency)
        assert latency < 1.0, f"version {number} took {latency:.3f} s to take effect"
        assert now["ok"] is True and now["problems"] == [], now
        expected = 1 + len(watch_probes) + len(manual_probes)
        assert now["generation"] > before["generation"], (before, now)
        assert now["strategies"] == expected and now["workflows"] == 2, now

        def reloaded(gen: int = now["generation"], expected: int = expected) -> str | None:
            return next((m[3] for m in RELOADED.findall(service.log())
                         if int(m[0]) == gen and int(m[1]) == expected and int(m[2]) == 2), None)

        # The log says so, with the trigger. (A reload requested by the service's own poll of
        # the rule tables at the same moment is coalesced with it, and may give its reason.)
        triggers.append((label, service.wait_for(reloaded, timeout=5)))
        send_probe(f"ReloadProbe{number}", f"probe_{number}")
        if kind == "pinned":
            response = client.post("/api/v1/workflows/pinned_wf/execute", json={})
            assert response.status_code == 202, response.text
            new_execution = response.json()
            # The first one was still waiting in its old steps when the change took effect.
            running = client.get(f"/api/v1/executions/{old_execution['execution_id']}").json()
            assert running["status"] == "running" and running["running_here"], running

    settle()
    # Each trigger reloaded the rules by itself (see the coalescing note above).
    logged = [reason for label, reason in triggers if reason == label]
    assert len(logged) >= len(triggers) - 2, triggers
    assert {"file change", "api", "SIGHUP"} <= set(logged), triggers
    stream.join(timeout=60)
    assert not stream.is_alive() and not stream.errors, stream.errors[:3]
    assert during_stream >= 10, f"only {during_stream} of 20 versions were written while events streamed"

    # ------------------------------------------------------------ every event accounted for
    def accounted() -> list[dict] | None:
        rows = _sql(pg_dsn, "SELECT state, count(*) AS n FROM events WHERE id = ANY($1::text[]) "
                            "GROUP BY state", stream.ids)
        total = sum(r["n"] for r in rows)
        return rows if total == STREAM_EVENTS and all(r["state"] in FINAL_STATES for r in rows) else None

    service.wait_for(accounted, timeout=30, interval=0.5)
    rows = _sql(pg_dsn, "SELECT id, state FROM events WHERE id = ANY($1::text[])", stream.ids)
    assert len(rows) == STREAM_EVENTS
    assert {r["id"] for r in rows} == set(stream.ids)
    assert not [r for r in rows if r["state"] not in FINAL_STATES]
    # They all matched the crash strategy, whatever generation took them in.
    crash = _sql(pg_dsn, "SELECT count(*) AS n FROM events WHERE id = ANY($1::text[]) "
                         "AND strategy_id = 'crash'", stream.ids)
    assert crash[0]["n"] == STREAM_EVENTS

    # ------------------------------------------------------------ probes
    ids = [p.event_id for p in probes]

    def probe_rows() -> dict[str, dict] | None:
        rows = _sql(pg_dsn, "SELECT e.id, e.state, e.strategy_id, i.strategy_id AS incident_strategy "
                            "FROM events e LEFT JOIN incidents i ON i.id = e.incident_id "
                            "WHERE e.id = ANY($1::text[])", ids)
        done = len(rows) == len(ids) and all(r["state"] in FINAL_STATES for r in rows)
        return {r["id"]: r for r in rows} if done else None

    states = service.wait_for(probe_rows, timeout=20, interval=0.5)
    for probe in probes:
        row = states[probe.event_id]
        if probe.strategy is None:
            assert row["state"] == "unmatched" and row["strategy_id"] is None, (probe, row)
        else:
            assert row["state"] == "attached" and row["incident_strategy"] == probe.strategy, (probe, row)
    invalid = _sql(pg_dsn, "SELECT id FROM incidents WHERE strategy_id LIKE 'invalid_%'")
    assert invalid == []

    # ------------------------------------------------------------ the pinned execution
    assert old_execution is not None and new_execution is not None
    assert new_execution["workflow_version"] > old_execution["workflow_version"]

    def finished(execution_id: str) -> dict | None:
        detail = client.get(f"/api/v1/executions/{execution_id}").json()
        return detail if detail["status"] in ("succeeded", "failed", "cancelled", "timed_out") else None

    old = service.wait_for(lambda: finished(old_execution["execution_id"]), timeout=15)
    new = service.wait_for(lambda: finished(new_execution["execution_id"]), timeout=15)
    assert old["status"] == "succeeded" and new["status"] == "succeeded", (old, new)
    assert old["workflow_version"] == old_execution["workflow_version"]
    assert new["workflow_version"] == new_execution["workflow_version"]
    steps: dict[str, list[str]] = {}
    for row in _sql(pg_dsn, "SELECT execution_id, step_id FROM step_executions WHERE execution_id = ANY($1) "
                            "ORDER BY execution_id, seq", [old["id"], new["id"]]):
        steps.setdefault(row["execution_id"], []).append(row["step_id"])
    assert steps[old["id"]] == ["old_wait", "old_done"], steps
    assert steps[new["id"]] == ["new_wait", "new_done"], steps

    # ------------------------------------------------------------ figures
    every = [x for values in latencies.values() for x in values]
    print(f"\nreload latency over {len(every)} valid versions: median "
          f"{statistics.median(every) * 1000:.0f} ms, max {max(every) * 1000:.0f} ms; " + "; ".join(
              f"{k}: median {statistics.median(v) * 1000:.0f} ms max {max(v) * 1000:.0f} ms (n={len(v)})"
              for k, v in latencies.items() if v)
          + f"; {during_stream}/20 versions written while events streamed; stream event states: "
          + ", ".join(f"{r['state']} {r['n']}" for r in accounted() or []))
    assert service.proc is not None and service.proc.poll() is None
