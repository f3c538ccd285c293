"""Offline replay, end to end: recorded streams -> intake -> rule base -> incidents, on event time."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.replay import DeadLetter, replay_bytes
from engine.rules.check import effective_strategies, load_valid

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
FIXTURES = ROOT / "tests" / "fixtures"
WATCH_STREAM = FIXTURES / "watch-stream.jsonl"
MINIKUBE = FIXTURES / "real-minikube-eventlist.json"
T0 = 1_795_000_000.0  # 2026-11-18T07:06:40Z


@pytest.fixture(scope="module")
def strategies():
    return list(effective_strategies(load_valid(RULES)).values())


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def watch(*, event_uid: str, kind: str, name: str, reason: str, message: str, t: float,
          first: float | None = None, count: int = 1, namespace: str | None = "blog",
          host: str | None = None, component: str = "kubelet", type_: str = "Warning",
          rv: int | None = None) -> dict:
    """A core/v1 Event as a watch line: ADDED for count 1, MODIFIED for the repeats."""
    involved = {"kind": kind, "name": name, "uid": f"uid-{name}"}
    if namespace:
        involved["namespace"] = namespace
    source = {"component": component, **({"host": host} if host else {})}
    obj = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{name}.{event_uid}", "namespace": namespace or "default", "uid": event_uid,
                     "resourceVersion": str(rv if rv is not None else count)},
        "involvedObject": involved, "reason": reason, "message": message, "source": source,
        "firstTimestamp": iso(first if first is not None else t), "lastTimestamp": iso(t),
        "count": count, "type": type_,
    }
    return {"type": "ADDED" if count == 1 else "MODIFIED", "object": obj}


def backoff_lines(pod: str, *, t: float, host: str, repeats: int, every: float = 5.0,
                  namespace: str = "blog") -> list[dict]:
    message = f"Back-off restarting failed container app in pod {pod}_{namespace}(uid-{pod})"
    return [watch(event_uid=f"ev-{pod}", kind="Pod", name=pod, namespace=namespace, reason="BackOff",
                  message=message, host=host, t=t + i * every, first=t, count=i + 1)
            for i in range(repeats)]


def node_not_ready(node: str, t: float) -> dict:
    return watch(event_uid=f"ev-{node}-notready", kind="Node", name=node, namespace=None,
                 reason="NodeNotReady", message=f"Node {node} status is now: NodeNotReady",
                 component="node-controller", type_="Normal", t=t)


def oom_envelope(pod: str, *, t: float, node: str, namespace: str = "blog") -> dict:
    """agent-manager's envelope for a container terminated with reason OOMKilled."""
    return {"id": f"am-{pod}-{t}", "source": "agent-manager", "reason": "OOMKilled", "severity": "high",
            "kind": "Pod", "name": pod, "namespace": namespace, "node": node, "count": 1,
            "first_seen": iso(t), "last_seen": iso(t),
            "message": "Container app in pod was terminated: OOMKilled (exit code 137)"}


def jsonl(items: Iterable[dict]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def incidents_of(result) -> list[tuple[str, str, int]]:
    return sorted((i.strategy.id, i.key_text, i.events) for i in result.incidents)


def cli_replay(capsys, path: Path) -> tuple[int, list[dict]]:
    code = main(["replay", str(path), "--json", "--rules", str(RULES)])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def incident_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "incident"]


# ----------------------------------------------------------------------------- fixtures


def test_watch_stream_gives_exactly_three_incidents(strategies):
    result = replay_bytes(WATCH_STREAM.read_bytes(), strategies)
    assert incidents_of(result) == [
        ("node_not_ready", "node-3", 1),
        ("pod_crashloop", "blog/web", 4),  # counts 1 + 1 + (3 - 1); the duplicate adds nothing
        ("pvc_pending", "data/data-db-0", 1),
    ]
    assert result.records == 7
    assert result.duplicates == 1
    assert result.dead_letters == []


def test_cli_replay_json_lines(capsys):
    code, records = cli_replay(capsys, WATCH_STREAM)
    assert code == 0
    incidents = incident_lines(records)
    for line in incidents:
        assert {"kind", "strategy", "key", "events", "workflow"} <= line.keys()
    assert sorted((i["strategy"], i["key"], i["events"], i["workflow"]) for i in incidents) == [
        ("node_not_ready", "node-3", 1, "diagnose_node_not_ready"),
        ("pod_crashloop", "blog/web", 4, "diagnose_pod_crashloop"),
        ("pvc_pending", "data/data-db-0", 1, "diagnose_pvc_pending"),
    ]
    summary = records[-1]
    assert summary["kind"] == "summary"
    assert (summary["incidents"], summary["records"], summary["dead_letters"]) == (3, 7, 0)


