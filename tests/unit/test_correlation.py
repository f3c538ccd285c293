"""Burst correlation on a virtual clock: hits become ONE incident per burst."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
import reactivex
from reactivex.scheduler import HistoricalScheduler

from engine.correlation import Correlator, Incident, correlation_key
from engine.events import Event
from engine.rulebase import Hit
from engine.rules.model import Strategy
from engine.statuses import IncidentStatus

PENDING, OPEN, CLOSED = IncidentStatus.FORMING, IncidentStatus.OPEN, IncidentStatus.CLOSED

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
QUIET, MAX_WINDOW, COOLDOWN = 30.0, 300.0, 600.0

CRASHLOOP = Strategy.model_validate({
    "id": "pod_crashloop", "category": "pod_failure", "workflow_id": "diagnose_pod_crashloop",
    "severity": "high",
    "symptoms": [{"conditions": {"kind": "Pod", "reason": "BackOff"}}],
    "correlation": {"key": ["namespace", "workload"], "quiet": "30s", "max_window": "5m", "cooldown": "10m"},
})
OOM = Strategy.model_validate({
    "id": "oom_killed", "category": "pod_failure", "workflow_id": "diagnose_oom_killed",
    "symptoms": [{"conditions": {"kind": "Pod", "reason": "OOMKilled"}}],
    "correlation": {"key": ["namespace", "workload"], "quiet": "30s", "max_window": "5m", "cooldown": "10m"},
})
NODE = Strategy.model_validate({
    "id": "node_not_ready", "category": "node_issue", "workflow_id": "diagnose_node_not_ready",
    "symptoms": [{"conditions": {"kind": "Node", "reason": "NodeNotReady"}}],
    "inhibits": [{"categories": ["pod_failure"], "equal": ["node"]}],
    "correlation": {"key": ["node"], "quiet": "30s", "max_window": "5m", "cooldown": "15m"},
})

_ids = itertools.count(1)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def pod_event(t: float, *, namespace: str = "blog", workload: str = "web", pod: str | None = None,
              node: str = "node-1", count: int = 1, reason: str = "BackOff", **changes) -> Event:
    pod = pod or f"{workload}-7d9f8c6b5-aaaaa"
    fields: dict = {
        "id": f"ev-{next(_ids)}", "source": "kubernetes", "kind": "Pod", "name": pod, "reason": reason,
        "namespace": namespace, "uid": f"uid-{pod}", "message": "Back-off restarting failed container",
        "type": "Warning", "count": count, "total_count": count, "first_seen": t, "last_seen": t,
        "node": node, "pod": pod, "workload": workload, "workload_kind": "Deployment",
    }
    fields.update(changes)
    return Event(**fields)


def node_event(t: float, node: str = "node-3") -> Event:
    return Event(id=f"ev-{next(_ids)}", source="kubernetes", kind="Node", name=node, reason="NodeNotReady",
                 type="Normal", first_seen=t, last_seen=t, node=node, uid=node)


class Clock:
    """A Correlator on a HistoricalScheduler, driven the way replay drives it."""

    def __init__(self) -> None:
        self.scheduler = HistoricalScheduler(initial_clock=datetime.fromtimestamp(T0, UTC))
        self.correlator = Correlator(self.scheduler, ids=itertools.count(1))
        self.formed: list[Incident] = []
        self.correlator.formed.subscribe(self.formed.append)

    def advance(self, t: float) -> None:
        self.scheduler.advance_to(datetime.fromtimestamp(t, UTC))

    def add(self, hit: Hit, t: float) -> Incident | None:
        self.advance(t)
        return self.correlator.add(hit, now=t)

    def hit(self, t: float, strategy: Strategy = CRASHLOOP, **event) -> Incident | None:
        return self.add(Hit(strategy, pod_event(t, **event)), t)


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ----------------------------------------------------------------------------- quiet period


def test_burst_forms_one_incident_after_quiet(clock):
    for dt in (0, 10, 20):
        clock.hit(T0 + dt)
    clock.advance(T0 + 20 + QUIET - 1)
    assert clock.formed == []
    assert [i.status for i in clock.correlator.open_incidents()] == [PENDING]
    clock.advance(T0 + 20 + QUIET)
    [incident] = clock.formed
    assert incident.status == OPEN
    assert incident.formed_at == T0 + 50
    assert incident.events == 3
    assert incident.records == 3
    assert incident.strategy is CRASHLOOP
    assert incident.key == ("blog", "web")
    assert clock.correlator.stats["incidents"] == 1


def test_incident_keeps_waiting_while_hits_keep_coming(clock):
    # A hit every 20 s (< quiet) for 200 s: never quiet, below max_window.
    for dt in range(0, 201, 20):
        clock.hit(T0 + dt)
        assert clock.formed == []
    clock.advance(T0 + 200 + QUIET - 1)
    assert clock.formed == []
    clock.advance(T0 + 200 + QUIET)
    [incident] = clock.formed
    assert incident.formed_at == T0 + 230
    assert incident.events == 11


def test_events_sum_occurrence_counts(clock):
    clock.hit(T0, count=4)
    clock.hit(T0 + 5, count=3, pod="web-7d9f8c6b5-bbbbb")
    clock.advance(T0 + 60)
    [incident] = clock.formed
    assert incident.events == 7
    assert incident.records == 2
    assert len(incident.objects) == 2


def test_max_window_forms_a_continuous_stream(clock):
    for dt in range(0, 600, 10):  # never quiet for 30 s
        clock.hit(T0 + dt)
        if dt < MAX_WINDOW:
            assert clock.formed == [], dt
    [incident] = clock.formed
    assert incident.formed_at == T0 + MAX_WINDOW
    assert incident.events == 30  # the hits before first + max_window
    assert incident.late == 30  # the rest joined the open incident
    assert clock.correlator.stats["incidents"] == 1


def test_first_seen_is_the_first_timestamp_of_a_repeated_event(clock):
    event = pod_event(T0, count=5, first_seen=T0 - 120)
    clock.add(Hit(CRASHLOOP, event), T0)
    clock.advance(T0 + QUIET)
    [incident] = clock.formed
    assert incident.first_seen == T0 - 120
    assert incident.summary()["first"] == iso(T0 - 120)
    assert incident.summary()["last"] == iso(T0)


# ----------------------------------------------------------------------------- open, close, cooldown


def test_late_hits_attach_to_the_open_incident(clock):
    clock.hit(T0)
    clock.advance(T0 + QUIET)
    [incident] = clock.formed
    # Long after forming, while its workflow still runs: late, nothing new starts.
    for dt in (100, 2000, 5000):
        assert clock.hit(T0 + dt, count=2) is incident
    clock.advance(T0 + 10_000)
    assert clock.formed == [incident]
    assert incident.late == 6
    assert incident.events == 1
    assert incident.last_seen == T0 + 5000
    assert clock.correlator.stats["late"] == 6


def test_cooldown_suppresses_then_a_new_incident_opens(clock):
    clock.hit(T0)
    clock.advance(T0 + QUIET)
    [first] = clock.formed
    clock.advance(T0 + 100)
    clock.correlator.close(first)
    assert first.status == CLOSED
    assert first.closed_at == T0 + 100
    # During the cooldown: suppressed on the closed incident, no new incident.
    assert clock.hit(T0 + 200) is first
    assert clock.hit(T0 + 100 + COOLDOWN - 1, count=3) is first
    clock.advance(T0 + 100 + COOLDOWN - 0.5)
    assert clock.formed == [first]
    assert first.suppressed == 4
    assert clock.correlator.stats["suppressed"] == 4
    # After the cooldown: a NEW incident.
    after = T0 + 100 + COOLDOWN + 1
    second = clock.hit(after)
    assert second is not first
    assert second.status == PENDING
    clock.advance(after + QUIET)
    assert clock.formed == [first, second]
    assert second.id != first.id
    assert second.events == 1
    assert first.suppressed == 4  # untouched by the new burst


def test_group_is_forgotten_after_cooldown(clock):
    clock.hit(T0)
    clock.advance(T0 + QUIET)
    clock.correlator.close(clock.formed[0])
    assert clock.correlator.group_count() == 1
    clock.advance(T0 + QUIET + COOLDOWN)
    assert clock.correlator.group_count() == 0


def test_close_twice_does_not_extend_the_cooldown(clock):
    clock.hit(T0)
    clock.advance(T0 + QUIET)
    [incident] = clock.formed
    clock.correlator.close(incident)
    clock.advance(T0 + 500)
    clock.correlator.close(incident)
    assert incident.closed_at == T0 + QUIET
    clock.hit(T0 + QUIET + COOLDOWN + 1)
    clock.advance(T0 + QUIET + COOLDOWN + 1 + QUIET)
    assert len(clock.formed) == 2


# ----------------------------------------------------------------------------- keys


def test_separate_keys_give_separate_incidents(clock):
    for dt in range(0, 20, 2):
        clock.hit(T0 + dt, namespace="blog", workload="web")
        clock.hit(T0 + dt, namespace="blog", workload="api")
        clock.hit(T0 + dt, namespace="shop", workload="web")
    clock.advance(T0 + 100)
    assert sorted(i.key_text for i in clock.formed) == ["blog/api", "blog/web", "shop/web"]
    assert all(i.events == 10 for i in clock.formed)
    assert len({i.id for i in clock.formed}) == 3


def test_pods_of_one_workload_share_an_incident(clock):
    for n, pod in enumerate(("web-7d9f8c6b5-aaaaa", "web-7d9f8c6b5-bbbbb", "web-7d9f8c6b5-ccccc")):
        clock.hit(T0 + n, pod=pod)
    clock.advance(T0 + 100)
    [incident] = clock.formed
    assert incident.events == 3
    assert len(incident.objects) == 3


def test_different_strategies_on_one_key_are_separate_incidents(clock):
    clock.hit(T0, strategy=CRASHLOOP)
    clock.hit(T0 + 1, strategy=OOM, reason="OOMKilled")
    clock.advance(T0 + 100)
    assert sorted((i.strategy.id, i.key_text) for i in clock.formed) == [
        ("oom_killed", "blog/web"), ("pod_crashloop", "blog/web")]


def test_missing_key_fields_group_under_a_dash():
    event = pod_event(T0, namespace=None, workload="")
    assert correlation_key(CRASHLOOP, event) == ("-", "-")
    assert correlation_key(NODE, node_event(T0, "node-9")) == ("node-9",)


# ----------------------------------------------------------------------------- inhibition


def test_inhibited_hits_attach_to_the_inhibitors_incident(clock):
    node_incident = clock.add(Hit(NODE, node_event(T0, "node-3")), T0)
    for dt in (2, 4, 6):
        covered = Hit(CRASHLOOP, pod_event(T0 + dt, node="node-3", count=2),
                      inhibited_by=("node_not_ready", "node-3"))
        assert clock.add(covered, T0 + dt) is node_incident
    clock.advance(T0 + 100)
    assert [i.strategy.id for i in clock.formed] == ["node_not_ready"]  # no pod incident
    assert node_incident.inhibited == {"pod_crashloop": 6}
    assert node_incident.events == 1
    assert node_incident.summary()["inhibited"] == {"pod_crashloop": 6}
    # Still counted once the node incident is open.
    clock.add(Hit(OOM, pod_event(T0 + 200, node="node-3", reason="OOMKilled"),
                  inhibited_by=("node_not_ready", "node-3")), T0 + 200)
    assert node_incident.inhibited == {"pod_crashloop": 6, "oom_killed": 1}
    assert clock.correlator.stats["inhibited"] == 7


def test_inhibited_hit_without_an_inhibitor_incident_is_an_orphan(clock):
    orphan = Hit(CRASHLOOP, pod_event(T0, node="node-8"), inhibited_by=("node_not_ready", "node-8"))
    assert clock.add(orphan, T0) is None
    clock.advance(T0 + 100)
    assert clock.formed == []
    assert clock.correlator.stats["inhibited_orphans"] == 1


# ----------------------------------------------------------------------------- output and wiring


def test_summary_has_what_a_user_reads(clock):
    clock.hit(T0)
    clock.hit(T0 + 10, pod="web-7d9f8c6b5-bbbbb")
    clock.advance(T0 + 100)
    summary = clock.formed[0].summary()
    assert {"kind", "strategy", "key", "events", "workflow"} <= summary.keys()
    assert summary["kind"] == "incident"
    assert summary["strategy"] == "pod_crashloop"
    assert summary["key"] == "blog/web"
    assert summary["events"] == 2
    assert summary["workflow"] == "diagnose_pod_crashloop"
    assert summary["severity"] == "high"
    assert summary["id"] == "inc-000001"
    assert (summary["first"], summary["last"]) == (iso(T0), iso(T0 + 10))
    context = clock.formed[0].context()
    assert (context["namespace"], context["workload"], context["count"]) == ("blog", "web", 2)


def test_correlator_is_an_rx_observer_on_scheduler_time(clock):
    hits = [Hit(CRASHLOOP, pod_event(T0)), Hit(CRASHLOOP, pod_event(T0, workload="api"))]
    reactivex.from_iterable(hits).subscribe(clock.correlator)
    clock.advance(T0 + QUIET)
    assert sorted(i.key_text for i in clock.formed) == ["blog/api", "blog/web"]


def test_a_failing_subscriber_does_not_stop_correlation(clock, caplog):
    def explode(incident: Incident) -> None:
        raise RuntimeError("subscriber bug")

    clock.correlator.formed.subscribe(explode)
    clock.hit(T0, workload="web")
    clock.advance(T0 + QUIET)
    clock.hit(T0 + QUIET + 1, workload="api")
    clock.advance(T0 + 2 * QUIET + 1)
    assert [i.key_text for i in clock.formed] == ["blog/web", "blog/api"]
    assert "subscriber failed" in caplog.text
