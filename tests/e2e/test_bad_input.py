"""Bad input, with the service as a process.

The issue's test: 1,000 malformed messages (non-JSON, wrong types, 2 MB payloads, unknown
kinds) mixed into valid traffic. The service stays up, every malformed message is a dead
letter, and every valid one is processed.

Where the malformed messages go, and what each must produce:

- **NATS** (940 messages): every kind of malformed payload, each with its own
  ``Nats-Msg-Id`` (JetStream would drop a repeated id as a duplicate before the service
  saw it). Each is delivered and must become exactly one dead letter. "Oversized" here
  means over the service's ``intake.max_event_bytes`` (256 KiB by default): 300 KB
  payloads. A 2 MB payload cannot go over NATS at all: the server's ``max_payload``
  (1 MB by default) refuses it at publish, so the service never sees it and it produces
  nothing (checked once below, and not counted).
- **HTTP** ``POST /api/v1/events`` (60 malformed items), where the 2 MB payloads go:

  ========================================  ==========  ============================
  body                                      answer      dead letters
  ========================================  ==========  ============================
  2 MB of non-JSON text / invalid UTF-8     400         1 (over max_event_bytes)
  2 MB NDJSON line                          202         1 per line (over the limit)
  small non-JSON body                       400         1
  JSON array of valid + malformed events    202         1 per malformed element
  NDJSON of valid + malformed lines         202         1 per malformed line
  ========================================  ==========  ============================

  A 2 MB body that *is* a JSON event is a dead letter too (over max_event_bytes); see
  ``test_a_2mb_json_event_over_http_is_refused``.

So dead letters = 940 + 60 = 1,000 = the malformed messages delivered to the service.

Some wrong types once stopped the service (or wedged an incident): a non-string namespace
or metadata.uid, a NUL character, an out-of-range numeric timestamp. Each has a test of
its own below: one such message in a batch of valid ones is a dead letter, the rest goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.errors import MaxPayloadError

from tests.e2e.harness import ServiceProcess
from tests.e2e.harness import sql as _sql

FINAL_STATES = {"attached", "suppressed", "inhibited", "unmatched", "duplicate"}
NDJSON = {"content-type": "application/x-ndjson"}
JSON = {"content-type": "application/json"}
TWO_MB = 2 * 1024 * 1024
KEPT = 64 * 1024   # what a dead letter keeps of its raw bytes (intake.dead_letter_bytes)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ valid events


def core_v1(uid: str, namespace: str, workload: str, reason: str = "BackOff",
            message: str = "Back-off restarting failed container app in pod", kind: str = "Pod") -> dict:
    pod = f"{workload}-6b7c9d8f5-{uid[-5:].rjust(5, '0')}"
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.{uid}", "namespace": namespace, "uid": uid, "resourceVersion": "1"},
        "involvedObject": {"kind": kind, "name": pod, "namespace": namespace, "uid": f"pod-{uid}"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": _now(), "lastTimestamp": _now(),
        "source": {"component": "kubelet", "host": "node-1"},
    }


def events_v1(uid: str, namespace: str, workload: str) -> dict:
    pod = f"{workload}-5c8d7b9f4-{uid[-5:].rjust(5, '0')}"
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{pod}.{uid}", "namespace": namespace, "uid": uid},
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "reportingController": "kubelet", "reportingInstance": "node-2", "action": "Killing",
        "reason": "Unhealthy", "regarding": {"kind": "Pod", "namespace": namespace, "name": pod,
                                             "uid": f"pod-{uid}", "fieldPath": "spec.containers{api}"},
        "note": "Liveness probe failed: context deadline exceeded", "type": "Warning",
        "series": {"count": 3, "lastObservedTime": datetime.now(UTC).isoformat().replace("+00:00", "Z")},
    }


def envelope(ident: str, namespace: str, workload: str) -> dict:
    return {"id": ident, "source": "agent-manager", "severity": "high", "reason": "CrashLoopBackOff",
            "message": "Back-off restarting failed container", "namespace": namespace, "kind": "Pod",
            "name": f"{workload}-7d9f8c6b5-{ident[-5:].rjust(5, '0')}", "count": 1,
            "first_seen": _now(), "last_seen": _now()}


def valid_event(i: int) -> dict:
    """Valid traffic of several shapes and outcomes (incidents, and unmatched events)."""
    uid = f"valid-{i:05d}"
    shape, w = i % 10, i // 10
    if shape < 6:
        return core_v1(uid, "shop", f"web{w % 30}")
    if shape == 6:
        return events_v1(uid, "payments", f"api{w % 10}")
    if shape == 7:
        return envelope(uid, "checkout", f"cart{w % 10}")
    if shape == 8:
        return {"type": "ADDED", "object": core_v1(uid, "blog", f"blog{w % 10}")}
    return core_v1(uid, "batch", f"job{w % 10}", reason="Pulled", message="Successfully pulled image")


# ------------------------------------------------------------------ malformed payloads


def _event_bytes(**changes: Any) -> bytes:
    event = core_v1("m-00000", "bad", "bad")
    for path, value in changes.items():
        target = event
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        if value is _DROP:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return orjson.dumps(event)


_DROP = object()
_GOOD = orjson.dumps(core_v1("m-00000", "bad", "bad"))

# Each (label, payload); every one must become a dead letter, whatever path it takes.
MALFORMED: list[tuple[str, bytes]] = [
    # not JSON at all
    ("text", b"hello, this is not JSON"),
    ("binary", bytes(range(256))),
    ("empty", b""),
    ("whitespace", b"   \n\t "),
    ("yaml", b"kind: Event\nreason: BackOff\n"),
    ("truncated", _GOOD[: len(_GOOD) // 2]),
    ("truncated-end", _GOOD[:-1]),
    ("two-documents", _GOOD + b" " + _GOOD),
    ("invalid-utf8", b'{"kind": "Event", "reason": "Back\xff\xfeOff"}'),
    ("lone-surrogate", b'{"kind": "Event", "reason": "\\ud800"}'),
    ("nan", b'{"kind": "Event", "count": NaN}'),
    # JSON, but not an object
    ("list", b"[1, 2, 3]"),
    ("number", b"42"),
    ("string", b'"BackOff"'),
    ("null", b"null"),
    ("bool", b"true"),
    # objects with wrong types
    ("count-string", _event_bytes(count="abc")),
    ("count-negative", _event_bytes(count=-3)),
    ("count-bool", _event_bytes(count=True)),
    ("count-float", _event_bytes(count=1.5)),
    ("reason-number", _event_bytes(reason=5)),
    ("message-object", _event_bytes(message={"text": "x"})),
    ("involved-string", _event_bytes(involvedObject="pod/web")),
    ("involved-name-number", _event_bytes(involvedObject__name=7)),
    ("metadata-string", _event_bytes(metadata="x")),
    ("source-string", _event_bytes(source="kubelet")),
    ("time-garbage", _event_bytes(firstTimestamp="yesterday")),
    ("time-bool", _event_bytes(lastTimestamp=True)),
    ("series-count-string", _event_bytes(series={"count": "many"})),
    ("envelope-namespace-number", orjson.dumps({"reason": "CrashLoopBackOff", "name": "x", "namespace": 3})),
    ("envelope-labels-list", orjson.dumps({"reason": "CrashLoopBackOff", "name": "x", "labels": ["a"]})),
    ("envelope-id-object", orjson.dumps({"reason": "CrashLoopBackOff", "name": "x", "id": {"a": 1}})),
    # missing what makes an event
    ("no-involved-object", _event_bytes(involvedObject=_DROP)),
    ("no-reason", _event_bytes(reason=_DROP)),
    ("no-object-kind", _event_bytes(involvedObject__kind=_DROP)),
    ("no-object-name", _event_bytes(involvedObject__name=_DROP)),
    ("empty-object", b"{}"),
    ("not-an-event", b'{"hello": "world"}'),
    # unknown kinds
    ("kind-pod", b'{"kind": "Pod", "metadata": {"name": "web"}}'),
    ("kind-deployment", b'{"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}'),
    ("kind-status", b'{"kind": "Status", "status": "Failure", "message": "gone"}'),
    # watch ERROR lines (kubectl get events -w after a compaction)
    ("watch-error", b'{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", '
                    b'"status": "Failure", "message": "too old resource version: 123 (456)", '
                    b'"reason": "Expired", "code": 410}}'),
    ("watch-error-gone", b'{"type": "ERROR", "object": {"kind": "Status", "code": 410}}'),
]


def oversized(n: int) -> bytes:
    """Over max_event_bytes (256 KiB) and under NATS' max_payload (1 MB): ~300 KB."""
    if n % 2:
        return b"x" * 300_000 + str(n).encode()
    return _event_bytes(message="Back-off restarting failed container " + "y" * 300_000 + str(n))


