"""Intake: every accepted input shape becomes one :class:`Event`.

Accepted shapes:

- a core/v1 ``Event`` (``involvedObject``, ``count``, ``firstTimestamp`` ...);
- an events.k8s.io/v1 ``Event`` (``regarding``, ``note``, ``series``, ``deprecated*``);
- a watch line ``{"type": "ADDED|MODIFIED|DELETED", "object": <Event>}``;
- the agent-manager envelope (``reason``, ``severity``, ``namespace``, ``kind``, ``name`` ...),
  with the pod's container statuses if it carries them (``container_statuses``);
- a ``Pod`` (a watch line, a ``kubectl get pods -o json`` List item): its container states
  become events (:func:`pod_events`: OOMKilled, Error with its exit code, StartError,
  CrashLoopBackOff, ImagePullBackOff, CreateContainerConfigError ...), once per restart.

Kubernetes does not re-create a repeated event: it patches ``count`` and the last
timestamp. :class:`OccurrenceTracker` turns those patches into occurrences: a higher count
for the same Event object adds the difference, an exact repeat adds nothing.
Anything else raises :class:`~engine.exceptions.MalformedEvent` saying what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import orjson

from engine.bounded import RecentMap
from engine.exceptions import MalformedEvent

MAX_EVENT_BYTES = 1024 * 1024
MAX_COUNT = 2 ** 31 - 1   # Kubernetes' counts are int32; an incident's counters are too
# What the occurrence tracker keeps (README, *Memory bounds*): Event objects' last counts,
# for an hour (Kubernetes' own event TTL) and at most this many; pods' nodes likewise.
TRACKED_EVENTS = 100_000
TRACKED_PODS = 50_000
TRACKED_SECONDS = 3600.0

# A pod made by a Deployment is <deployment>-<replicaset hash>-<5 char suffix>;
# by a StatefulSet <name>-<ordinal>; by a DaemonSet or Job <name>-<5 char suffix>.
_RS_POD = re.compile(r"^(?P<base>.+)-(?P<hash>[0-9a-z]{6,10})-(?P<suffix>[0-9a-z]{5})$")
_ORDINAL_POD = re.compile(r"^(?P<base>.+)-(?P<ordinal>\d+)$")
_SUFFIX_POD = re.compile(r"^(?P<base>.+)-(?P<suffix>[0-9a-z]{5})$")
_CONTAINER = re.compile(r"spec\.(?:initContainers|containers|ephemeralContainers)\{([^}]+)\}")
_ASSIGNED = re.compile(r"^Successfully assigned (\S+)/(\S+) to (\S+)$")
_WATCH_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
_OWNER_KIND = {"ReplicaSet": "Deployment"}

FIELDS = (
    "id", "source", "cluster", "kind", "namespace", "name", "uid", "reason", "message",
    "type", "severity", "count", "total_count", "first_seen", "last_seen", "node", "pod",
    "workload", "workload_kind", "container", "component", "labels", "event_uid",
)


@dataclass(slots=True)
class Event:
    """One observation of something happening to one Kubernetes object."""

    id: str
    source: str                      # "kubernetes" or "agent-manager"
    kind: str                        # kind of the object the event is about
    name: str
    reason: str
    namespace: str | None = None
    uid: str | None = None           # uid of the object the event is about
    message: str = ""
    type: str | None = None          # Normal / Warning
    severity: str | None = None
    count: int = 1                   # occurrences this record stands for
    total_count: int = 1             # the object's count as Kubernetes reports it
    first_seen: float = 0.0          # epoch seconds
    last_seen: float = 0.0
    node: str | None = None
    pod: str | None = None
    workload: str | None = None
    workload_kind: str | None = None
    container: str | None = None
    component: str | None = None
    cluster: str | None = None
    event_uid: str | None = None     # uid of the Kubernetes Event object itself
    labels: dict[str, str] = field(default_factory=dict)
    watch_type: str | None = None

    @property
    def time(self) -> float:
        return self.last_seen or self.first_seen

    @property
    def object_key(self) -> str:
        return self.uid or f"{self.kind}/{self.namespace or ''}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(FIELDS, _FIELD_GETTER(self), strict=True))


_TIME_CACHE: dict[str, float] = {}


_FIELD_GETTER = operator.attrgetter(*FIELDS)


def parse_time(value: Any, where: str) -> float:
    """RFC 3339 (``2026-11-20T08:14:03Z``, with or without fraction) to epoch seconds."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, str):
        # A storm repeats the same few timestamps: parse each once.
        cached = _TIME_CACHE.get(value)
        if cached is not None:
            return cached
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise MalformedEvent(f"{where}: not an RFC 3339 time: {value!r}") from None
        if moment.tzinfo is None:
            # Kubernetes always writes UTC; never read a zoneless time as local time.
            moment = moment.replace(tzinfo=UTC)
        parsed = moment.timestamp()
        if len(_TIME_CACHE) > 100_000:
            _TIME_CACHE.clear()
        _TIME_CACHE[value] = parsed
        return parsed
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= MAX_TIME:
            raise MalformedEvent(f"{where}: time out of range: {value!r}")
        return float(value)
    raise MalformedEvent(f"{where}: expected an RFC 3339 time, got {type(value).__name__}")


