"""A seeded, mixed event stream for differential tests of the intake's fast paths.

Every shape intake accepts, in the proportions a busy cluster shows them (crash-looping pods
patched again and again, nodes going NotReady and back, OOM kills followed by back-offs,
events.k8s.io/v1 events, Pods, agent-manager envelopes), interleaved with exact duplicates,
relists (a lower count), and malformed or odd records of every kind intake must dead-letter
or read with care. ``lines(seed)`` gives the same JSON lines for the same seed.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

T0 = 1_795_000_000.0


def iso(t: float, fraction: bool = False) -> str:
    text = datetime.fromtimestamp(t, UTC).isoformat()
    if not fraction:
        text = text.split(".")[0] + ("" if "+" in text.split(".")[0] else "+00:00")
    return text.replace("+00:00", "Z")


def core_event(*, uid: str | None, kind: str, name: str, namespace: str | None, reason: str, message: str,
               count: int | None, first: float, last: float | None, host: str | None = None,
               component: str | None = "kubelet", type_: str | None = "Warning", rv: int | None = None,
               field_path: str | None = None, series: dict | None = None,
               owners: list | None = None) -> dict[str, Any]:
    involved: dict[str, Any] = {"kind": kind, "name": name, "uid": f"uid-{name}"}
    if namespace is not None:
        involved["namespace"] = namespace
    if field_path is not None:
        involved["fieldPath"] = field_path
    meta: dict[str, Any] = {"name": f"{name}.{uid or 'x'}", "namespace": namespace or "default"}
    if uid is not None:
        meta["uid"] = uid
    if rv is not None:
        meta["resourceVersion"] = str(rv)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Event", "metadata": meta, "involvedObject": involved,
                           "reason": reason, "message": message, "firstTimestamp": iso(first)}
    if last is not None:
        obj["lastTimestamp"] = iso(last)
    if count is not None:
        obj["count"] = count
    if type_ is not None:
        obj["type"] = type_
    source: dict[str, Any] = {}
    if component is not None:
        source["component"] = component
    if host is not None:
        source["host"] = host
    obj["source"] = source
    if series is not None:
        obj["series"] = series
    if owners is not None:
        obj["ownerReferences"] = owners
    return obj


def watch(obj: dict, first_time: bool) -> dict:
    return {"type": "ADDED" if first_time else "MODIFIED", "object": obj}


def new_api_event(i: int, t: float, count: int) -> dict:
    pod = f"api-5c8d7b9f4-q{i:04d}"
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{pod}.17a3", "namespace": "payments", "uid": f"nev-{i}"},
        "eventTime": iso(t - 30, fraction=True), "reportingController": "kubelet",
        "reportingInstance": f"node-b{i % 3}", "reason": "Unhealthy",
        "regarding": {"kind": "Pod", "namespace": "payments", "name": pod, "uid": f"pod-{pod}",
                      "fieldPath": "spec.containers{api}"},
        "note": "Liveness probe failed: Get \"http://10.244.1.17:8080/healthz\": context deadline exceeded",
        "type": "Warning", "series": {"count": count, "lastObservedTime": iso(t, fraction=True)},
        "deprecatedSource": {"component": "kubelet", "host": f"node-b{i % 3}"},
        "deprecatedCount": count,
    }


def pod_status(i: int, t: float, restarts: int, reason: str = "OOMKilled") -> dict:
    name = f"worker-6d5f7c8b9-{i:05d}"
    return {"type": "MODIFIED" if restarts else "ADDED", "object": {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "jobs", "uid": f"pod-{name}",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "worker-6d5f7c8b9",
                                          "controller": True}]},
        "spec": {"nodeName": f"node-{i % 4}"},
        "status": {"startTime": iso(T0), "containerStatuses": [{
            "name": "worker", "restartCount": restarts,
            "lastState": {"terminated": {"reason": reason, "exitCode": 137, "finishedAt": iso(t)}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]}}}


def envelope(i: int, t: float, count: int) -> dict:
    return {"id": f"evt-{i}-{count}", "source": "agent-manager", "cluster": "prod-eu-1", "severity": "high",
            "reason": "CrashLoopBackOff", "message": "Back-off restarting failed container checkout",
            "namespace": "shop", "kind": "Pod", "name": f"checkout-7d9f8c6b5-x{i:04d}", "node": "node-a3",
            "count": count, "first_seen": iso(t - 60), "last_seen": iso(t), "labels": {"app": "checkout"}}


# Records intake must refuse (a dead letter each) or read with care; raw JSON text.
ODD: list[str] = [
    'not json at all',
    '{"type":"ADDED","object":{"kind":"Event","reason":"BackOff"',          # cut short
    '[1, 2, 3]',
    '"a string"',
    '42',
    'null',
    '{}',
    '{"kind":"Widget","name":"x"}',
    '{"type":"BOOKMARK","object":{"kind":"Event","metadata":{"resourceVersion":"12"}}}',
    '{"type":"ERROR","object":{"kind":"Status","message":"too old resource version: 1 (2)"}}',
    '{"type":"DELETED","object":{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"}}}',
    '{"type":"ADDED","object":"not an object"}',
    '{"type":"SOMETHING","object":{"kind":"Event"}}',
    '{"type":["ADDED"],"object":{"kind":"Event"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"ownerReferences":[{"kind":["R"],"name":"x"}]}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"web-abc"},"ownerReferences":[{"kind":"ReplicaSet","name":"web-7d9f8c6b5"}]}',
    '{"kind":"Event","reason":"BackOff","involvedObject":"pod/x"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod"}}',
    '{"kind":"Event","involvedObject":{"kind":"Pod","name":"x"}}',
    '{"kind":"Event","reason":7,"involvedObject":{"kind":"Pod","name":"x"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":["x"]}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":-1}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":"3"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":true}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":1.5}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":4294967296}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x","namespace":5}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x","uid":["u"]}}',
    '{"kind":"Event","reason":"BackOff","message":"nul \\u0000 here",'
    '"involvedObject":{"kind":"Pod","name":"x"}}',
    '{"kind":"Event","reason":"Back\\u0000Off","involvedObject":{"kind":"Pod","name":"x"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"type":3}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":"yesterday"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"firstTimestamp":12}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":1e300}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":"10000-01-01T00:00:00Z"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":"2026-11-20T10:00:00"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":"2026-11-20T10:00:00.5+02:00"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"lastTimestamp":true}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"source":"kubelet"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"source":{"component":5}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"source":{"host":["n"]}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"metadata":[]}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"metadata":{"uid":7}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"series":{"count":"x"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"series":[1]}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"message":{"a":1}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x","fieldPath":7}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"ownerReferences":"no"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"eventTime":"2026-11-20T10:00:00.123456Z"}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"reportingComponent":"kubelet","reportingInstance":"node-z"}',
    '{"apiVersion":"events.k8s.io/v1","kind":"Event","reason":"BackOff","regarding":{"kind":"Pod","name":"x"},"note":5}',
    '{"apiVersion":"events.k8s.io/v1","kind":"Event","reason":"BackOff","regarding":{"kind":"Pod","name":"x"},"deprecatedSource":"x"}',
    '{"apiVersion":"events.k8s.io/v1","kind":"Event","reason":"BackOff","regarding":{"kind":"Pod","name":"x"},"deprecatedCount":-3}',
    '{"kind":"Event","reason":"NodeNotReady","involvedObject":{"kind":"Node","name":"node-9","namespace":"ignored"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"web-abc","namespace":"a"},"metadata":{"namespace":"b"}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"web-abc"},"metadata":{"namespace":"b","name":""}}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x","namespace":""},"count":0}',
    '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":null,"type":null,"source":null}',
    '{"kind":"Event","reason":"BackOff","reason":"Killing","involvedObject":{"kind":"Pod","name":"dup-keys"}}',
    '{"kind":"Pod","metadata":{"name":"p"},"status":{"containerStatuses":"x"}}',
    '{"kind":"Pod","metadata":{"name":"p"},"status":{"containerStatuses":[{"name":"c","restartCount":-2}]}}',
    '{"kind":"Pod","metadata":{"name":"p"},"status":{"containerStatuses":[{"name":"c","state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}}',
    '{"reason":"CrashLoopBackOff","name":"x","labels":"no"}',
    '{"reason":"CrashLoopBackOff","name":"x","id":{"a":1}}',
    '{"reason":"CrashLoopBackOff","name":"x","container_statuses":[{"name":"c","restartCount":3,'
    '"lastState":{"terminated":{"reason":"OOMKilled","exitCode":137}}}]}',
    '\u00e9\u00e8 not json',
    '{"kind":"Event","reason":"BackOff","message":"caf\u00e9 \u2603 \\ud83d\\ude00",'
    '"involvedObject":{"kind":"Pod","name":"u-1"}}',
]


def lines(seed: int = 1, rounds: int = 6, pods: int = 40) -> list[str]:
    """The mixed stream as JSON lines, in time order (with the odd records spread through it)."""
    rng = random.Random(seed)
    out: list[tuple[float, int, str]] = []
    seq = 0

    def add(t: float, value: Any) -> None:
        nonlocal seq
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        out.append((t, seq, text))
        seq += 1

    counts: dict[str, int] = {}
    for r in range(rounds):
        base = T0 + r * 10.0
        for p in range(pods):
            ns = f"ns-{p % 5}"
            deploy = f"app-{p % 13:02d}"
            pod = f"{deploy}-7d9f8c6b5-{p:05d}"
            uid = f"ev-{p}"
            # A crash loop: the same Event object patched once a round (some rounds skipped).
            if rng.random() < 0.85:
                counts[uid] = counts.get(uid, 0) + rng.choice((1, 1, 1, 2, 5))
                obj = core_event(uid=uid, kind="Pod", name=pod, namespace=ns, reason="BackOff",
                                 message=f"Back-off restarting failed container app in pod {pod}_{ns}(p{p})",
                                 count=counts[uid], first=T0 + p * 0.01, last=base + p * 0.01,
                                 host=f"node-{p % 4}" if rng.random() < 0.9 else None, rv=1000 + r * 100 + p,
                                 field_path="spec.containers{app}" if p % 3 else None)
                line = watch(obj, counts[uid] == 1)
                add(base + p * 0.01, line)
                if rng.random() < 0.05:
                    add(base + p * 0.01, line)                          # duplicate delivery
                if rng.random() < 0.03 and counts[uid] > 2:             # a relist: a lower count
                    older = json.loads(json.dumps(line))
                    older["object"]["count"] = counts[uid] - 2
                    add(base + p * 0.01 + 0.001, older)
            # Image pulls: Normal BackOff "Back-off pulling image" and Warning Failed.
            if p % 7 == 0:
                add(base + 1, core_event(uid=f"img-{p}-{r}", kind="Pod", name=pod, namespace=ns,
                                         reason="BackOff" if r % 2 else "Failed",
                                         type_="Normal" if r % 2 else "Warning",
                                         message="Back-off pulling image \"x:1\"" if r % 2 else
                                         "Failed to pull image \"x:1\": rpc error", count=None,
                                         first=base + 1, last=None))
            if p % 11 == 0:
                add(base + 2, new_api_event(p, base + 2, r + 1))
            if p % 9 == 0:
                add(base + 3, pod_status(p, base + 3, r))
            if p % 10 == 0:
                add(base + 4, envelope(p, base + 4, r + 1))
        # A node goes NotReady for a while, and pods on it report too (inhibited).
        if r == 2:
            add(base + 5, core_event(uid="nnr-1", kind="Node", name="node-1", namespace=None,
                                     reason="NodeNotReady", message="Node node-1 status is now: NodeNotReady",
                                     count=1, first=base + 5, last=base + 5, type_="Normal",
                                     component="node-controller"))
        if r == 4:
            add(base + 6, core_event(uid="nr-1", kind="Node", name="node-1", namespace=None,
                                     reason="NodeReady", message="Node node-1 status is now: NodeReady",
                                     count=1, first=base + 6, last=base + 6, type_="Normal",
                                     component="kubelet"))
        # Other symptoms, with owners, series and eventTime-only events.
        add(base + 7, core_event(uid=f"fs-{r}", kind="Pod", name="batch-0", namespace="etl",
                                 reason="FailedScheduling",
                                 message="0/4 nodes are available: 4 Insufficient memory.", count=r + 1,
                                 first=base, last=None, type_="Warning", component="default-scheduler",
                                 series={"count": r + 1, "lastObservedTime": iso(base + 7, fraction=True)},
                                 owners=[{"kind": "Job", "name": "batch", "controller": True}]))
        add(base + 8, core_event(uid=f"job-{r}", kind="Job", name="nightly", namespace="etl",
                                 reason="BackoffLimitExceeded",
                                 message="Job has reached the specified backoff limit",
                                 count=1, first=base + 8, last=base + 8, component="job-controller"))
    for i, text in enumerate(ODD):
        add(T0 + 5 + i * 0.7, text)
    out.sort(key=lambda x: (x[0], x[1]))
    return [text for _, _, text in out]


def stream(seed: int = 1, **kwargs: Any) -> bytes:
    return ("\n".join(lines(seed, **kwargs)) + "\n").encode("utf-8")