# ------------------------------------------------------------------ the service


@pytest.fixture
def service(tmp_path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix):
    proc = ServiceProcess(tmp_path, pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                          nats_url=nats_url, nats_prefix=nats_prefix)
    proc.start()
    yield proc
    proc.stop()


async def _publish_mixed(url: str, subject: str, items: list[tuple[str, bytes]]) -> list[Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    acks: list[Any] = []
    try:
        for start in range(0, len(items), 200):
            chunk = items[start:start + 200]
            acks.extend(await asyncio.gather(*[
                js.publish(subject, data, headers={"Nats-Msg-Id": mid}) for mid, data in chunk],
                return_exceptions=True))
    finally:
        await nc.close()
    return acks


async def _publish_2mb(url: str, subject: str) -> BaseException | None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, b"z" * TWO_MB, headers={"Nats-Msg-Id": "too-big-for-nats"})
    except Exception as exc:
        return exc
    finally:
        await nc.close()
    return None


def test_malformed_messages_are_dead_letters_and_valid_ones_are_processed(service: ServiceProcess, pg_dsn):
    rng = random.Random(20261127)

    # -------------------------------------------------------------- NATS: 2,000 valid, 940 malformed
    valid_nats = [(f"valid-{i:05d}", orjson.dumps(valid_event(i))) for i in range(1700)]
    bad_nats: list[tuple[str, bytes]] = []
    for n in range(920):
        label, payload = MALFORMED[n % len(MALFORMED)]
        bad_nats.append((f"bad-{n:04d}-{label}", payload))
    bad_nats += [(f"bad-{920 + n:04d}-oversized", oversized(n)) for n in range(20)]
    mixed = valid_nats + bad_nats
    rng.shuffle(mixed)

    # -------------------------------------------------------------- HTTP: 300 valid, 60 malformed
    http_valid_events = [valid_event(i) for i in range(1700, 2000)]
    http_bad_bytes: list[bytes] = []      # malformed items that reach the intake as raw bytes
    http_bad_values = 0                   # malformed elements of JSON arrays (decoded values)
    requests: list[tuple[bytes, dict, int, dict]] = []   # (body, headers, status, expected counts)

    big_text = b"not json " * (TWO_MB // 9)
    big_utf8 = b"\xff\xfe" * (TWO_MB // 2)
    big_line = _event_bytes(message="Back-off restarting failed container " + "z" * TWO_MB)
    for body in (big_text, big_text + b"!", big_text + b"?", big_utf8, big_utf8 + b"\xff"):
        requests.append((body, JSON, 400, {"dead_letters": 1}))
        http_bad_bytes.append(body)
    for n in range(3):
        line = big_line + b" " * n
        requests.append((line, NDJSON, 202, {"accepted": 0, "dead_letters": 1}))
        http_bad_bytes.append(line)
    for label in ("text", "truncated", "yaml", "invalid-utf8", "empty-body"):
        body = b"" if label == "empty-body" else dict(MALFORMED)[label]
        requests.append((body, JSON, 400, {"dead_letters": 1}))
        http_bad_bytes.append(body)
    chunks = [http_valid_events[k:k + 50] for k in range(0, 300, 50)]
    array_bad = [42, None, [1], {}, {"kind": "Pod"}, {"kind": "Event", "reason": "BackOff"},
                 orjson.loads(_event_bytes(count="abc")), orjson.loads(_event_bytes(involvedObject="x")),
                 orjson.loads(MALFORMED[-2][1]), {"reason": "X", "name": "y", "labels": [1]}]
    for chunk in chunks[:2]:
        items = [*chunk, *array_bad]
        rng.shuffle(items)
        requests.append((orjson.dumps(items), JSON, 202, {"accepted": 50, "dead_letters": len(array_bad)}))
        http_bad_values += len(array_bad)
    ndjson_bad = [label for label, payload in MALFORMED[:40]
                  if payload.strip() and not set(payload) & set(b"\r\n") and label != "two-documents"][:9]
    for chunk in chunks[2:5]:
        lines = [orjson.dumps(e) for e in chunk] + [dict(MALFORMED)[label] for label in ndjson_bad]
        rng.shuffle(lines)
        requests.append((b"\n".join(lines) + b"\n", NDJSON, 202,
                         {"accepted": 50, "dead_letters": len(ndjson_bad)}))
        http_bad_bytes += [dict(MALFORMED)[label] for label in ndjson_bad]
    # The last 50 valid ones one at a time.
    for event in chunks[5]:
        requests.append((orjson.dumps(event), JSON, 202, {"accepted": 1, "dead_letters": 0}))
    http_malformed = len(http_bad_bytes) + http_bad_values
    assert http_malformed == 60 and len(bad_nats) == 940
    expected_dead = len(bad_nats) + http_malformed
    assert expected_dead == 1000 and len(valid_nats) + len(http_valid_events) == 2000
    rng.shuffle(requests)

    # -------------------------------------------------------------- send, interleaved
    nats_chunks = [mixed[k:k + 300] for k in range(0, len(mixed), 300)]
    per_chunk = -(-len(requests) // len(nats_chunks))
    acks: list[Any] = []
    answers: list[tuple[httpx.Response, int, dict]] = []
    with service.client(timeout=30) as client:
        for k, chunk in enumerate(nats_chunks):
            acks += asyncio.run(_publish_mixed(service.nats_url, service.subjects[k % 2], chunk))
            for body, headers, status, counts in requests[k * per_chunk:(k + 1) * per_chunk]:
                answers.append((client.post("/api/v1/events", content=body, headers=headers), status, counts))
        # NATS itself refuses 2 MB: nothing reaches the service, nothing is counted.
        refused = asyncio.run(_publish_2mb(service.nats_url, service.subjects[0]))
        assert isinstance(refused, MaxPayloadError), refused

        failed = [a for a in acks if isinstance(a, BaseException) or getattr(a, "duplicate", False)]
        assert not failed, failed[:5]
        for response, status, counts in answers:
            assert response.status_code == status, (response.status_code, response.text[:300])
            body = response.json()
            for key, value in counts.items():
                assert body[key] == value, (key, body)
            if status == 400:
                assert "dead letter" in body["detail"], body

        # ---------------------------------------------------------- everything arrives
        valid_ids = [mid for mid, _ in valid_nats] + [
            e["id"] if "id" in e else f"{(e.get('object') or e)['metadata']['uid']}@"
            f"{(e.get('object') or e)['metadata'].get('resourceVersion') or 3}" for e in http_valid_events]
        assert len(set(valid_ids)) == 2000

        def arrived() -> bool:
            dead = _sql(pg_dsn, "SELECT count(*) AS n FROM dead_letters")[0]["n"]
            rows = _sql(pg_dsn, "SELECT state, count(*) AS n FROM events WHERE id = ANY($1::text[]) "
                                "GROUP BY state", valid_ids)
            return dead >= expected_dead and sum(r["n"] for r in rows) == 2000 and all(
                r["state"] in FINAL_STATES for r in rows)

        service.wait_for(arrived, timeout=45, interval=0.5)

        # ---------------------------------------------------------- the service is up
        assert service.proc is not None and service.proc.poll() is None
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text

        # ---------------------------------------------------------- every malformed one is a dead letter
        dead = _sql(pg_dsn, "SELECT source, subject, reason, raw, headers, raw_size, raw_sha256 "
                            "FROM dead_letters")
        assert len(dead) == expected_dead
        assert all(d["reason"] and d["reason"].strip() for d in dead)
        assert not [d["reason"] for d in dead if d["reason"].startswith("internal error")]
        assert all(d["raw"] is not None for d in dead)
        from_nats = [d for d in dead if d["source"] == "nats"]
        from_http = [d for d in dead if d["source"] == "http"]
        assert len(from_nats) == len(bad_nats) and len(from_http) == http_malformed
        # Each NATS one is the very message: its id, its subject, its bytes (at most the first
        # 64 KiB of them, with the size and SHA-256 of all).
        sent = {mid: data for mid, data in bad_nats}
        got = {orjson.loads(d["headers"])["Nats-Msg-Id"]: d for d in from_nats}
        assert set(got) == set(sent)
        assert all(bytes(got[mid]["raw"]) == sent[mid][:KEPT] for mid in sent)
        assert all((got[mid]["raw_size"], got[mid]["raw_sha256"]) == (len(sent[mid]), _sha256(sent[mid]))
                   for mid in sent)
        assert {d["subject"] for d in from_nats} <= set(service.subjects)
        oversize = [d for mid, d in got.items() if mid.endswith("-oversized")]
        assert all(re.match(r"payload of \d+ bytes exceeds 262144", d["reason"]) for d in oversize), oversize
        # HTTP bodies and lines are kept as sent (their first 64 KiB, size and digest); array
        # elements as what was decoded.
        raw_http = Counter((bytes(d["raw"]), d["raw_size"], d["raw_sha256"]) for d in from_http)
        assert not Counter((b[:KEPT], len(b), _sha256(b)) for b in http_bad_bytes) - raw_http
        big = [d for d in from_http if d["raw_size"] > 2_000_000]
        assert len(big) == 8 and all(len(bytes(d["raw"])) == KEPT for d in big)
        # The reasons say what is wrong.
        reasons = {mid.split("-", 2)[2]: got[mid]["reason"] for mid in got}
        assert reasons["count-string"] == "Event.count must be an integer, got str"
        assert reasons["no-involved-object"] == "Event.involvedObject is missing or not an object"
        assert reasons["kind-deployment"].startswith("unknown kind 'Deployment'")
        assert reasons["watch-error"].startswith("watch ERROR: too old resource version")
        assert reasons["list"] == "expected a JSON object, got list"
        assert reasons["text"].startswith("not JSON")

        # ---------------------------------------------------------- every valid one is processed
        rows = _sql(pg_dsn, "SELECT id, state, strategy_id FROM events WHERE id = ANY($1::text[])", valid_ids)
        assert len(rows) == 2000 and not [r for r in rows if r["state"] not in FINAL_STATES]
        states = Counter(r["state"] for r in rows)
        assert states["unmatched"] == 200, states          # the Pulled events, by design
        strategies = Counter(r["strategy_id"] for r in rows)
        assert strategies["pod_crashloop"] >= 1200 and strategies["probe_failures"] == 200, strategies
        incidents = _sql(pg_dsn, "SELECT strategy_id, key FROM incidents")
        assert {"shop/web0", "checkout/cart0", "blog/blog0", "payments/api0"} <= {i["key"] for i in incidents}
        # No malformed message became an event.
        assert _sql(pg_dsn, "SELECT count(*) AS n FROM events WHERE id LIKE 'bad-%'")[0]["n"] == 0
        assert _sql(pg_dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 2000

        # ---------------------------------------------------------- the metric agrees
        metrics = client.get("/metrics").text
        counted = {m[0]: float(m[1]) for m in re.findall(
            r'^aetherius_dead_letters_total\{source="(\w+)"\} ([0-9.e+]+)$', metrics, re.M)}
        assert counted == {"nats": float(len(from_nats)), "http": float(len(from_http))}, counted
        assert sum(counted.values()) == len(dead)

    # ---------------------------------------------------------- and it still stops cleanly
    assert service.stop() == 0
    assert "Aetherius Orchestrator stopped" in Path(service.log_path).read_text()


# ------------------------------------------------------------------ poison messages


def test_a_2mb_json_event_over_http_is_refused(service: ServiceProcess, pg_dsn):
    body = _event_bytes(message="Back-off restarting failed container " + "z" * TWO_MB)
    response = httpx.post(f"{service.url}/api/v1/events", content=body, headers={**JSON, **service.headers},
                          timeout=30)
    # Refused outright (413), or taken in and recorded as a dead letter (202 saying so).
    assert response.status_code in (202, 400, 413), (response.status_code, response.text)
    dead = _sql(pg_dsn, "SELECT count(*) AS n FROM dead_letters")[0]["n"]
    if response.status_code == 202:
        assert response.json()["dead_letters"] == 1 and response.json()["accepted"] == 0
    assert dead == (0 if response.status_code == 413 else 1)
    assert _sql(pg_dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 0


# Wrong types and values that once got past parse_event and took the service down.
POISON = [
    pytest.param(_event_bytes(involvedObject__namespace=5), id="namespace-number"),
    pytest.param(_event_bytes(involvedObject__namespace={"x": 1}), id="namespace-object"),
    pytest.param(_event_bytes(metadata__uid={"a": 1}), id="uid-object"),
    pytest.param(_event_bytes(message="Back-off restarting failed container\u0000"), id="nul-in-message"),
    pytest.param(_event_bytes(firstTimestamp=1e300, lastTimestamp=1e300), id="time-out-of-range"),
]


@pytest.mark.parametrize("payload", POISON)
def test_a_wrong_typed_field_is_a_dead_letter_and_the_batch_goes_on(service: ServiceProcess, pg_dsn,
                                                                     payload: bytes):
    """One malformed message among valid ones, in one batch, on the same workload."""
    valid = [orjson.dumps(core_v1(f"ok-{n:05d}", "bad", "bad")) for n in range(4)]
    acks = service.publish([valid[0], valid[1], payload, valid[2], valid[3]],
                           msg_ids=["ok-0", "ok-1", "poison", "ok-2", "ok-3"])
    assert not [a for a in acks if isinstance(a, BaseException)]

    def done() -> bool:
        assert service.proc is not None and service.proc.poll() is None, (
            f"the service exited:\n{service.log()[-2500:]}")
        rows = _sql(pg_dsn, "SELECT id, state FROM events")
        dead = _sql(pg_dsn, "SELECT headers FROM dead_letters")
        return len(dead) == 1 and len(rows) == 4 and all(r["state"] in FINAL_STATES for r in rows)

    service.wait_for(done, timeout=8, interval=0.25)
    dead = _sql(pg_dsn, "SELECT reason, raw, headers FROM dead_letters")
    assert orjson.loads(dead[0]["headers"])["Nats-Msg-Id"] == "poison" and bytes(dead[0]["raw"]) == payload
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