def owning_workload(kind: str, name: str, owners: Any = None) -> tuple[str | None, str | None]:
    """(workload kind, workload name) owning an object; for pods, from owners or the name."""
    if kind != "Pod":
        return kind, name
    if owners is None:
        return _workload_from_name(name)
    if isinstance(owners, list):
        for owner in owners:
            if isinstance(owner, dict) and owner.get("controller", True) and owner.get("name"):
                okind = owner.get("kind", "")
                oname = str(owner["name"])
                if okind == "ReplicaSet":
                    match = re.match(r"^(.+)-[0-9a-z]{6,10}$", oname)
                    return "Deployment", match.group(1) if match else oname
                # A kind that is not text is left as it is, for _checked to refuse.
                return (_OWNER_KIND.get(okind, okind) if isinstance(okind, str) else okind), oname
    return _workload_from_name(name)


@functools.lru_cache(maxsize=65536)
def _workload_from_name(name: str) -> tuple[str | None, str | None]:
    for pattern, wkind in ((_RS_POD, "Deployment"), (_ORDINAL_POD, "StatefulSet"),
                           (_SUFFIX_POD, "DaemonSet")):
        match = pattern.match(name)
        if match:
            return wkind, match.group("base")
    return None, name


@overload
def _text(obj: dict, key: str, where: str, *, required: Literal[True]) -> str: ...


@overload
def _text(obj: dict, key: str, where: str, *, required: bool = False) -> str | None: ...


