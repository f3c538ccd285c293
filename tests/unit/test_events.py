"""Intake: every accepted input shape becomes an Event with the fields a user relies on."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from engine.events import (
    MAX_EVENT_BYTES,
    Event,
    OccurrenceTracker,
    decode,
    owning_workload,
    parse_event,
    read_stream,
)
from engine.exceptions import MalformedEvent

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def ts(text: str) -> float:
    """Epoch seconds of an ISO time written in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def watch_lines() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "watch-stream.jsonl").read_text().splitlines()]


def core_event(**changes: object) -> dict:
    """A minimal core/v1 Event for a pod; keyword arguments replace top-level keys."""
    obj: dict = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "blog", "uid": "ev-1", "resourceVersion": "10"},
        "involvedObject": {"kind": "Pod", "name": "web-7d9f8c6b5-x2x4k", "namespace": "blog", "uid": "pod-1"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2026-11-20T10:00:00Z",
        "lastTimestamp": "2026-11-20T10:00:30Z",
        "count": 1,
        "type": "Warning",
    }
    obj.update(changes)
    return obj


# ----------------------------------------------------------------------------- input shapes


def test_core_v1_event_fields():
    event = parse_event(load("core-v1-backoff.json"))

    assert isinstance(event, Event)
    assert event.source == "kubernetes"
    assert (event.kind, event.namespace, event.name) == ("Pod", "shop", "checkout-7d9f8c6b5-x2x4k")
    assert event.uid == "5f2d7e1a-8b3c-4d9e-a0f1-2b3c4d5e6f70"
    assert event.reason == "BackOff"
    assert event.type == "Warning"
    assert event.message.startswith("Back-off restarting failed container checkout")
    assert event.count == 23
    assert event.total_count == 23
    assert event.first_seen == ts("2026-11-20T08:14:03")
    assert event.last_seen == ts("2026-11-20T08:19:47")
    assert event.time == event.last_seen
    assert event.node == "node-a3"
    assert event.pod == "checkout-7d9f8c6b5-x2x4k"
    assert (event.workload_kind, event.workload) == ("Deployment", "checkout")
    assert event.container == "checkout"
    assert event.component == "kubelet"
    assert event.event_uid == "0b6c9a52-1c1e-4c55-9d0e-6f1b2a3c4d5e"
    # The id changes with the Event object's resourceVersion, so each patch is distinct.
    assert event.id == "0b6c9a52-1c1e-4c55-9d0e-6f1b2a3c4d5e@981273"
    assert event.watch_type is None


def test_events_k8s_io_v1_event_fields():
    event = parse_event(load("events-k8s-io-v1-unhealthy.json"))

    assert (event.kind, event.namespace, event.name) == ("Pod", "payments", "api-5c8d7b9f4-q7wzp")
    assert event.reason == "Unhealthy"
    # 'note' is the message in the new API; 'series.count' the number of occurrences.
    assert event.message.startswith("Liveness probe failed: Get \"http://10.244.1.17:8080/healthz\"")
    assert event.count == 7
    assert event.first_seen == ts("2026-11-20T09:02:11")
    assert event.last_seen == ts("2026-11-20T09:05:41.118220")
    assert event.node == "node-b1"
    assert event.container == "api"
    assert (event.workload_kind, event.workload) == ("Deployment", "api")
    assert event.component == "kubelet"
    assert event.event_uid == "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"


def test_events_k8s_io_v1_without_deprecated_fields_uses_event_time_and_series():
    obj = load("events-k8s-io-v1-unhealthy.json")
    for key in ("deprecatedSource", "deprecatedFirstTimestamp", "deprecatedLastTimestamp",
                "deprecatedCount"):
        del obj[key]

    event = parse_event(obj)

    assert event.first_seen == ts("2026-11-20T09:02:11.402311")
    assert event.last_seen == ts("2026-11-20T09:05:41.118220")
    assert event.count == 7

    del obj["series"]
    single = parse_event(obj)
    assert single.count == 1
    assert single.first_seen == single.last_seen == ts("2026-11-20T09:02:11.402311")


