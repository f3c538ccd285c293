"""Experiments through the service's parts on a real PostgreSQL: events posted to the API
become incidents assigned to arms, each incident's execution runs its arm's workflow and
records the arm, and ``GET /api/v1/experiments/{strategy}`` and the metrics count per arm
exactly what the executions did."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from test_api import harness

from engine.experiments import assign
from engine.rules.model import Strategy

pytestmark = pytest.mark.integration

SID = "crash_experiment"
RULES = f"""\
strategies:
  - id: {SID}
    symptoms: [{{conditions: {{kind: Pod, reason: BackOff}}}}]
    correlation: {{quiet: 200ms, max_window: 1s, cooldown: 1h}}
    experiment:
      arms:
        - {{workflow: just_tell, weight: 1}}
        - {{workflow: delete_some, weight: 1, name: deleter}}
      key: [namespace, workload]
workflows:
  - id: just_tell
    steps:
      - {{id: tell, type: notification, config: {{channel: log, message: "{{{{ incident.arm }}}}"}}}}
  - id: delete_some
    steps:
      - id: choose
        type: decision
        config:
          conditions:
            - {{if: "incident.namespace in ['team-0', 'team-2']", then: delete}}
          default: tell
      - id: delete
        type: remediation
        config: {{action: delete_pod}}
      - {{id: tell, type: notification, config: {{channel: log, message: "left alone"}}}}
"""
KEYS = [(f"team-{i % 4}", f"svc-{i:02d}") for i in range(40)]


def event(namespace: str, workload: str, n: int) -> dict:
    return {"id": f"ev-{namespace}-{workload}-{n}", "kind": "Pod", "reason": "BackOff",
            "namespace": namespace, "name": f"{workload}-6b7c9d8f5-abcde",
            "message": "Back-off restarting failed container app",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_per_arm_outcomes_match_the_executions(pg_dsn: str, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "experiment.yaml").write_text(RULES, encoding="utf-8")

    async def go() -> None:
        async with harness(pg_dsn, rules_dir=rules_dir) as (api, client):
            posted = await client.post("/api/v1/events", json=[event(ns, wl, 1) for ns, wl in KEYS])
            assert posted.status_code == 202 and posted.json()["accepted"] == 40

            async def all_closed() -> bool:
                return await api.pool.fetchval(
                    "SELECT count(*) FROM incidents WHERE status = 'closed' AND strategy_id = $1", SID) == 40

            await until(all_closed)
            # Five workloads crash again within the cooldown: no new incident, counted as refired.
            again = KEYS[:5]
            assert (await client.post("/api/v1/events", json=[event(ns, wl, 2) for ns, wl in again])).json()[
                "accepted"] == 5

            async def suppressed() -> bool:
                return await api.pool.fetchval("SELECT coalesce(sum(suppressed), 0) FROM incidents") == 5

            await until(suppressed)

            incidents = (await client.get("/api/v1/incidents", params={"limit": 100})).json()["items"]
            assert len(incidents) == 40
            strategy = api.rules.generation.strategies[SID]
            assert isinstance(strategy, Strategy)
            by_key = {}
            for incident in incidents:
                by_key[incident["key"]] = incident["arm"]
                namespace, workload = incident["key"].split("/")
                expected = "deleter" if incident["workflow_id"] == "delete_some" else "just_tell"
                assert incident["arm"] == expected
                # The same choice as the pure function replay uses.
                assert incident["arm"] == assign(strategy, type("E", (), {"namespace": namespace,
                                                                          "workload": workload})()).arm
            executions = (await client.get("/api/v1/executions", params={"limit": 100})).json()["items"]
            assert len(executions) == 40
            counted = Counter((e["arm"], e["outcome"]) for e in executions)
            for e in executions:
                incident = next(i for i in incidents if i["execution_id"] == e["id"])
                assert (e["arm"], e["workflow_id"]) == (incident["arm"], incident["workflow_id"])
            one = (await client.get(f"/api/v1/executions/{executions[0]['id']}")).json()
            assert one["arm"] == executions[0]["arm"]

            report = await client.get(f"/api/v1/experiments/{SID}")
            assert report.status_code == 200, report.text
            body = report.json()
            assert (body["strategy_id"], body["active"], body["key"], body["incidents"]) == (
                SID, True, ["namespace", "workload"], 40)
            arms = {a["arm"]: a for a in body["arms"]}
            assert set(arms) == {"just_tell", "deleter"}
            assert (arms["deleter"]["workflow_id"], arms["deleter"]["weight"], arms["deleter"]["share"]) == (
                "delete_some", 1.0, 0.5)
            for name, arm in arms.items():
                mine = [e for e in executions if e["arm"] == name]
                assert arm["incidents"] == arm["executions"] == len(mine) and arm["open"] == 0
                assert {o: n for o, n in arm["outcomes"].items() if n} == {
                    outcome: n for (a, outcome), n in counted.items() if a == name}
                assert arm["open_to_close_seconds"]["count"] == len(mine)
                assert 0 <= arm["open_to_close_seconds"]["p50"] <= arm["open_to_close_seconds"]["max"] < 30
                refired = [k for k in again if by_key["/".join(k)] == name]
                assert (arm["refired"], arm["suppressed_events"]) == (len(refired), len(refired))
                assert arm["observed_share"] == pytest.approx(len(mine) / 40)
            # Both outcomes of the deleting arm happened, and the other arm only told.
            assert set(arms["just_tell"]["outcomes"]) >= {"no_action"}
            assert arms["just_tell"]["outcomes"]["no_action"] == arms["just_tell"]["executions"]
            assert arms["deleter"]["outcomes"]["dry_run"] > 0 and arms["deleter"]["outcomes"]["no_action"] > 0

            metrics = (await client.get("/metrics")).text
            for name, arm in arms.items():
                assert (f'aetherius_experiment_incidents_total{{arm="{name}",strategy="{SID}"}} '
                        f'{float(arm["incidents"])}') in metrics
                for outcome, n in arm["outcomes"].items():
                    if n:
                        assert (f'aetherius_experiment_executions_total{{arm="{name}",outcome="{outcome}",'
                                f'strategy="{SID}"}} {float(n)}') in metrics
                assert (f'aetherius_experiment_incident_open_seconds_count{{arm="{name}",strategy="{SID}"}} '
                        f'{float(arm["executions"])}') in metrics
                if arm["refired"]:
                    assert (f'aetherius_experiment_suppressed_events_total{{arm="{name}",strategy="{SID}"}} '
                            f'{float(arm["suppressed_events"])}') in metrics

            since = await client.get(f"/api/v1/experiments/{SID}", params={"since": "2999-01-01T00:00:00Z"})
            assert since.json()["incidents"] == 0 and all(a["incidents"] == 0 for a in since.json()["arms"])
            assert (await client.get("/api/v1/experiments/nope")).status_code == 404

    asyncio.run(go())
