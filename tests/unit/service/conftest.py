"""The service's parts wired together on in-memory stand-ins (engine.testing), a virtual
correlation clock and the real rule base: no server, milliseconds per test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from reactivex.scheduler import HistoricalScheduler

from engine.correlation import Correlator
from engine.metrics import Metrics
from engine.rulebase import RuleBase
from engine.runner import WorkflowRunner
from engine.service.background import Background
from engine.service.cache import Cache
from engine.service.contracts import Stats
from engine.service.executions import Executions
from engine.service.generations import RulesManager
from engine.service.incidents import Incidents
from engine.service.intake import Intake
from engine.service.recorded import Recorded
from engine.service.recovery import Recovery
from engine.testing import MemoryExecutionStore, MemoryRecords, MemoryRuleChanges
from steps.base import Settings

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

RULES = """
strategies:
  - id: crash
    workflow_id: note_it
    symptoms: [{conditions: {kind: Pod, reason: BackOff}}]
    correlation: {key: [namespace, workload], quiet: 30s, max_window: 5m, cooldown: 10m}
workflows:
  - id: note_it
    steps:
      - {id: pause, type: wait, config: {duration: 1s}, on_success: [note]}
      - {id: note, type: notification, config: {channel: log, message: "seen"}}
"""

def k8s_event(workload: str = "web", count: int = 1, *, namespace: str = "blog",
              reason: str = "BackOff") -> dict[str, Any]:
    """The ``count``-th sighting of one core/v1 Event about a pod of ``workload``: Kubernetes
    patches one Event object, raising its count (its id here: ``ev-<namespace>-<workload>@<count>``)."""
    pod = f"{workload}-7d9f8c6b5-x2x4k"
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.17f3a", "namespace": namespace, "uid": f"ev-{namespace}-{workload}",
                     "resourceVersion": str(count)},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "uid": f"uid-{pod}"},
        "reason": reason, "message": "Back-off restarting failed container app", "type": "Warning",
        "count": count, "firstTimestamp": "2026-11-20T10:00:00Z", "lastTimestamp": "2026-11-20T10:00:00Z",
        "source": {"component": "kubelet", "host": "node-1"},
    }


def raw(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


@dataclass
class Parts:
    scheduler: HistoricalScheduler
    records: MemoryRecords
    store: MemoryExecutionStore
    cache: Cache
    rules: RulesManager
    changes: MemoryRuleChanges
    metrics: Metrics
    stats: Stats
    background: Background
    executions: Executions
    incidents: Incidents
    intake: Intake
    recovery: Recovery
    runner: WorkflowRunner

    def advance(self, seconds: float) -> None:
        """Let correlation time pass (bursts form into incidents)."""
        self.scheduler.advance_by(timedelta(seconds=seconds))

    async def settle(self) -> None:
        """Let background work and running executions finish."""
        for _ in range(50):
            await self.background.wait(2.0)
            running = [t for t in asyncio.all_tasks() if t.get_name().startswith("execution:")]
            if not running and not len(self.background):
                return
            await asyncio.sleep(0.01)


@pytest.fixture
def make_parts(tmp_path: Path) -> Callable[..., Any]:
    async def make(rules_text: str = RULES, replica: str = "r1", max_running: int | None = None,
                   virtual_time: bool = True, store: MemoryExecutionStore | None = None,
                   max_queued: int | None = None) -> Parts:
        (tmp_path / "rules.yaml").write_text(rules_text)
        scheduler = HistoricalScheduler(T0)
        clock = lambda: scheduler.now.timestamp()  # noqa: E731
        store = store if store is not None else MemoryExecutionStore(replica)
        records = MemoryRecords(replica, store=store)
        cache = Cache(None)
        rulebase = RuleBase([])
        rules = RulesManager(tmp_path, rulebase)
        assert await rules.reload("start"), rules.status.problems
        metrics, stats, background = Metrics(), Stats(), Background()
        runner = WorkflowRunner(store, Settings(live=False, virtual_time=virtual_time))
        executions = Executions(runner, metrics=metrics, stats=stats, background=background, store=store,
                                workflows=rules, max_running=max_running, max_queued=max_queued,
                                poll=0.05)
        correlator = Correlator(scheduler, track_event_ids=True)
        recorded = Recorded()
        incidents = Incidents(records=records, workflows=rules, correlator=correlator,
                              executions=executions, metrics=metrics, stats=stats, background=background,
                              recorded=recorded)
        intake = Intake(records=records, rulebase=rulebase, correlator=correlator, metrics=metrics,
                        stats=stats, background=background, recorded=recorded, max_event_bytes=64 * 1024,
                        clock=clock, room=executions.room)
        recovery = Recovery(records=records, store=store, workflows=rules, executions=executions,
                            intake=intake, cache=cache, lease=15.0, info=lambda: {})
        return Parts(scheduler, records, store, cache, rules, MemoryRuleChanges(), metrics, stats, background,
                     executions, incidents, intake, recovery, runner)

    return make