def test_agent_manager_envelope_fields():
    event = parse_event(load("agent-manager-envelope.json"))

    assert event.source == "agent-manager"
    assert event.id == "evt-20261120-0814-000123"
    assert event.cluster == "prod-eu-1"
    assert event.severity == "high"
    assert event.reason == "CrashLoopBackOff"
    assert (event.kind, event.namespace, event.name) == ("Pod", "shop", "checkout-7d9f8c6b5-x2x4k")
    assert event.pod == "checkout-7d9f8c6b5-x2x4k"
    assert event.node == "node-a3"
    assert event.count == 23
    assert event.first_seen == ts("2026-11-20T08:14:03")
    assert event.last_seen == ts("2026-11-20T08:19:47")
    assert (event.workload_kind, event.workload) == ("Deployment", "checkout")
    assert event.labels == {"app": "checkout", "team": "payments"}


def test_envelope_defaults_kind_pod_and_an_explicit_workload_wins():
    event = parse_event({"reason": "OOMKilled", "name": "worker-abcde", "namespace": "jobs",
                         "workload": "nightly-batch", "timestamp": "2026-11-20T10:00:00Z"})

    assert event.kind == "Pod"
    assert event.workload == "nightly-batch"
    assert event.first_seen == event.last_seen == ts("2026-11-20T10:00:00")
    assert event.count == 1


def test_envelope_about_a_node_sets_node():
    event = parse_event({"reason": "NodeNotReady", "kind": "Node", "name": "node-7"})

    assert event.node == "node-7"
    assert event.pod is None


def test_watch_added_and_modified_unwrap_the_object():
    lines = watch_lines()

    added = parse_event(lines[0])
    modified = parse_event(lines[2])

    assert added.watch_type == "ADDED"
    assert (added.name, added.count, added.node) == ("web-6b7c9d8f5-abcde", 1, "node-1")
    assert modified.watch_type == "MODIFIED"
    assert modified.count == 3
    assert modified.event_uid == added.event_uid == "e1"
    assert modified.last_seen == ts("2026-11-20T10:00:20")
    assert modified.first_seen == ts("2026-11-20T10:00:00")


@pytest.mark.parametrize("kind", ["DELETED", "BOOKMARK"])
def test_watch_deleted_and_bookmark_carry_no_event(kind):
    line = watch_lines()[0]
    line["type"] = kind
    if kind == "BOOKMARK":
        line["object"] = {"kind": "Event", "apiVersion": "v1", "metadata": {"resourceVersion": "12345"}}

    assert parse_event(line) is None


def test_watch_error_raises_with_the_status_message():
    line = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "too old resource version: 100 (200)", "code": 410}}

    with pytest.raises(MalformedEvent, match=r"watch ERROR: too old resource version"):
        parse_event(line)


def test_node_event_has_node_and_no_namespace():
    event = parse_event(watch_lines()[4])

    assert event.kind == "Node"
    assert event.node == "node-3"
    assert event.namespace is None
    assert event.pod is None


def test_pod_event_without_source_host_has_no_node():
    event = parse_event(watch_lines()[5])  # db-0, reported by the node-controller

    assert event.pod == "db-0"
    assert event.node is None
    assert (event.workload_kind, event.workload) == ("StatefulSet", "db")


def test_pvc_event_is_its_own_workload():
    event = parse_event(watch_lines()[6])

    assert (event.kind, event.name) == ("PersistentVolumeClaim", "data-db-0")
    assert event.pod is None
    assert event.node is None
    assert (event.workload_kind, event.workload) == ("PersistentVolumeClaim", "data-db-0")


@pytest.mark.parametrize(
    ("field_path", "container"),
    [
        ("spec.containers{checkout}", "checkout"),
        ("spec.initContainers{init-db}", "init-db"),
        ("spec.ephemeralContainers{debugger}", "debugger"),
        ("metadata.labels", None),
    ],
)
def test_container_from_field_path(field_path, container):
    obj = core_event()
    obj["involvedObject"]["fieldPath"] = field_path

    assert parse_event(obj).container == container


