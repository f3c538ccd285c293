"""The built-in root-cause classifier: explainable rules over what the cluster said.

It answers when reasoning-service is not configured or does not answer. It reads, line by
line and knowing where each line came from:

- the incident and its events (reasons and messages);
- ``describe`` output: the container's state and last termination (reason, exit code,
  signal) and the events at its end;
- ``get -o json`` output of a Pod: ``status.containerStatuses[].state/lastState``;
- ``logs`` output: the last lines (an application's own errors; dependencies it cannot reach).

Each :data:`SIGNALS` rule names a cause, a pattern, the sources it trusts and how strong it
is. The cause with the strongest evidence wins (a second, independent signal for the same
cause adds a little); its answer carries the line it used (``evidence``) and the signals
that agreed. Nothing that matches stays ``Unknown``, with a low confidence.

========== ================================================================================
cause      what it means
========== ================================================================================
OOM        killed for exceeding its memory limit (OOMKilled; exit 137 with an OOM sign)
Config     missing or invalid configuration: ConfigMap, Secret or key; env variable;
           StorageClass, ServiceAccount or PVC that does not exist; a config parse error;
           the namespace's quota or an admission webhook refusing the pods
Image      the image cannot be pulled (name, tag, registry, credentials)
Command    the container's command cannot run: not found, not executable, permission
           denied; exit codes 126, 127, 128
Probe      liveness, readiness or startup probes fail
Scheduling no node can take the pod: resources, affinity or selector, taints, unbound PVC
Eviction   the node is short of memory, disk or PIDs and evicts pods
Dependency something the application needs does not answer: connection refused or timed
           out, DNS failure, an expired or untrusted certificate
Application the process exits non-zero with an error of its own in its last log lines
Unknown    none of the above shows
========== ================================================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LINE = 300          # characters of the evidence line kept in the answer
LOG_TAIL = 200          # last log lines read
SOURCES = ("event", "describe", "status", "logs", "other")


@dataclass(frozen=True)
class Signal:
    cause: str
    pattern: re.Pattern[str]
    strength: float
    sources: frozenset[str]
    name: str


def _signal(cause: str, name: str, strength: float, sources: Iterable[str], *patterns: str) -> Signal:
    return Signal(cause, re.compile("|".join(patterns), re.IGNORECASE), strength, frozenset(sources), name)


ANY = SOURCES
CLUSTER = ("event", "describe", "status", "other")
APP = ("logs", "other")

SIGNALS: tuple[Signal, ...] = (
    # OOM
    _signal("OOM", "terminated OOMKilled", 0.95, CLUSTER, r"\boomkill(ed|ing)\b", r"\bsystemoom\b"),
    _signal("OOM", "out of memory", 0.8, ANY, r"memory cgroup out of memory", r"\bout ?of ?memory\b",
            r"outofmemoryerror", r"cannot allocate memory", r"fatal error: runtime: out of memory"),
    _signal("OOM", "exit code 137", 0.5, ("describe", "status"), r"exit ?code:?\s*137\b"),
    # Config
    _signal("Config", "CreateContainerConfigError", 0.9, CLUSTER, r"createcontainerconfigerror"),
    _signal("Config", "ConfigMap or Secret not found", 0.9, CLUSTER,
            r"\b(configmaps?|secrets?) \"?[\w.-]+\"? not found",
            r"couldn't find key \S+ in (configmap|secret)"),
    _signal("Config", "object not found", 0.85, CLUSTER,
            r"storageclass(\.storage\.k8s\.io)? \"?[\w.-]+\"? not found",
            r"serviceaccounts? \"?[\w.-]+\"? not found", r"error looking up service account",
            r"persistentvolumeclaims? \"?[\w.-]+\"? not found"),
    _signal("Config", "environment variable missing", 0.8, APP,
            r"\benv(ironment)?( var(iable)?)?s? \"?\$?[A-Z][A-Z0-9_]+\"? "
            r"(is )?(not set|missing|required|undefined)",
            r"\b(missing|required|undefined) (required )?env(ironment)? var(iable)?",
            r"\$?[A-Z][A-Z0-9_]{2,} (must be set|is not set|is required|not defined)",
            r"keyerror: '[A-Z][A-Z0-9_]+'"),
    _signal("Config", "quota or admission", 0.8, CLUSTER, r"exceeded quota",
            r"admission webhook \"[^\"]+\" denied",
            r"is forbidden: .*(must specify|violates podsecurity)"),
    _signal("Config", "invalid configuration", 0.7, ANY, r"invalid configuration",
            r"failed to (parse|load) config",
            r"error parsing config", r"yaml: line \d+:", r"unknown (config|configuration) (key|option)"),
    # Image
    _signal("Image", "image pull failed", 0.9, CLUSTER, r"errimagepull", r"imagepullbackoff",
            r"failed to pull image",
            r"back-off pulling image", r"invalidimagename", r"manifest unknown", r"pull access denied",
            r"repository does not exist"),
    # Command
    _signal("Command", "executable not found", 0.9, ANY, r"executable file not found in \$path",
            r"exec: \"[^\"]+\": stat [^:]+: no such file or directory", r"exec format error",
            r"\bstarterror\b", r"\bcontainercannotrun\b", r"exec: \"[^\"]+\": permission denied",
            r"unable to start container process"),
    _signal("Command", "exit code 126/127/128", 0.75, ("describe", "status"),
            r"exit ?code:?\s*(126|127|128)\b"),
    _signal("Command", "command not found", 0.7, APP, r"command not found", r": not found$",
            r"permission denied.*(exec|/bin/|\.sh)"),
    # Probe
    _signal("Probe", "probe failed", 0.75, CLUSTER, r"(liveness|readiness|startup) probe failed",
            r"failed (liveness|readiness|startup) probe"),
    # Scheduling
    _signal("Scheduling", "no node fits", 0.9, CLUSTER, r"failedscheduling", r"\d+/\d+ nodes are available",
            r"insufficient (cpu|memory|pods|ephemeral-storage|nvidia\.com/gpu)",
            r"didn't match (pod's )?node (affinity|selector)", r"node\(s\) had (untolerated )?taint",
            r"unbound immediate persistentvolumeclaims", r"didn't match pod (anti-)?affinity rules"),
    # Eviction
    _signal("Eviction", "node pressure", 0.9, CLUSTER, r"the node was low on resource", r"\bevicted\b",
            r"nodehas(disk|memory)pressure", r"nodehasinsufficient(memory|pid)", r"evictionthresholdmet",
            r"attempting to reclaim", r"\b(disk|memory|pid)pressure\b"),
    # Dependency (from the application's own words: a probe's timeout is a Probe)
    _signal("Dependency", "cannot reach a dependency", 0.8, APP,
            r"connection refused", r"econnrefused", r"no route to host", r"connection timed out",
            r"dial tcp [^ ]+: (i/o timeout|connect: .+)", r"no such host",
            r"temporary failure in name resolution",
            r"could not resolve host", r"getaddrinfo (enotfound|eai_again)", r"name or service not known",
            r"could not connect to (server|database)", r"connection reset by peer"),
    _signal("Dependency", "certificate", 0.85, APP,
            r"x509: certificate (has expired|signed by unknown authority|is valid for|is not valid)",
            r"certificate verify failed", r"certificate has expired",
            r"ssl: certificate_verify_failed", r"tls: (failed to verify|handshake failure)"),
    # Application: its own error in its last lines (weak alone; a non-zero exit adds to it)
    _signal("Application", "error in the logs", 0.45, ("logs",),
            r"^(?:.*\b(error|fatal|panic|exception|traceback)\b.*)$", r"unhandled (exception|rejection)"),
    _signal("Application", "non-zero exit", 0.35, ("describe", "status"),
            r"exit ?code:?\s*(?!0\b|137\b|143\b|126\b|127\b|128\b)\d+\b"),
)

SUMMARY = {
    "OOM": "The container was killed for exceeding its memory limit.",
    "Config": "The container cannot start because of missing or invalid configuration.",
    "Image": "The image cannot be pulled.",
    "Command": "The container's command cannot run (not found, not executable or not permitted).",
    "Probe": "Health probes fail, so the kubelet restarts or withholds the container.",
    "Scheduling": "No node can take the pod.",
    "Eviction": "The node ran short of a resource and evicted pods.",
    "Dependency": "The application cannot reach something it depends on.",
    "Application": "The application exits with an error of its own.",
    "Unknown": "The evidence does not show a known cause.",
}
ORDER = tuple(SUMMARY)     # ties go to the earlier, more specific cause


# ----------------------------------------------------------------------------- evidence lines


def _status_lines(data: Any) -> Iterator[str]:
    """A Pod (or a List of them) as ``describe``-like lines about its containers' states."""
    items: list[Any] = (data["items"] if isinstance(data, dict) and isinstance(data.get("items"), list)
                        else [data])
    for item in items:
        status = item.get("status") if isinstance(item, dict) else None
        if not isinstance(status, dict):
            continue
        for key in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(key) or []:
                if not isinstance(container, dict):
                    continue
                for which in ("state", "lastState"):
                    for state, info in (container.get(which) or {}).items():
                        if isinstance(info, dict):
                            yield (f"{container.get('name')} {which} {state}: "
                                   f"reason {info.get('reason') or ''} "
                                   f"exit code {info.get('exitCode', '')} signal {info.get('signal', '')} "
                                   f"{info.get('message') or ''}").strip()
        for condition in status.get("conditions") or []:
            if isinstance(condition, dict) and condition.get("message"):
                yield f"{condition.get('type')}: {condition.get('reason') or ''} {condition['message']}"
        if status.get("reason") or status.get("message"):
            yield f"pod {status.get('reason') or ''}: {status.get('message') or ''}"