def _text(obj: dict, key: str, where: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise MalformedEvent(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def _int(value: Any, where: str, default: int = 1) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{where} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise MalformedEvent(f"{where} must not be negative")
    if value > MAX_COUNT:
        raise MalformedEvent(f"{where} must be at most {MAX_COUNT}")
    return value


@functools.lru_cache(maxsize=4096)
def _container(field_path: str) -> str | None:
    found = _CONTAINER.search(field_path)
    return found.group(1) if found else None


def _from_k8s(obj: dict, watch_type: str | None) -> Event:
    api = obj.get("apiVersion", "v1")
    new_api = api == "events.k8s.io/v1"
    where = "regarding" if new_api or "regarding" in obj else "involvedObject"
    target = obj.get(where)
    if not isinstance(target, dict):
        raise MalformedEvent(f"Event.{where} is missing or not an object")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise MalformedEvent("Event.metadata must be an object")
    kind = _text(target, "kind", where, required=True)
    name = _text(target, "name", where, required=True)
    reason = _text(obj, "reason", "Event", required=True)
    if new_api or "note" in obj:
        message = _text(obj, "note", "Event") or ""
        series = obj.get("series") or {}
        count = _int(series.get("count") if isinstance(series, dict) else None, "Event.series.count",
                     default=_int(obj.get("deprecatedCount"), "Event.deprecatedCount"))
        first_key = "deprecatedFirstTimestamp" if obj.get("deprecatedFirstTimestamp") else "eventTime"
        first = parse_time(obj.get(first_key), f"Event.{first_key}")
        last = parse_time(
            (series.get("lastObservedTime") if isinstance(series, dict) else None)
            or obj.get("deprecatedLastTimestamp") or obj.get("eventTime"),
            "Event.series.lastObservedTime",
        )
        src = obj.get("deprecatedSource") or {}
        if not isinstance(src, dict):
            src = {}
        component = obj.get("reportingController") or src.get("component")
        host = src.get("host") or None
    else:
        message = _text(obj, "message", "Event") or ""
        count = _int(obj.get("count"), "Event.count")
        series = obj.get("series")
        if isinstance(series, dict) and series.get("count") is not None:
            count = max(count, _int(series.get("count"), "Event.series.count"))
        first_key = "firstTimestamp" if obj.get("firstTimestamp") else "eventTime"
        first = parse_time(obj.get(first_key), f"Event.{first_key}")
        last = parse_time(obj.get("lastTimestamp"), "Event.lastTimestamp")
        if isinstance(series, dict) and series.get("lastObservedTime"):
            # Newer kubelets and the scheduler report repeats in series, not lastTimestamp.
            last = max(last, parse_time(series["lastObservedTime"], "Event.series.lastObservedTime"))
        if not last and obj.get("eventTime"):
            last = parse_time(obj["eventTime"], "Event.eventTime")
        src = obj.get("source") or {}
        if not isinstance(src, dict):
            raise MalformedEvent("Event.source must be an object")
        component = src.get("component") or obj.get("reportingComponent")
        host = src.get("host") or None
    if not host and component == "kubelet":
        # The kubelet reports as its node.
        host = obj.get("reportingInstance") or None
    if not last:
        last = first
    namespace = target.get("namespace") or meta.get("namespace")
    uid = target.get("uid") or None
    node = None
    pod = None
    if kind == "Node":
        node = name
        namespace = None
    elif kind == "Pod":
        pod = name
        node = host if component == "kubelet" or host else None
    field_path = target.get("fieldPath")
    container = _container(field_path) if isinstance(field_path, str) else None
    wkind, workload = owning_workload(kind, name, obj.get("ownerReferences"))
    event_uid = meta.get("uid") or None
    version = meta.get("resourceVersion")
    ident = f"{event_uid or meta.get('name') or f'{kind}/{namespace}/{name}/{reason}'}@{version or count}"
    return Event(
        id=ident, source="kubernetes", kind=kind, name=name, reason=reason,
        namespace=namespace, uid=uid, message=message, type=obj.get("type"),
        severity=None, count=count, total_count=count, first_seen=first, last_seen=last,
        node=node, pod=pod, workload=workload, workload_kind=wkind, container=container,
        component=component, event_uid=event_uid, watch_type=watch_type,
        labels={},
    )


_EVENT_ORDER = ("id", "source", "kind", "name", "reason", "namespace", "uid", "message", "type", "severity",
                "count", "total_count", "first_seen", "last_seen", "node", "pod", "workload", "workload_kind",
                "container", "component", "cluster", "event_uid", "labels", "watch_type")
if tuple(f.name for f in dataclasses.fields(Event)) != _EVENT_ORDER:   # pragma: no cover
    raise ImportError("engine.events: Event's fields moved; update _EVENT_ORDER and core_v1_row")
_EVENT_FIELDS = operator.attrgetter(*_EVENT_ORDER)      # an Event as its row
_SOURCE, _KIND, _UID, _NODE, _REASON, _MESSAGE = (
    _EVENT_ORDER.index(f) for f in ("source", "kind", "uid", "node", "reason", "message"))


def core_v1_row(obj: dict, watch_type: str | None) -> tuple | None:
    """The fast path of :func:`_from_k8s` for a well-formed core/v1 Event (what a kubectl
    watch and a storm of patched events are made of), already checked as :func:`_checked`
    checks it, as the Event's arguments in order (``Event(*row)``; a replay's parse worker
    sends the row as it is). ``None`` for anything else or anything odd: the caller then
    takes the general path, which gives the same Event or says exactly what is wrong.

    Same expressions as :func:`_from_k8s`'s core/v1 branch, in the same order; only the
    validation differs: types are tested inline and the text is searched for NUL once,
    instead of helper calls and a loop over every field. A test holds the two paths equal
    on odd and malformed events."""
    get = obj.get
    if "regarding" in obj or "note" in obj or get("apiVersion", "v1") == "events.k8s.io/v1":
        return None
    target = get("involvedObject")
    meta = get("metadata") or {}
    if type(target) is not dict or type(meta) is not dict:
        return None
    tget = target.get
    kind = tget("kind")
    name = tget("name")
    reason = get("reason")
    message = get("message")
    if (type(kind) is not str or type(name) is not str or type(reason) is not str
            or not kind or not name or not reason):
        return None
    if message is None:
        message = ""
    elif type(message) is not str:
        return None
    count = get("count")
    if count is None:
        count = 1
    elif type(count) is not int or not 0 <= count <= MAX_COUNT:
        return None
    if get("series") is not None:
        return None
    cache = _TIME_CACHE
    first_key = "firstTimestamp" if get("firstTimestamp") else "eventTime"
    raw_first, raw_last = get(first_key), get("lastTimestamp")
    first = cache.get(raw_first) if type(raw_first) is str else None
    last = cache.get(raw_last) if type(raw_last) is str else None
    try:
        if first is None:
            first = parse_time(raw_first, f"Event.{first_key}")
        if last is None:
            last = parse_time(raw_last, "Event.lastTimestamp")
        if not last and get("eventTime"):
            last = parse_time(obj["eventTime"], "Event.eventTime")
    except MalformedEvent:
        return None
    src = get("source") or {}
    if type(src) is not dict:
        return None
    component = src.get("component") or get("reportingComponent")
    host = src.get("host") or None
    if not host and component == "kubelet":
        host = get("reportingInstance") or None
    if not last:
        last = first
    namespace = tget("namespace") or meta.get("namespace")
    uid = tget("uid") or None
    node = None
    pod = None
    if kind == "Node":
        node = name
        namespace = None
    elif kind == "Pod":
        pod = name
        node = host if component == "kubelet" or host else None
    field_path = tget("fieldPath")
    container = _container(field_path) if isinstance(field_path, str) else None
    owners = get("ownerReferences")
    if owners is None:
        wkind, workload = _workload_from_name(name) if kind == "Pod" else (kind, name)
    else:
        wkind, workload = owning_workload(kind, name, owners)
    event_uid = meta.get("uid") or None
    version = meta.get("resourceVersion")
    ident = f"{event_uid or meta.get('name') or f'{kind}/{namespace}/{name}/{reason}'}@{version or count}"
    type_ = get("type")
    # What _checked checks: every text is text without NUL (pod is name; source, severity
    # and cluster are constants), the times are in range.
    for text in (namespace, uid, type_, node, workload, wkind, container, component, event_uid):
        if text is not None and (type(text) is not str or "\x00" in text):
            return None
    if "\x00" in ident or "\x00" in kind or "\x00" in name or "\x00" in reason or "\x00" in message:
        return None
    if not (0 <= first <= MAX_TIME and 0 <= last <= MAX_TIME):
        return None
    # Positional (in _EVENT_ORDER, checked at import): a quarter of the cost of keywords.
    return (ident, "kubernetes", kind, name, reason, namespace, uid, message, type_, None,
            count, count, first, last, node, pod, workload, wkind, container, component,
            None, event_uid, {}, watch_type)


def _from_envelope(obj: dict) -> Event:
    where = "envelope"
    reason = _text(obj, "reason", where, required=True)
    kind = _text(obj, "kind", where) or "Pod"
    name = _text(obj, "name", where, required=True)
    namespace = _text(obj, "namespace", where)
    count = _int(obj.get("count"), "envelope.count")
    first = parse_time(obj.get("first_seen") or obj.get("timestamp"), "envelope.first_seen")
    last = parse_time(obj.get("last_seen"), "envelope.last_seen") or first
    labels = obj.get("labels") or {}
    if not isinstance(labels, dict):
        raise MalformedEvent("envelope.labels must be an object")
    wkind, workload = owning_workload(kind, name, obj.get("owner_references"))
    if isinstance(obj.get("workload"), str):
        workload = obj["workload"]
    node = _text(obj, "node", where)
    if kind == "Node":
        node = name
    ident = obj.get("id")
    if ident is not None and not isinstance(ident, str | int):
        raise MalformedEvent("envelope.id must be a string")
    return Event(
        id=str(ident) if ident is not None else f"{kind}/{namespace}/{name}/{reason}@{count}",
        source=_text(obj, "source", where) or "agent-manager", kind=kind, name=name,
        reason=reason, namespace=namespace, uid=_text(obj, "uid", where),
        message=_text(obj, "message", where) or "", type=_text(obj, "type", where),
        severity=_text(obj, "severity", where), count=count, total_count=count,
        first_seen=first, last_seen=last, node=node, pod=name if kind == "Pod" else None,
        workload=workload, workload_kind=wkind, container=_text(obj, "container", where),
        component=_text(obj, "component", where), cluster=_text(obj, "cluster", where),
        event_uid=_text(obj, "event_uid", where), labels={str(k): str(v) for k, v in labels.items()},
    )


_TEXT_FIELDS = ("id", "source", "kind", "name", "reason", "namespace", "uid", "message", "type", "severity",
                "node", "pod", "workload", "workload_kind", "container", "component", "cluster", "event_uid")
MAX_TIME = 253402300799.0   # 9999-12-31: anything later is not a time a cluster reports


def _checked(event: Event) -> Event:
    """Every text field is text without NUL (PostgreSQL refuses it), times are in range."""
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise MalformedEvent(f"{name} must be a string, got {type(value).__name__}")
        if "\x00" in value:
            raise MalformedEvent(f"{name} contains a NUL character")
    for name in ("first_seen", "last_seen"):
        value = getattr(event, name)
        if not 0 <= value <= MAX_TIME:
            raise MalformedEvent(f"{name} is out of range: {value!r}")
    if not all(isinstance(k, str) and isinstance(v, str) and "\x00" not in k + v
               for k, v in event.labels.items()):
        raise MalformedEvent("labels must map strings to strings")
    return event


def parse_event(obj: Any) -> Event | None:
    """One decoded JSON value to an Event (for a Pod, the first one its status shows).
    ``None`` for watch lines that carry no event (BOOKMARK, DELETED) and Pods whose
    containers show nothing wrong. Raises MalformedEvent for anything it cannot read."""
    events = parse_events(obj)
    return events[0] if events else None


def parse_events(obj: Any) -> list[Event]:
    """Every Event one decoded JSON value stands for: one for an Event or an envelope; for a
    Pod (a watch line, a List item, or an envelope carrying container statuses), one per
    container state worth knowing (:func:`pod_events`). Raises MalformedEvent."""
    obj, watch_type = _unwrapped(obj)
    if obj is None:
        return []
    if "involvedObject" in obj:
        fast = core_v1_row(obj, watch_type)
        if fast is not None:
            return [Event(*fast)]
    return _parse_other(obj, watch_type)


def parse_rows(obj: Any) -> list[tuple]:
    """:func:`parse_events` as each Event's arguments in order (``Event(*row)``), what a
    replay's parse worker sends: a core/v1 Event is never built as an Event here."""
    obj, watch_type = _unwrapped(obj)
    if obj is None:
        return []
    if "involvedObject" in obj:
        fast = core_v1_row(obj, watch_type)
        if fast is not None:
            return [fast]
    return [_EVENT_FIELDS(event) for event in _parse_other(obj, watch_type)]


def _unwrapped(obj: Any) -> tuple[dict | None, str | None]:
    """(the object, its watch type) of a watch line, (obj, None) of anything else; (None, type)
    for a watch line that carries no event (BOOKMARK, DELETED). Raises MalformedEvent."""
    if not isinstance(obj, dict):
        raise MalformedEvent(f"expected a JSON object, got {type(obj).__name__}")
    if "object" in obj and isinstance(obj.get("type"), str) and obj["type"] in _WATCH_TYPES \
            and isinstance(obj.get("object"), dict):
        watch_type = obj["type"]
        if watch_type in ("BOOKMARK", "DELETED"):
            return None, watch_type
        if watch_type == "ERROR":
            raise MalformedEvent(f"watch ERROR: {obj['object'].get('message', 'no message')}")
        return obj["object"], watch_type
    return obj, None


def _parse_other(obj: dict, watch_type: str | None) -> list[Event]:
    """:func:`parse_events` of anything but a core/v1 Event its fast path takes."""
    kind = obj.get("kind")
    if kind == "Event" or "involvedObject" in obj or "regarding" in obj:
        return [_checked(_from_k8s(obj, watch_type))]
    if kind == "Pod" and isinstance(obj.get("status"), dict) and isinstance(obj.get("metadata"), dict):
        return [_checked(e) for e in pod_events(obj, watch_type)]
    if "reason" in obj and "name" in obj:
        envelope = _checked(_from_envelope(obj))
        statuses = obj.get("container_statuses") or obj.get("containerStatuses")
        if statuses is None:
            return [envelope]
        pod = {"metadata": {"name": envelope.name, "namespace": envelope.namespace, "uid": envelope.uid,
                            "labels": envelope.labels},
               "spec": {"nodeName": envelope.node}, "status": {"containerStatuses": statuses}}
        derived = [_checked(e) for e in pod_events(pod, None, source=envelope.source)
                   if e.reason != envelope.reason]
        for event in derived:
            event.cluster, event.severity = envelope.cluster, envelope.severity
        return [envelope, *derived]
    if kind is not None:
        raise MalformedEvent(
            f"unknown kind {kind!r}: expected Event, Pod, a watch line or an agent-manager envelope")
    raise MalformedEvent("not an event: no 'kind', 'involvedObject', 'regarding' or 'reason'/'name'")


# Container states that are worth an event (the kubelet emits no OOMKilled Event: it is only
# in the Pod's status). Waiting reasons, and terminated reasons other than a clean exit.
POD_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                         "CreateContainerError", "InvalidImageName", "RunContainerError"})
POD_TERMINATED = frozenset({"OOMKilled", "Error", "StartError", "ContainerCannotRun", "DeadlineExceeded"})