def test_minikube_eventlist_gives_only_the_real_symptom(strategies, capsys):
    result = replay_bytes(MINIKUBE.read_bytes(), strategies)
    # Scheduled/Pulled/Started/NodeReady/... and readiness probe noise open nothing.
    assert [(i.strategy.id, i.key_text) for i in result.incidents] == [("failed_scheduling", "default/redis")]
    assert result.records > 50
    assert result.dead_letters == []
    code, records = cli_replay(capsys, MINIKUBE)
    assert code == 0
    assert [(i["strategy"], i["key"]) for i in incident_lines(records)] == [
        ("failed_scheduling", "default/redis")]


# ----------------------------------------------------------------------------- dead letters


def test_malformed_lines_are_dead_lettered_and_the_rest_replays(tmp_path, capsys):
    lines = WATCH_STREAM.read_text().splitlines()
    lines.insert(2, '{"type": "ADDED", "object": {broken')   # line 3: not JSON
    lines.insert(5, '{"hello": "world"}')                      # line 6: JSON, not an event
    path = tmp_path / "stream.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, records = cli_replay(capsys, path)
    assert code == 0
    dead = [r for r in records if r.get("kind") == "dead_letter"]
    assert [d["line"] for d in dead] == [3, 6]
    assert "not JSON" in dead[0]["reason"]
    assert "not an event" in dead[1]["reason"]
    assert sorted((i["strategy"], i["key"], i["events"]) for i in incident_lines(records)) == [
        ("node_not_ready", "node-3", 1),
        ("pod_crashloop", "blog/web", 4),
        ("pvc_pending", "data/data-db-0", 1),
    ]
    assert records[-1]["dead_letters"] == 2


def test_malformed_first_line_does_not_hide_the_stream(tmp_path, strategies):
    data = b"{not json at all\n" + WATCH_STREAM.read_bytes()
    result = replay_bytes(data, strategies)
    assert result.dead_letters == [DeadLetter(1, result.dead_letters[0].reason)]
    assert len(result.incidents) == 3


def test_a_bad_event_field_is_a_dead_letter(strategies):
    good = backoff_lines("web-6b7c9d8f5-abcde", t=T0, host="node-1", repeats=2)
    bad = watch(event_uid="ev-x", kind="Pod", name="x-6b7c9d8f5-abcde", reason="BackOff", message="m", t=T0)
    bad["object"]["count"] = "many"
    result = replay_bytes(jsonl([good[0], bad, good[1]]), strategies)
    assert [d.line for d in result.dead_letters] == [2]
    assert "count" in result.dead_letters[0].reason
    assert incidents_of(result) == [("pod_crashloop", "blog/web", 2)]


# ----------------------------------------------------------------------------- inhibition, sequences


def test_pods_on_a_notready_node_are_covered_by_the_node_incident(strategies, tmp_path, capsys):
    items = [node_not_ready("node-3", T0)]
    items += backoff_lines("web-6b7c9d8f5-aaaaa", t=T0 + 5, host="node-3", repeats=3)
    items += backoff_lines("web-6b7c9d8f5-bbbbb", t=T0 + 6, host="node-3", repeats=3)
    items += backoff_lines("api-7c8d9e0f1-ccccc", t=T0 + 7, host="node-1", repeats=2)  # a healthy node
    items.sort(key=lambda item: item["object"]["lastTimestamp"])
    path = tmp_path / "inhibit.jsonl"
    path.write_bytes(jsonl(items))
    result = replay_bytes(path.read_bytes(), strategies)
    by_strategy = {(i.strategy.id, i.key_text): i for i in result.incidents}
    assert sorted(by_strategy) == [("node_not_ready", "node-3"), ("pod_crashloop", "blog/api")]
    assert by_strategy[("node_not_ready", "node-3")].inhibited == {"pod_crashloop": 6}
    assert by_strategy[("pod_crashloop", "blog/api")].events == 2
    code, records = cli_replay(capsys, path)
    assert code == 0
    [node] = [r for r in incident_lines(records) if r["strategy"] == "node_not_ready"]
    assert node["inhibited"] == {"pod_crashloop": 6}
    assert "blog/web" not in {r["key"] for r in incident_lines(records)}


def test_an_oom_kill_on_a_healthy_node_is_not_covered_by_another_nodes_incident(strategies):
    items = [node_not_ready("node-3", T0), oom_envelope("web-6b7c9d8f5-abcde", t=T0 + 5, node="node-1")]
    result = replay_bytes(jsonl(items), strategies)
    assert incidents_of(result) == [("node_not_ready", "node-3", 1), ("oom_killed", "blog/web", 1)]


