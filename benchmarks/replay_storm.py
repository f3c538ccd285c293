"""Replay benchmark: an event storm through intake -> rule base -> correlation.

    python -m benchmarks.replay_storm [--namespaces 50 --deployments 200 --pods 5 --repeats 4]
                                      [--strategies 200] [--runs 3]

The storm is kubectl-watch output: every pod of every deployment crash-loops, and
Kubernetes patches each pod's BackOff Event ``--repeats`` times (ADDED, then MODIFIED with
a higher count). Default: 50 x 200 x 5 x 4 = 200,000 lines in 10,000 groups, against the
built-in strategies plus synthetic ones up to ``--strategies``. Expected: exactly one
incident per deployment.

Each run replays the same bytes in a fresh pipeline. Printed: the median and every run's
events/s, incidents formed, peak RSS of the process; and, as a baseline measured in the
same go on the same bytes, stdlib ``json.loads`` of every line (the floor any Python
intake pays).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from engine.check import effective_strategies, load_valid
from engine.events import read_stream
from engine.replay import Replayer
from engine.spec import Strategy

ROOT = Path(__file__).resolve().parent.parent
T0 = 1795000000.0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def storm(namespaces: int, deployments: int, pods: int, repeats: int) -> bytes:
    lines = []
    for r in range(repeats):
        # A round every 10 s: the kubelet's back-off patches each pod's event again.
        for n in range(namespaces):
            ns = f"ns-{n:03d}"
            for d in range(deployments):
                for p in range(pods):
                    pod = f"app-{d:03d}-7d9f8c6b5-{p:05d}"
                    uid = f"{n}-{d}-{p}"
                    offset = (n * deployments + d) * 0.0001
                    first = T0 + offset
                    last = T0 + r * 10 + offset
                    lines.append(json.dumps({
                        "type": "ADDED" if r == 0 else "MODIFIED",
                        "object": {
                            "apiVersion": "v1", "kind": "Event",
                            "metadata": {"name": f"{pod}.17a3c2b1e0f4d8aa", "namespace": ns,
                                         "uid": f"ev-{uid}", "resourceVersion": str(1000 + r)},
                            "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod,
                                               "uid": f"pod-{uid}",
                                               "fieldPath": "spec.containers{app}"},
                            "reason": "BackOff",
                            "message": "Back-off restarting failed container app in pod "
                                       f"{pod}_{ns}(pod-{uid})",
                            "source": {"component": "kubelet", "host": f"node-{(d + p) % 40}"},
                            "firstTimestamp": _iso(first), "lastTimestamp": _iso(last),
                            "count": r + 1, "type": "Warning",
                        },
                    }, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def synthetic_strategies(count: int) -> list[Strategy]:
    """Plausible extra strategies: other reasons, some with regexes, none matching the storm."""
    out = []
    for i in range(count):
        symptom = {"conditions": {"kind": "Pod", "reason": f"Custom{i}Failure"}}
        if i % 3 == 0:
            symptom["pattern"] = rf"^component \d+ failed: code {i}"
        if i % 5 == 0:
            symptom["conditions"]["type"] = "Warning"
        out.append(Strategy.model_validate({
            "id": f"synthetic_{i}", "category": "synthetic", "workflow_id": "diagnose_pod_crashloop",
            "priority": i % 20, "symptoms": [symptom],
        }))
    return out


def run_once(data: bytes, strategies: list[Strategy]) -> tuple[float, int, int]:
    start = time.perf_counter()
    replayer = Replayer(strategies)
    replayer.feed(read_stream(data))
    result = replayer.finish()
    elapsed = time.perf_counter() - start
    return elapsed, result.records, len(result.incidents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--strategies", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    args = parser.parse_args(argv)

    rules = load_valid(args.rules)
    builtin = list(effective_strategies(rules).values())
    strategies = builtin + synthetic_strategies(max(0, args.strategies - len(builtin)))
    data = storm(args.namespaces, args.deployments, args.pods, args.repeats)
    lines = data.count(b"\n")
    groups = args.namespaces * args.deployments
    print(f"storm: {lines} events, {groups} groups, {len(strategies)} strategies loaded")

    rates, baseline, incidents = [], [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        for line in data.splitlines():
            json.loads(line)
        baseline.append(lines / (time.perf_counter() - start))
        elapsed, records, formed = run_once(data, strategies)
        rates.append(records / elapsed)
        incidents.append(formed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"replay:   median {statistics.median(rates):,.0f} events/s  "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(f"baseline: median {statistics.median(baseline):,.0f} lines/s for stdlib json.loads alone")
    print(f"incidents formed: {incidents[-1]} (expected {groups})")
    print(f"peak RSS: {peak_mb:,.0f} MB")
    ok = all(i == groups for i in incidents)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