def test_core_v1_series_count_is_used_when_higher():
    event = parse_event(core_event(count=1, series={"count": 9, "lastObservedTime": "2026-11-20T10:05:00Z"}))

    assert event.count == 9


def test_core_v1_series_last_observed_time_is_last_seen():
    obj = core_event(firstTimestamp=None, lastTimestamp=None, count=None,
                     eventTime="2026-11-20T10:00:00.000000Z",
                     series={"count": 5, "lastObservedTime": "2026-11-20T10:04:00.000000Z"})

    event = parse_event(obj)

    assert event.count == 5
    assert event.first_seen == ts("2026-11-20T10:00:00")
    assert event.last_seen == ts("2026-11-20T10:04:00")


def test_core_v1_event_time_used_when_legacy_timestamps_are_null():
    event = parse_event(core_event(firstTimestamp=None, lastTimestamp=None,
                                   eventTime="2026-11-20T10:00:00.250000Z"))

    assert event.first_seen == event.last_seen == ts("2026-11-20T10:00:00.250000")


def test_missing_last_timestamp_falls_back_to_first():
    event = parse_event(core_event(lastTimestamp=None))

    assert event.last_seen == event.first_seen == ts("2026-11-20T10:00:00")


def test_timestamp_with_offset_is_converted_to_utc():
    event = parse_event(core_event(firstTimestamp="2026-11-20T12:00:00+02:00",
                                   lastTimestamp="2026-11-20T12:00:00+02:00"))

    assert event.first_seen == ts("2026-11-20T10:00:00")


# ----------------------------------------------------------------------------- workloads


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ("web-7d9f8c6b5-x2x4k", ("Deployment", "web")),
        ("checkout-api-5c8d7b9f4-q7wzp", ("Deployment", "checkout-api")),
        ("db-0", ("StatefulSet", "db")),
        ("redis-cluster-12", ("StatefulSet", "redis-cluster")),
        ("fluentd-x7k2p", ("DaemonSet", "fluentd")),
        ("standalone", (None, "standalone")),
    ],
)
def test_workload_from_pod_name(pod, expected):
    obj = core_event()
    obj["involvedObject"]["name"] = pod

    event = parse_event(obj)

    assert (event.workload_kind, event.workload) == expected


def test_workload_from_owner_references_replicaset_means_deployment():
    obj = core_event(ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "frontend-6b7c9d8f5", "controller": True},
    ])
    obj["involvedObject"]["name"] = "some-unusual-name"

    event = parse_event(obj)

    assert (event.workload_kind, event.workload) == ("Deployment", "frontend")


def test_owner_references_beat_the_name_heuristic():
    # 'cache-primary-x' would otherwise not be recognised at all; 'db-0' would be StatefulSet db.
    owners = [{"kind": "StatefulSet", "name": "postgres", "controller": True}]

    assert owning_workload("Pod", "db-0", owners) == ("StatefulSet", "postgres")
    assert owning_workload("Pod", "cache-primary-x", [{"kind": "Job", "name": "cache-warm"}]) == (
        "Job", "cache-warm")


def test_non_controller_owner_is_ignored():
    owners = [{"kind": "ConfigMap", "name": "x", "controller": False}]

    assert owning_workload("Pod", "web-7d9f8c6b5-x2x4k", owners) == ("Deployment", "web")


def test_envelope_owner_references():
    event = parse_event({"reason": "BackOff", "name": "odd-name", "namespace": "ns",
                         "owner_references": [{"kind": "DaemonSet", "name": "node-exporter"}]})

    assert (event.workload_kind, event.workload) == ("DaemonSet", "node-exporter")


def test_non_pod_object_is_its_own_workload():
    assert owning_workload("Deployment", "web") == ("Deployment", "web")


# ----------------------------------------------------------------------------- read_stream