def pod_events(pod: dict[str, Any], watch_type: str | None, *, source: str = "kubernetes") -> list[Event]:
    """The events a Pod's container statuses stand for, each counted once per restart.

    For each container (init containers too): its last termination (``lastState``) or
    current one (``state.terminated``) when it was ``OOMKilled``, an ``Error`` exit (with its
    exit code), ``StartError`` or ``ContainerCannotRun``; and its waiting reason
    (``CrashLoopBackOff``, ``ImagePullBackOff``, ``CreateContainerConfigError``, ...). Each is
    one Kubernetes-like Event whose count is the container's restart count, keyed by pod,
    container and reason: the same status seen again adds nothing, a restart adds one."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    if not isinstance(meta, dict) or not isinstance(status, dict) or not isinstance(spec, dict):
        raise MalformedEvent("Pod.metadata, spec and status must be objects")
    name = _text(meta, "name", "Pod.metadata", required=True)
    namespace = _text(meta, "namespace", "Pod.metadata")
    uid = _text(meta, "uid", "Pod.metadata")
    node = spec.get("nodeName") if isinstance(spec.get("nodeName"), str) else None
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise MalformedEvent("Pod.metadata.labels must be an object")
    wkind, workload = owning_workload("Pod", name, meta.get("ownerReferences"))
    started = parse_time(status.get("startTime") or meta.get("creationTimestamp"), "Pod.status.startTime")
    out: list[Event] = []
    for key in ("initContainerStatuses", "containerStatuses"):
        containers = status.get(key) or []
        if not isinstance(containers, list):
            raise MalformedEvent(f"Pod.status.{key} must be a list")
        for container in containers:
            if not isinstance(container, dict):
                raise MalformedEvent(f"Pod.status.{key} items must be objects")
            cname = _text(container, "name", f"Pod.status.{key}[]", required=True)
            restarts = _int(container.get("restartCount"), f"Pod.status.{key}[].restartCount", default=0)
            found: list[tuple[str, str, int, float]] = []     # reason, message, count, time
            state = container.get("state") or {}
            last = container.get("lastState") or {}
            if not isinstance(state, dict) or not isinstance(last, dict):
                raise MalformedEvent(f"Pod.status.{key}[].state and lastState must be objects")
            for which, terminated, count in (("lastState", last.get("terminated"), restarts),
                                             ("state", state.get("terminated"), restarts + 1)):
                if not isinstance(terminated, dict):
                    continue
                reason = terminated.get("reason")
                code = terminated.get("exitCode")
                if reason not in POD_TERMINATED or (reason == "Error" and code in (0, None)):
                    continue
                signal = f", signal {terminated['signal']}" if terminated.get("signal") else ""
                extra = f": {terminated['message']}" if isinstance(terminated.get("message"), str) else ""
                at = parse_time(terminated.get("finishedAt") or terminated.get("startedAt"),
                                f"Pod.status.{key}[].{which}.terminated.finishedAt") or started
                found.append((str(reason), f"Container {cname} terminated: {reason}, exit code {code}"
                              f"{signal}{extra}", max(count, 1), at))
            waiting = state.get("waiting")
            if isinstance(waiting, dict) and waiting.get("reason") in POD_WAITING:
                reason = str(waiting["reason"])
                extra = f": {waiting['message']}" if isinstance(waiting.get("message"), str) else ""
                at = max([f[3] for f in found] + [started])
                found.append((reason, f"Container {cname} waiting: {reason}{extra}", max(restarts, 1), at))
            for reason, message, count, at in found:
                event_uid = f"{uid or f'{namespace}/{name}'}/{cname}/{reason}"
                out.append(Event(
                    id=f"pod:{event_uid}@{count}", source=source, kind="Pod", name=name, reason=reason,
                    namespace=namespace, uid=uid, message=message, type="Warning", count=count,
                    total_count=count, first_seen=at, last_seen=at, node=node, pod=name, workload=workload,
                    workload_kind=wkind, container=cname, component="kubelet", event_uid=event_uid,
                    watch_type=watch_type, labels={str(k): str(v) for k, v in labels.items()}))
    return out


def decode(raw: bytes | str) -> Any:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"payload of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None


class OccurrenceTracker:
    """Turns Kubernetes' patched events into occurrence counts, and learns pod -> node.

    Kept per Event object (its uid, else object uid + reason): the last count seen. A
    record with a higher count stands for the difference; an equal or lower one for
    nothing (a duplicate delivery or a relist), and ``observe`` returns False.

    Bounded by count and by age (:mod:`engine.bounded`: keys as 64-bit hashes, two
    generations): an Event object not seen for ``max_age`` (Kubernetes keeps events an
    hour) or pushed out by ``max_entries`` newer ones is forgotten, and its next record
    counts as new (its whole count). Pods' nodes are kept the same way.
    """

    def __init__(self, max_entries: int = TRACKED_EVENTS, max_age: float = TRACKED_SECONDS,
                 max_pods: int = TRACKED_PODS) -> None:
        self._counts: RecentMap[int] = RecentMap(max_entries, max_age)
        self._nodes: RecentMap[str] = RecentMap(max_pods, max_age)

    def observe(self, event: Event) -> bool:
        """Learn what the event tells of its pod's node (:meth:`node_of`), then count it
        (:meth:`count`): False if it stands for no new occurrence."""
        if event.source == "kubernetes":
            event.node = self.node_of(event.kind, event.uid, event.node, event.reason, event.message)
        return self.count(event)

    def learn_row(self, row: tuple) -> tuple:
        """What :meth:`observe` learns of an event as its row (:func:`parse_rows`): the row,
        with its node."""
        if row[_SOURCE] != "kubernetes":
            return row
        node = self.node_of(row[_KIND], row[_UID], row[_NODE], row[_REASON], row[_MESSAGE])
        return row if node == row[_NODE] else (*row[:_NODE], node, *row[_NODE + 1:])

    def node_of(self, kind: str, uid: str | None, node: str | None, reason: str, message: str) -> str | None:
        """The node a Kubernetes event gets: a pod's, learnt from a kubelet's event about it
        or the scheduler's ``Scheduled``, for the pod's events that do not say it."""
        if uid and kind == "Pod":
            if not node:
                node = self._nodes.get(uid)
            elif self._nodes.current(hash(uid)) != node:
                self._remember(uid, node)
        if reason == "Scheduled":
            match = _ASSIGNED.match(message)
            if match and uid:
                self._remember(uid, match.group(3))
        return node

    def count(self, event: Event) -> bool:
        """Set ``event.count`` to the occurrences it stands for beyond those seen of the same
        Event object; False if none (a duplicate delivery or a relist)."""
        kubernetes = event.source == "kubernetes"
        event_uid = event.event_uid
        if kubernetes:
            key: tuple[str | None, ...] = (event_uid or None, event.uid or event.object_key, event.reason)
        elif event_uid:
            key = (event_uid, event.uid or event.object_key, event.reason)
        else:
            # agent-manager already counts per envelope; its ids make duplicates visible.
            key = (event.id,)
        counts = self._counts
        h = hash(key)
        seen = counts.get_hashed(h)
        total = event.total_count
        if seen is not None:
            if total <= seen:
                return False
            event.count = total - seen
        else:
            event.count = total if kubernetes and event_uid else max(total, 1)
        counts.set_hashed(h, total)
        return True

    def __len__(self) -> int:
        return len(self._counts)

    def _remember(self, pod_uid: str, node: str) -> None:
        h = hash(pod_uid)
        if self._nodes.current(h) == node:
            return     # known, and kept: storing it again would change nothing
        # A cluster has few nodes: one string each, whatever number of pods names it.
        self._nodes.set_hashed(h, sys.intern(node))


def read_stream(data: bytes) -> Iterator[tuple[int, Any]]:
    """Split a recorded stream into (line number, decoded value) items.

    Accepts JSON lines (events or watch lines), a single JSON document that is a
    ``List``/``EventList`` with ``items``, a JSON array, or one event. Lines that are not
    JSON come back as (line, MalformedEvent) so the caller can dead-letter them.
    """
    stripped = data.lstrip()
    if _is_document(stripped[: stripped.find(b"\n") if b"\n" in stripped else len(stripped)]):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        else:
            if isinstance(doc, dict) and isinstance(doc.get("items"), list):
                yield from ((1, item) for item in doc["items"])
            elif isinstance(doc, list):
                yield from ((1, item) for item in doc)
            else:
                yield (1, doc)
            return
    loads = orjson.loads
    start, number, size = 0, 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        number += 1
        line = data[start:end]
        start = end + 1
        if not line or line.isspace():
            continue
        try:
            yield number, loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, MalformedEvent(f"line {number}: not JSON: {exc}")


def _is_json_line(line: bytes) -> bool:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return not (isinstance(value, dict) and isinstance(value.get("items"), list))


def _is_document(first_line: bytes) -> bool:
    """One JSON document (a List, an array, one event) unless the first line is a
    complete JSON value of its own that is not a List (then: JSON lines)."""
    start = first_line.lstrip()[:1]
    return start == b"[" or (start == b"{" and not _is_json_line(first_line.strip()))


def read_file(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Like :func:`read_stream`, from a file, without holding JSON lines in memory."""
    with open(path, "rb") as fp:
        yield from read_open(fp)


def read_open(fp: BinaryIO) -> Iterator[tuple[int, Any]]:
    """:func:`read_file` of a file already open (binary): seekable, it is read line by line;
    otherwise (a pipe) whole, as :func:`read_stream`."""
    if not fp.seekable():
        yield from read_stream(fp.read())
        return
    first_line = b""
    while not first_line.strip():
        first_line = fp.readline()
        if not first_line:
            return
    fp.seek(0)
    if _is_document(first_line):
        yield from read_stream(fp.read())
        return
    loads = orjson.loads
    for number, line in enumerate(fp, 1):
        if not line or line.isspace():      # (strip() would copy every line)
            continue
        try:
            yield number, loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, MalformedEvent(f"line {number}: not JSON: {exc}")
