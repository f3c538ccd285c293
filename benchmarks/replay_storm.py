"""Replay benchmark: an event storm through intake -> rule base -> correlation.

    python -m benchmarks.replay_storm [--namespaces 50 --deployments 200 --pods 5 --repeats 4]
                                      [--strategies 200] [--runs 3]

The storm is kubectl-watch output: every pod of every deployment crash-loops, and
Kubernetes patches each pod's BackOff Event ``--repeats`` times (ADDED, then MODIFIED with
a higher count). Default: 50 x 200 x 5 x 4 = 200,000 lines in 10,000 groups, against the
built-in strategies plus synthetic ones up to ``--strategies``. Expected: exactly one
incident per deployment.

The storm is written to a temporary file once; each run replays it in a fresh process
as ``aetherius replay FILE`` does (``Replayer.feed_file``: on a machine with two cores, a
forked worker reads, decodes and parses while the replay runs the rules and the
correlator), so peak RSS is the pipeline's own. Printed: median and every run's events/s,
incidents formed, median peak RSS of the replay and of its parse worker, CPU per event of
both processes together; and, as a baseline measured in the same go, interleaved with the
runs, stdlib ``json.loads`` of every line of the same file (the floor any Python intake
pays, on one core), and the ratio of the two medians, in time and in CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import gctune
from engine.replay import Replayer
from engine.rules.check import effective_strategies, load_valid
from engine.rules.model import Strategy

ROOT = Path(__file__).resolve().parent.parent
T0 = 1795000000.0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def write_storm(path: Path, namespaces: int, deployments: int, pods: int, repeats: int) -> int:
    """Write the storm as watch lines to ``path``; return the number of lines."""
    lines = 0
    with open(path, "w", encoding="utf-8") as out:
        for r in range(repeats):
            # A round every 10 s: the kubelet's back-off patches each pod's event again.
            for n in range(namespaces):
                ns = f"ns-{n:03d}"
                for d in range(deployments):
                    for p in range(pods):
                        out.write(_watch_line(ns, n, d, p, r, deployments))
                        out.write("\n")
                        lines += 1
    return lines


def _watch_line(ns: str, n: int, d: int, p: int, r: int, deployments: int) -> str:
    pod = f"app-{d:03d}-7d9f8c6b5-{p:05d}"
    uid = f"{n}-{d}-{p}"
    offset = (n * deployments + d) * 0.0001
    return json.dumps({
        "type": "ADDED" if r == 0 else "MODIFIED",
        "object": {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.17a3c2b1e0f4d8aa", "namespace": ns,
                         "uid": f"ev-{uid}", "resourceVersion": str(1000 + r)},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": f"pod-{uid}",
                               "fieldPath": "spec.containers{app}"},
            "reason": "BackOff",
            "message": f"Back-off restarting failed container app in pod {pod}_{ns}(pod-{uid})",
            "source": {"component": "kubelet", "host": f"node-{(d + p) % 40}"},
            "firstTimestamp": _iso(T0 + offset), "lastTimestamp": _iso(T0 + r * 10 + offset),
            "count": r + 1, "type": "Warning",
        },
    }, separators=(",", ":"))


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


def child_replay(path: str, rules_dir: str, total_strategies: int) -> dict:
    """One measured run, in a fresh process so peak RSS is the pipeline's own."""
    rules = load_valid(rules_dir)
    builtin = list(effective_strategies(rules).values())
    strategies = builtin + synthetic_strategies(max(0, total_strategies - len(builtin)))
    start = time.perf_counter()
    replayer = Replayer(strategies, one_shot=True)    # as ``aetherius replay`` builds it
    gctune.tune()                   # as ``aetherius replay`` does once its rules are loaded
    replayer.feed_file(path)        # as ``aetherius replay FILE`` does: a parse worker on a second core
    result = replayer.finish()
    elapsed = time.perf_counter() - start
    own, worker = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"elapsed": elapsed, "records": result.records, "incidents": len(result.incidents),
            "strategies": len(strategies),
            # CPU of the whole process (rules loading included) and of the parse worker
            "cpu": own.ru_utime + own.ru_stime + worker.ru_utime + worker.ru_stime,
            "worker_cpu": worker.ru_utime + worker.ru_stime,
            "peak_rss_mb": own.ru_maxrss / 1024, "worker_rss_mb": worker.ru_maxrss / 1024}


def child_baseline(path: str) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    lines = 0
    with open(path, "rb") as fp:
        for line in fp:
            json.loads(line)
            lines += 1
    return {"elapsed": time.perf_counter() - start, "cpu": time.process_time() - cpu, "records": lines}


def _spawn(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.replay_storm", *args],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--strategies", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rules", default=str(ROOT / "rules"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child_replay(args.child, args.rules, args.strategies)))
        return 0
    if args.baseline_child:
        print(json.dumps(child_baseline(args.baseline_child)))
        return 0

    groups = args.namespaces * args.deployments
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "storm.jsonl"
        lines = write_storm(path, args.namespaces, args.deployments, args.pods, args.repeats)
        print(f"storm: {lines:,} watch lines ({path.stat().st_size / 1e6:.0f} MB), {groups:,} groups")
        runs, baselines = [], []
        for _ in range(args.runs):
            # Interleaved, so machine noise hits both alike.
            baselines.append(_spawn("--baseline-child", str(path)))
            runs.append(_spawn("--child", str(path), "--rules", args.rules,
                               "--strategies", str(args.strategies)))
    rates = [r["records"] / r["elapsed"] for r in runs]
    base = [b["records"] / b["elapsed"] for b in baselines]
    print(f"strategies loaded: {runs[0]['strategies']}")
    print(f"replay:   median {statistics.median(rates):,.0f} events/s  "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(f"baseline: median {statistics.median(base):,.0f} lines/s, stdlib json.loads alone "
          "on the same file (the floor of any Python intake)")
    ratios = [b / r for b, r in zip(base, rates, strict=True)]
    print(f"ratio:    replay is {statistics.median(base) / statistics.median(rates):.2f}x slower than "
          f"json.loads (medians; per interleaved pair: {', '.join(f'{x:.2f}' for x in ratios)})")
    cpu = statistics.median(r["cpu"] / r["records"] * 1e6 for r in runs)
    base_cpu = statistics.median(b["cpu"] / b["records"] * 1e6 for b in baselines)
    print(f"CPU:      replay {cpu:.1f} µs per event (both processes, rules loading included), "
          f"json.loads {base_cpu:.1f} µs per line: {cpu / base_cpu:.2f}x")
    print(f"incidents formed: {', '.join(str(r['incidents']) for r in runs)} (expected {groups:,})")
    print(f"peak RSS: median {statistics.median(r['peak_rss_mb'] for r in runs):,.0f} MB "
          f"(parse worker: {statistics.median(r['worker_rss_mb'] for r in runs):,.0f} MB)")
    return 0 if all(r["incidents"] == groups for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