def test_read_stream_expands_a_kubectl_event_list():
    data = (FIXTURES / "real-minikube-eventlist.json").read_bytes()

    items = list(read_stream(data))
    events = [parse_event(obj) for _, obj in items]

    assert len(events) == 95
    assert all(isinstance(e, Event) for e in events)
    warnings = sorted(e.reason for e in events if e.type == "Warning")
    assert warnings == ["FailedScheduling"] * 2 + ["Unhealthy"] * 4
    redis = next(e for e in events if e.reason == "FailedScheduling" and e.name == "redis-0")
    assert (redis.workload_kind, redis.workload) == ("StatefulSet", "redis")
    coredns = next(e for e in events if e.name == "coredns-6f6b679f8f-5m7kq" and e.reason == "Started")
    assert (coredns.workload_kind, coredns.workload, coredns.node) == ("Deployment", "coredns", "minikube")
    assert coredns.container == "coredns"


def test_read_stream_json_array():
    items = list(read_stream(orjson.dumps([core_event(), core_event(reason="Pulled")])))

    assert [obj["reason"] for _, obj in items] == ["BackOff", "Pulled"]


def test_read_stream_single_pretty_printed_event():
    items = list(read_stream((FIXTURES / "core-v1-backoff.json").read_bytes()))

    assert len(items) == 1
    assert parse_event(items[0][1]).reason == "BackOff"


def test_read_stream_json_lines_with_a_broken_line():
    lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
    data = b"\n".join([lines[0], b'{"type": "ADDED", "object": {broken', b"", lines[1]]) + b"\n"

    items = list(read_stream(data))

    assert [number for number, _ in items] == [1, 2, 4]
    assert isinstance(items[1][1], MalformedEvent)
    assert "line 2" in str(items[1][1])
    assert parse_event(items[0][1]).event_uid == "e1"
    assert parse_event(items[2][1]).event_uid == "e2"


def test_read_stream_json_lines_with_a_broken_first_line():
    lines = (FIXTURES / "watch-stream.jsonl").read_bytes().splitlines()
    data = b'{"type": "ADDED", "obj\n' + lines[0] + b"\n"

    items = list(read_stream(data))

    assert [number for number, _ in items] == [1, 2]
    assert isinstance(items[0][1], MalformedEvent)
    assert parse_event(items[1][1]).event_uid == "e1"


def test_read_stream_whole_watch_stream():
    items = list(read_stream((FIXTURES / "watch-stream.jsonl").read_bytes()))

    assert [number for number, _ in items] == [1, 2, 3, 4, 5, 6, 7]
    assert all(isinstance(obj, dict) for _, obj in items)


def test_read_stream_expands_a_compact_one_line_list():
    data = orjson.dumps({"kind": "EventList", "apiVersion": "v1",
                         "items": [core_event(), core_event(reason="Pulled")]})

    items = list(read_stream(data))

    assert [obj.get("reason") for _, obj in items] == ["BackOff", "Pulled"]


# ----------------------------------------------------------------------------- OccurrenceTracker


def test_tracker_counts_the_watch_stream():
    tracker = OccurrenceTracker()
    events = [parse_event(line) for line in watch_lines()]

    accepted = [tracker.observe(e) for e in events]

    assert accepted == [True, True, True, False, True, True, True]
    # e1 first seen with count 1, e2 count 1, then e1 patched to 3: two more occurrences.
    assert [e.count for e in events[:3]] == [1, 1, 2]
    assert events[2].total_count == 3
    assert sum(e.count for e, ok in zip(events, accepted, strict=True) if ok) == 7


def test_tracker_counts_the_delta_of_a_higher_count():
    tracker = OccurrenceTracker()
    first = parse_event(load("core-v1-backoff.json"))
    later_obj = load("core-v1-backoff.json")
    later_obj["count"] = 30
    later_obj["metadata"]["resourceVersion"] = "990000"
    later = parse_event(later_obj)

    assert tracker.observe(first) is True
    assert first.count == 23
    assert tracker.observe(later) is True
    assert later.count == 7


def test_tracker_rejects_a_stale_lower_count():
    tracker = OccurrenceTracker()
    high = parse_event(core_event(count=5))
    low = parse_event(core_event(count=3))

    assert tracker.observe(high) is True
    assert tracker.observe(low) is False