def test_oom_kill_then_backoff_is_an_oom_crashloop_incident(strategies):
    pod = "web-6b7c9d8f5-abcde"
    items = [oom_envelope(pod, t=T0, node="node-1"), *backoff_lines(pod, t=T0 + 20, host="node-1", repeats=1)]
    result = replay_bytes(jsonl(items), strategies)
    assert incidents_of(result) == [("oom_crashloop", "blog/web", 1), ("oom_killed", "blog/web", 1)]
    [sequence] = [i for i in result.incidents if i.strategy.id == "oom_crashloop"]
    assert sequence.workflow_id == "diagnose_oom_killed"
    assert sequence.first_event.reason == "BackOff"


def test_backoff_without_oom_kill_is_a_plain_crash_loop(strategies):
    items = backoff_lines("web-6b7c9d8f5-abcde", t=T0, host="node-1", repeats=3)
    assert incidents_of(replay_bytes(jsonl(items), strategies)) == [("pod_crashloop", "blog/web", 3)]


# ----------------------------------------------------------------------------- determinism


def _without_execution_ids(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not (r.get("kind") == "execution" and k == "id")} for r in records]


@pytest.mark.parametrize("path", [WATCH_STREAM, MINIKUBE], ids=["watch-stream", "minikube"])
def test_replay_gives_the_same_incidents_every_time(capsys, path):
    _, first = cli_replay(capsys, path)
    _, second = cli_replay(capsys, path)
    assert incident_lines(first)
    assert _without_execution_ids(first) == _without_execution_ids(second)


def test_replay_json_output_is_identical_for_the_same_input(capsys):
    main(["replay", str(WATCH_STREAM), "--json", "--rules", str(RULES)])
    first = capsys.readouterr().out
    main(["replay", str(WATCH_STREAM), "--json", "--rules", str(RULES)])
    second = capsys.readouterr().out
    assert first.count("\n") >= 4
    assert first == second


# ----------------------------------------------------------------------------- the storm


def storm(deployments: int = 100, pods: int = 5, repeats: int = 20) -> bytes:
    """Every pod of every deployment crash-loops: watch lines in time order, ADDED with count 1
    then MODIFIED with counts 2..repeats, 3 s apart, from the kubelet."""
    lines = []
    for r in range(repeats):
        for d in range(deployments):
            for p in range(pods):
                pod = f"app-{d:03d}-5f6d7c8b9-{p:05d}"
                message = f"Back-off restarting failed container app in pod {pod}_storm(uid-{pod})"
                lines.append(watch(event_uid=f"ev-{d}-{p}", kind="Pod", name=pod, namespace="storm",
                                   reason="BackOff", message=message, host=f"node-{p}", t=T0 + 3 * r,
                                   first=T0, count=r + 1, rv=1000 + r))
    return jsonl(lines)


def test_storm_gives_one_incident_per_deployment(strategies):
    result = replay_bytes(storm(), strategies)
    assert result.records == 10_000
    assert result.duplicates == 0
    assert result.dead_letters == []
    assert len(result.incidents) == 100
    assert {i.strategy.id for i in result.incidents} == {"pod_crashloop"}
    assert sorted(i.key_text for i in result.incidents) == [f"storm/app-{d:03d}" for d in range(100)]
    assert [i.events for i in result.incidents] == [100] * 100  # 5 pods x 20 occurrences
    assert all(len(i.objects) == 5 for i in result.incidents)
    assert all(i.late == 0 and i.suppressed == 0 for i in result.incidents)


def test_the_replay_command_parses_a_file_in_a_worker_and_says_the_same(tmp_path, strategies):
    # A fresh ``aetherius replay`` process runs no other thread: a file goes through the
    # parse worker (feed_file's default), and its answer is the in-process one.
    import subprocess
    import sys

    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm(deployments=20, repeats=6) + WATCH_STREAM.read_bytes())
    expected = replay_bytes(path.read_bytes(), strategies)
    command = [sys.executable, "-m", "engine", "replay", "--rules", str(RULES)]
    done = subprocess.run([*command, str(path), "--json"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert sorted((i["strategy"], i["key"], i["events"]) for i in incident_lines(records)) == \
        sorted((i.strategy.id, i.key_text, i.events) for i in expected.incidents)
    assert records[-1]["records"] == expected.records and records[-1]["duplicates"] == expected.duplicates
    missing = subprocess.run([*command, str(tmp_path / "absent.jsonl")], capture_output=True, text=True,
                             timeout=120, check=False)
    assert missing.returncode == 2 and "absent.jsonl: No such file or directory" in missing.stderr
