"""Pod status as a source: container states become events, once per restart, from a watch
line, a `kubectl get pods -o json` List, or an agent-manager envelope with statuses."""

from __future__ import annotations

import copy

import orjson
import pytest

from engine.events import OccurrenceTracker, parse_event, parse_events
from engine.exceptions import MalformedEvent
from engine.replay import replay_bytes
from engine.rules.check import effective_strategies, load_valid

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "checkout-7d9f8c6b5-x2x4k", "namespace": "shop", "uid": "p-1",
                 "labels": {"app": "checkout"},
                 "ownerReferences": [{"kind": "ReplicaSet", "name": "checkout-7d9f8c6b5",
                                      "controller": True}]},
    "spec": {"nodeName": "node-a3"},
    "status": {"startTime": "2026-11-20T08:00:00Z", "containerStatuses": [
        {"name": "checkout", "restartCount": 3,
         "state": {"waiting": {"reason": "CrashLoopBackOff",
                               "message": "back-off 40s restarting failed container"}},
         "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                      "finishedAt": "2026-11-20T08:12:44Z"}}},
        {"name": "sidecar", "restartCount": 0, "state": {"running": {}}},
    ]},
}


def restarted(pod: dict, n: int) -> dict:
    out = copy.deepcopy(pod)
    out["status"]["containerStatuses"][0]["restartCount"] += n
    return out


def test_each_state_worth_knowing_is_an_event_of_the_pod() -> None:
    events = parse_events({"type": "MODIFIED", "object": POD})
    assert [(e.reason, e.container, e.total_count) for e in events] == [
        ("OOMKilled", "checkout", 3), ("CrashLoopBackOff", "checkout", 3)]
    oom = events[0]
    assert (oom.kind, oom.name, oom.namespace, oom.node, oom.workload, oom.workload_kind) == (
        "Pod", "checkout-7d9f8c6b5-x2x4k", "shop", "node-a3", "checkout", "Deployment")
    assert "exit code 137" in oom.message and oom.labels == {"app": "checkout"}
    assert parse_event(POD).reason == "OOMKilled"       # the first, for a single-event caller


def test_counted_once_per_restart() -> None:
    tracker = OccurrenceTracker()
    seen = []
    for pod in (POD, POD, restarted(POD, 1), restarted(POD, 1), restarted(POD, 3)):
        for event in parse_events(pod):
            if event.reason == "OOMKilled" and tracker.observe(event):
                seen.append(event.count)
    # First seen: its 3 restarts; the same status again: nothing; each restart: one more.
    assert seen == [3, 1, 2]


@pytest.mark.parametrize(("state", "reasons"), [
    ({"state": {"terminated": {"reason": "Error", "exitCode": 1}}}, ["Error"]),
    ({"state": {"terminated": {"reason": "Completed", "exitCode": 0}}}, []),
    ({"state": {"terminated": {"reason": "Error", "exitCode": 0}}}, []),
    ({"lastState": {"terminated": {"reason": "StartError", "exitCode": 128}}}, ["StartError"]),
    ({"state": {"waiting": {"reason": "ImagePullBackOff"}}}, ["ImagePullBackOff"]),
    ({"state": {"waiting": {"reason": "ContainerCreating"}}}, []),
    ({"state": {"running": {}}}, []),
])
def test_which_states_are_events(state, reasons) -> None:
    pod = copy.deepcopy(POD)
    pod["status"]["containerStatuses"] = [{"name": "app", "restartCount": 1, **state}]
    assert [e.reason for e in parse_events(pod)] == reasons


def test_an_envelope_with_container_statuses_adds_what_they_show() -> None:
    envelope = {"id": "evt-1", "source": "agent-manager", "reason": "CrashLoopBackOff", "severity": "high",
                "namespace": "shop", "kind": "Pod", "name": "checkout-7d9f8c6b5-x2x4k", "uid": "p-1",
                "count": 4, "container_statuses": POD["status"]["containerStatuses"]}
    events = parse_events(envelope)
    assert [(e.reason, e.source) for e in events] == [("CrashLoopBackOff", "agent-manager"),
                                                      ("OOMKilled", "agent-manager")]


def test_a_kubectl_list_of_pods_replays_into_the_oom_strategies() -> None:
    strategies = effective_strategies(load_valid("rules")).values()
    items = {"kind": "List", "items": [POD, restarted(POD, 1)]}
    result = replay_bytes(orjson.dumps(items), strategies)
    found = {(i.strategy.id, i.key_text) for i in result.incidents}
    assert ("oom_killed", "shop/checkout") in found


def test_a_malformed_pod_is_refused_with_what_is_wrong() -> None:
    bad = copy.deepcopy(POD)
    bad["status"]["containerStatuses"][0]["restartCount"] = "three"
    with pytest.raises(MalformedEvent, match="restartCount must be an integer"):
        parse_events(bad)