def test_tracker_keeps_distinct_event_objects_apart():
    tracker = OccurrenceTracker()
    a = parse_event(core_event(count=4))
    b_obj = core_event(count=4)
    b_obj["metadata"] = {**b_obj["metadata"], "uid": "ev-2"}
    b = parse_event(b_obj)

    assert tracker.observe(a) is True
    assert tracker.observe(b) is True
    assert (a.count, b.count) == (4, 4)


def test_tracker_learns_pod_node_from_scheduled_message():
    tracker = OccurrenceTracker()
    scheduled = {
        "kind": "Event",
        "metadata": {"name": "db-0.0", "namespace": "data", "uid": "e0"},
        "involvedObject": {"kind": "Pod", "name": "db-0", "namespace": "data", "uid": "p4"},
        "reason": "Scheduled",
        "message": "Successfully assigned data/db-0 to node-3",
        "source": {"component": "default-scheduler"},
        "firstTimestamp": "2026-11-20T09:00:00Z",
        "count": 1,
        "type": "Normal",
    }
    not_ready = parse_event(watch_lines()[5])  # db-0 (uid p4), no source.host
    assert not_ready.node is None

    tracker.observe(parse_event(scheduled))
    tracker.observe(not_ready)

    assert not_ready.node == "node-3"


def test_tracker_learns_pod_node_from_source_host():
    tracker = OccurrenceTracker()
    with_host = parse_event(core_event())
    without_obj = core_event(reason="Killing", source={"component": "taint-controller"})
    without_obj["metadata"] = {**without_obj["metadata"], "uid": "ev-9"}
    without_host = parse_event(without_obj)

    tracker.observe(with_host)
    tracker.observe(without_host)

    assert without_host.node == "node-1"


def test_tracker_does_not_give_a_node_to_another_pod():
    tracker = OccurrenceTracker()
    tracker.observe(parse_event(core_event()))
    other_obj = core_event(source={"component": "taint-controller"})
    other_obj["involvedObject"] = {**other_obj["involvedObject"], "uid": "pod-2"}
    other_obj["metadata"] = {**other_obj["metadata"], "uid": "ev-3"}
    other = parse_event(other_obj)

    tracker.observe(other)

    assert other.node is None


def test_tracker_rejects_a_redelivered_envelope():
    tracker = OccurrenceTracker()
    envelope = load("agent-manager-envelope.json")

    first = parse_event(envelope)
    again = parse_event(copy.deepcopy(envelope))

    assert tracker.observe(first) is True
    assert first.count == 23
    assert tracker.observe(again) is False


def test_tracker_is_bounded_and_forgets_the_oldest():
    tracker = OccurrenceTracker(max_entries=2)
    objs = []
    for uid in ("a", "b", "c"):
        obj = core_event(count=2)
        obj["metadata"] = {**obj["metadata"], "uid": uid}
        objs.append(obj)
    for obj in objs:
        assert tracker.observe(parse_event(obj)) is True

    # 'c' and 'b' are remembered; 'a' was forgotten and counts again.
    assert tracker.observe(parse_event(objs[2])) is False
    assert tracker.observe(parse_event(objs[1])) is False
    assert tracker.observe(parse_event(objs[0])) is True


# ----------------------------------------------------------------------------- malformed input


def _without_involved_object() -> dict:
    obj = core_event()
    del obj["involvedObject"]
    return obj