def evidence_lines(incident: Mapping[str, Any], events: Iterable[Any], evidence: Mapping[str, Any],
                   actions: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(source, line) of everything the classifier reads. ``actions``: step id -> the
    command's action (``logs``, ``describe``, ``get``), to know what an output is."""
    first = f"{incident.get('reason') or ''}: {incident.get('message') or ''}"
    out: list[tuple[str, str]] = [("event", first)]
    for event in events or []:
        if isinstance(event, dict):
            out.append(("event", f"{event.get('reason') or ''}: {event.get('message') or ''}"))
    for step, output in evidence.items():
        action = (actions or {}).get(step, "")
        source = {"logs": "logs", "describe": "describe", "get": "status"}.get(action, "other")
        texts: list[str] = []
        if isinstance(output, dict):
            for key in ("stdout", "stderr", "summary", "message"):
                value = output.get(key)
                if value:
                    texts.append(str(value))
        elif isinstance(output, str):
            texts.append(output)
        for text in texts:
            stripped = text.lstrip()
            if stripped.startswith("{"):
                try:
                    out.extend(("status", line) for line in _status_lines(json.loads(stripped)))
                    continue
                except ValueError:
                    pass
            lines = text.splitlines()
            if source == "logs":
                lines = lines[-LOG_TAIL:]
            out.extend((source, line) for line in lines if line.strip())
    return out


# ----------------------------------------------------------------------------- the answer


def classify(incident: Mapping[str, Any], events: Iterable[Any], evidence: Mapping[str, Any],
             actions: Mapping[str, str] | None = None) -> dict[str, Any]:
    lines = evidence_lines(incident, events, evidence, actions)
    found: dict[str, list[tuple[Signal, str, str]]] = {}
    for signal in SIGNALS:
        for source, line in lines:
            if source in signal.sources and signal.pattern.search(line):
                found.setdefault(signal.cause, []).append((signal, source, line))
                break       # one line per signal is enough
    if not found:
        return {"root_cause": "Unknown", "confidence": 0.1, "summary": SUMMARY["Unknown"],
                "recommendations": [], "evidence": None, "signals": []}

    def score(cause: str) -> float:
        strengths = sorted((s.strength for s, _, _ in found[cause]), reverse=True)
        return min(0.97, strengths[0] + 0.05 * (len(strengths) - 1))

    cause = max(found, key=lambda c: (score(c), -ORDER.index(c)))
    best, _source, line = max(found[cause], key=lambda f: f[0].strength)
    return {
        "root_cause": cause,
        "confidence": round(score(cause), 2),
        "summary": SUMMARY[cause],
        "recommendations": [],
        "evidence": line.strip()[:MAX_LINE],
        "matched": best.name,
        "signals": sorted({s.name for s, _, _ in found[cause]}),
        "others": {c: round(score(c), 2) for c in sorted(found) if c != cause},
    }