def _involved_object_without_name() -> dict:
    obj = core_event()
    del obj["involvedObject"]["name"]
    return obj


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        pytest.param(_without_involved_object(), r"involvedObject is missing", id="no-involvedObject"),
        pytest.param(_involved_object_without_name(), r"involvedObject\.name is missing", id="no-name"),
        pytest.param(core_event(reason=None), r"Event\.reason is missing", id="no-reason"),
        pytest.param(core_event(count="3"), r"Event\.count must be an integer, got str", id="count-str"),
        pytest.param(core_event(count=2.5), r"Event\.count must be an integer, got float", id="count-float"),
        pytest.param(core_event(count=True), r"Event\.count must be an integer, got bool", id="count-bool"),
        pytest.param(core_event(count=-1), r"Event\.count must not be negative", id="count-negative"),
        pytest.param(core_event(firstTimestamp="yesterday"),
                     r"Event\.firstTimestamp: not an RFC 3339 time: 'yesterday'", id="bad-first"),
        pytest.param(core_event(lastTimestamp="2026-13-45T99:00:00Z"), r"Event\.lastTimestamp",
                     id="bad-last"),
        pytest.param(core_event(firstTimestamp=["2026-11-20T10:00:00Z"]),
                     r"Event\.firstTimestamp: expected an RFC 3339 time, got list", id="time-list"),
        pytest.param(core_event(source="kubelet"), r"Event\.source must be an object", id="source-str"),
        pytest.param(core_event(metadata="web.1"), r"Event\.metadata must be an object", id="metadata-str"),
        pytest.param({"kind": "Pod", "metadata": {"name": "web"}}, r"unknown kind 'Pod'", id="unknown-kind"),
        pytest.param({"hello": "world"}, r"not an event", id="not-an-event"),
        pytest.param({"reason": "BackOff", "name": 42}, r"envelope\.name must be a string", id="env-name"),
        pytest.param({"reason": "BackOff", "name": "x", "count": "many"},
                     r"envelope\.count must be an integer", id="env-count"),
        pytest.param({"reason": "BackOff", "name": "x", "labels": ["a"]},
                     r"envelope\.labels must be an object", id="env-labels"),
        pytest.param({"reason": "BackOff", "name": "x", "first_seen": "soon"},
                     r"envelope\.first_seen: not an RFC 3339 time", id="env-time"),
    ],
)
def test_malformed_event_names_the_field(obj, pattern):
    with pytest.raises(MalformedEvent, match=pattern):
        parse_event(obj)


def test_new_api_non_integer_series_count_is_named():
    obj = load("events-k8s-io-v1-unhealthy.json")
    obj["series"]["count"] = "7"

    with pytest.raises(MalformedEvent, match=r"Event\.series\.count must be an integer"):
        parse_event(obj)


def test_new_api_missing_regarding_is_named():
    obj = load("events-k8s-io-v1-unhealthy.json")
    del obj["regarding"]

    with pytest.raises(MalformedEvent, match=r"Event\.regarding is missing"):
        parse_event(obj)


def test_new_api_bad_event_time_names_event_time():
    obj = load("events-k8s-io-v1-unhealthy.json")
    for key in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "series"):
        del obj[key]
    obj["eventTime"] = "not-a-time"

    with pytest.raises(MalformedEvent, match=r"eventTime"):
        parse_event(obj)


@pytest.mark.parametrize("value", [[], "text", 42, None])
def test_parse_event_requires_an_object(value):
    with pytest.raises(MalformedEvent, match=r"expected a JSON object, got"):
        parse_event(value)


def test_malformed_event_has_a_default_message():
    assert str(MalformedEvent()) == "The input is not an event this orchestrator understands."


# ----------------------------------------------------------------------------- decode


def test_decode_reads_json():
    raw = (FIXTURES / "core-v1-backoff.json").read_bytes()

    assert parse_event(decode(raw)).reason == "BackOff"
    assert decode(raw.decode()) == decode(raw)


def test_decode_accepts_exactly_max_bytes():
    raw = b"{}" + b" " * (MAX_EVENT_BYTES - 2)

    assert decode(raw) == {}


def test_decode_refuses_a_payload_over_max_bytes():
    raw = b"{}" + b" " * (MAX_EVENT_BYTES - 1)

    with pytest.raises(MalformedEvent, match=rf"payload of {MAX_EVENT_BYTES + 1} bytes exceeds"):
        decode(raw)


def test_decode_refuses_a_str_payload_over_max_bytes():
    raw = '"' + "é" * (MAX_EVENT_BYTES // 2 + 8) + '"'  # about 1 MiB characters, 2 MiB bytes
    assert len(raw.encode()) > MAX_EVENT_BYTES

    with pytest.raises(MalformedEvent, match=r"exceeds"):
        decode(raw)


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"a": 1} trailing', "\x00"])
def test_decode_refuses_non_json(raw):
    with pytest.raises(MalformedEvent, match=r"not JSON"):
        decode(raw)
