"""The replay's fast paths give what the general paths give, on ordinary and odd input.

- intake: the core/v1 fast path (``core_v1_row``) against the general parser
  (``_from_k8s`` + ``_checked``), on every record of a seeded mixed stream and on a
  storm Event with each field made odd in turn;
- rule base: the memo (keyed on free fields while no fact is live) against posting every
  event to durable-rules;
- replay: the event-time scheduler against reactivex's ``HistoricalScheduler``;
- replay of a file: through the parse worker (a forked process that reads, decodes and
  parses, sending rows) against the same file parsed in the replay's own process;
- malformed records still become dead letters that say what is wrong.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import gc
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from reactivex.scheduler import HistoricalScheduler

import engine.replay as replay_module
from engine.events import Event, _checked, _from_k8s, core_v1_row, parse_events, parse_rows, read_stream
from engine.exceptions import MalformedEvent
from engine.replay import Replayer, replay_bytes
from engine.rulebase import RuleBase
from engine.rules.check import effective_strategies, load_valid
from tests import mixedstorm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def strategies():
    return list(effective_strategies(load_valid(ROOT / "rules")).values())


def _core_v1(obj: dict, watch_type: str) -> Event | None:
    """The fast path's row as an Event (None: it stepped aside)."""
    row = core_v1_row(obj, watch_type)
    return None if row is None else Event(*row)


def general(obj: dict) -> Any:
    """What the general parser makes of one Event object: the Event, or its error."""
    try:
        return _checked(_from_k8s(obj, "MODIFIED"))
    except MalformedEvent as exc:
        return f"MalformedEvent: {exc}"


def decoded_objects() -> list[Any]:
    out = []
    for seed in (1, 2, 3):
        for _, value in read_stream(mixedstorm.stream(seed)):
            if isinstance(value, dict):
                out.append(value.get("object", value) if isinstance(value.get("object"), dict) else value)
    return out


STORM_EVENT = mixedstorm.core_event(
    uid="ev-1", kind="Pod", name="app-001-7d9f8c6b5-00001", namespace="ns-1", reason="BackOff",
    message="Back-off restarting failed container app in pod app-001-7d9f8c6b5-00001_ns-1(p1)",
    count=3, first=mixedstorm.T0, last=mixedstorm.T0 + 20, host="node-1", rv=1002,
    field_path="spec.containers{app}")

ODD_VALUES: list[Any] = [None, "", 0, -1, 7, 2 ** 40, True, 1.5, "x\x00y", "caf\u00e9", [], {}, ["a"],
                         {"a": 1}, "2026-11-20T10:00:00Z", "not a time", "kubelet", "Pod", "Node", 1e300]

PATHS = [("involvedObject",), ("involvedObject", "kind"), ("involvedObject", "name"),
         ("involvedObject", "namespace"), ("involvedObject", "uid"), ("involvedObject", "fieldPath"),
         ("metadata",), ("metadata", "uid"), ("metadata", "name"), ("metadata", "namespace"),
         ("metadata", "resourceVersion"), ("reason",), ("message",), ("count",), ("type",),
         ("firstTimestamp",), ("lastTimestamp",), ("eventTime",), ("series",), ("source",),
         ("source", "component"), ("source", "host"), ("reportingComponent",), ("reportingInstance",),
         ("ownerReferences",), ("apiVersion",), ("note",), ("regarding",)]

_DELETE = object()


def mutated(path: tuple[str, ...], value: Any) -> dict:
    obj = copy.deepcopy(STORM_EVENT)
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return obj


def odd_objects() -> list[dict]:
    return [mutated(path, value) for path in PATHS for value in [_DELETE, *ODD_VALUES]]


def test_the_storm_event_takes_the_fast_path_and_gives_the_same_event():
    fast = _core_v1(STORM_EVENT, "MODIFIED")
    assert fast is not None
    assert fast == general(STORM_EVENT)
    assert (fast.workload, fast.node, fast.container, fast.count) == ("app-001", "node-1", "app", 3)


@pytest.mark.parametrize("source", ["mixed stream", "odd fields"])
def test_the_fast_path_gives_the_general_parsers_event_or_steps_aside(source):
    objects = decoded_objects() if source == "mixed stream" else odd_objects()
    taken = 0
    for obj in objects:
        if "involvedObject" not in obj:
            continue
        fast = _core_v1(obj, "MODIFIED")
        if fast is not None:
            taken += 1
            assert fast == general(obj), obj
    assert taken > 50     # it is really exercised


@pytest.mark.parametrize("source", ["mixed stream", "odd fields"])
def test_parse_events_says_what_the_general_parser_says(source):
    objects = decoded_objects() if source == "mixed stream" else odd_objects()
    errors = 0
    for obj in objects:
        if "involvedObject" not in obj:
            continue
        expected = general(obj)
        try:
            got: Any = parse_events({"type": "MODIFIED", "object": obj})[0]
        except MalformedEvent as exc:
            got = f"MalformedEvent: {exc}"
            errors += 1
        assert got == expected, obj
    assert errors > 20


def test_malformed_records_are_dead_letters_with_a_clear_reason(strategies):
    lines = [
        '{"type":["ADDED"],"object":{"kind":"Event"}}',
        '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},'
        '"ownerReferences":[{"kind":["R"],"name":"x"}]}',
        '{"kind":"Event","reason":"BackOff","message":"a \\u0000 b",'
        '"involvedObject":{"kind":"Pod","name":"x"}}',
        '{"kind":"Event","reason":"BackOff","involvedObject":{"kind":"Pod","name":"x"},"count":"3"}',
        '{"type":"ADDED","object":{"kind":"Event","reason":"BackOff"',
    ]
    result = replay_bytes("\n".join(lines).encode() + b"\n", strategies)
    assert [(d.line, d.reason) for d in result.dead_letters] == [
        (1, "not an event: no 'kind', 'involvedObject', 'regarding' or 'reason'/'name'"),
        (2, "workload_kind must be a string, got list"),
        (3, "message contains a NUL character"),
        (4, "Event.count must be an integer, got str"),
        (5, "line 5: not JSON: unexpected end of data: line 1 column 60 (char 59)"),
    ]
    assert result.records == 0 and result.incidents == []


def hits_of(rb: RuleBase, events) -> list:
    out = []
    for event in events:
        out.append([(h.strategy.id, h.inhibited_by) for h in rb.process(event, now=event.time)])
        out.append(sorted(json.dumps(f, sort_keys=True) for f in rb.active_facts()))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_memo_answers_what_the_engine_answers(strategies, seed):
    events = []
    for _, value in read_stream(mixedstorm.stream(seed)):
        with contextlib.suppress(MalformedEvent):
            events.extend(parse_events(value))
    events.sort(key=lambda e: e.time)
    memo, engine = RuleBase(strategies), RuleBase(strategies, memo=False)
    try:
        assert hits_of(memo, events) == hits_of(engine, copy.deepcopy(events))
        assert memo.stats["memo_hits"] > 100 and engine.stats["memo_hits"] == 0
        assert {k: memo.stats[k] for k in ("hits", "inhibited", "unmatched")} == \
            {k: engine.stats[k] for k in ("hits", "inhibited", "unmatched")}
    finally:
        memo.close()
        engine.close()


def storm_bytes(namespaces: int = 2, deployments: int = 20, pods: int = 5, repeats: int = 4) -> bytes:
    from benchmarks.replay_storm import _watch_line
    return "".join(_watch_line(f"ns-{n:03d}", n, d, p, r, deployments) + "\n"
                   for r in range(repeats) for n in range(namespaces)
                   for d in range(deployments) for p in range(pods)).encode()


def test_a_storm_without_facts_is_posted_once_per_answer_and_is_one_incident_per_deployment(strategies):
    result = replay_bytes(storm_bytes(), strategies)
    assert len(result.incidents) == 40
    assert {(i.strategy.id, i.events, i.records, len(i.objects)) for i in result.incidents} == {
        ("pod_crashloop", 20, 20, 5)}
    assert result.rulebase["posted"] == 1       # 800 BackOff events, one answer


def summary_of(result) -> list:
    return [result.summary(), [(d.line, d.reason) for d in result.dead_letters],
            [i.summary() | {"formed": i.formed_at, "closed": i.closed_at, "samples": i.sample_ids,
                            "objects": sorted(i.objects)} for i in result.incidents]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_event_time_scheduler_forms_what_the_historical_scheduler_forms(strategies, seed, monkeypatch):
    data = mixedstorm.stream(seed) + storm_bytes(namespaces=1, deployments=5)
    fast = summary_of(replay_bytes(data, strategies))
    monkeypatch.setattr(replay_module, "EventTimeScheduler",
                        lambda start: HistoricalScheduler(initial_clock=start))
    reference = replay_bytes(data, strategies)
    assert fast == summary_of(reference)
    assert len(reference.incidents) > 40


def test_the_garbage_collector_is_back_on_after_a_replay_even_one_that_fails(strategies):
    replayer = Replayer(strategies)

    def broken():
        yield from parse_events(orjson.loads(storm_bytes(1, 1, 1, 1).splitlines()[0]))
        raise RuntimeError("the input went away")

    with pytest.raises(RuntimeError):
        replayer.feed_events(broken())
    assert gc.isenabled()
    replayer.finish()
    assert gc.isenabled()


# ----------------------------------------------------------------------------- the parse worker


def rows_or_error(value: Any) -> Any:
    try:
        return parse_rows(value)
    except MalformedEvent as exc:
        return f"MalformedEvent: {exc}"


def test_parse_rows_are_the_events_parse_events_gives_or_its_error():
    values = [value for seed in (1, 2, 3) for _, value in read_stream(mixedstorm.stream(seed))
              if not isinstance(value, MalformedEvent)]
    values += [{"type": t, "object": obj} for obj in odd_objects() for t in ("ADDED", "MODIFIED")]
    values += [obj for obj in odd_objects()[:40]]        # bare Events, no watch line around them
    fast = errors = 0
    for value in values:
        try:
            expected: Any = parse_events(value)
        except MalformedEvent as exc:
            expected = f"MalformedEvent: {exc}"
            errors += 1
        got = rows_or_error(value)
        if isinstance(expected, str):
            assert got == expected, value
            continue
        assert all(type(row) is tuple for row in got)
        assert [Event(*row) for row in got] == expected, value
        fast += len(got)
    assert fast > 500 and errors > 20      # both kinds really exercised


def file_summary(result) -> list:
    return [*summary_of(result), [(i.id, i.context(), i.events_context()) for i in result.incidents]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_file_replays_the_same_through_the_parse_worker(strategies, seed, tmp_path, monkeypatch):
    # Every shape of record, duplicates, relists, malformed lines, pods whose node is learnt
    # from an earlier event, and a storm, in batches small enough that many cross.
    monkeypatch.setattr(replay_module, "WORKER_BATCH", 100)
    path = tmp_path / "recording.jsonl"
    path.write_bytes(mixedstorm.stream(seed) + storm_bytes(namespaces=2, deployments=30))
    alone = Replayer(strategies)
    alone.feed_file(path, worker=False)
    expected = file_summary(alone.finish())
    forked = []
    through = replay_module.Replayer._from_worker

    def spied(self, process, receiver):
        forked.append(process.name)
        return through(self, process, receiver)

    monkeypatch.setattr(replay_module.Replayer, "_from_worker", spied)
    parallel = Replayer(strategies)
    parallel.feed_file(path, worker=True)
    got = parallel.finish()
    assert forked == ["aetherius-replay-parse"]
    assert file_summary(got) == expected
    assert got.records > 10 * replay_module.WORKER_BATCH and got.dead_letters and got.duplicates
    assert gc.isenabled()


def test_the_parse_worker_dying_is_an_error_not_a_short_replay(strategies, tmp_path, monkeypatch):
    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm_bytes())
    monkeypatch.setattr(replay_module, "_parse_worker", lambda fp, out, replay_end, tracker: os._exit(3))
    replayer = Replayer(strategies)
    with pytest.raises(RuntimeError, match=r"parse worker stopped \(exit code 3\) before the end"):
        replayer.feed_file(path, worker=True)
    assert gc.isenabled()


def test_a_read_error_in_the_parse_worker_is_the_replays_oserror(strategies, tmp_path, monkeypatch):
    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm_bytes())

    def failing(fp):
        yield 1, orjson.loads(storm_bytes().splitlines()[0])
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(replay_module, "read_open", failing)
    replayer = Replayer(strategies)
    with pytest.raises(OSError) as raised:
        replayer.feed_file(path, worker=True)
    assert raised.value.errno == errno.EIO and raised.value.strerror == "Input/output error"


def test_a_missing_file_fails_before_any_worker_starts(strategies, tmp_path):
    with pytest.raises(FileNotFoundError):
        Replayer(strategies).feed_file(tmp_path / "absent.jsonl", worker=True)


def test_no_worker_is_forked_from_a_process_running_other_threads():
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert replay_module._worker_helps() is False
    finally:
        release.set()
        other.join()
    assert replay_module._worker_helps() is (len(os.sched_getaffinity(0)) > 1
                                             and threading.active_count() == 1)


@pytest.mark.parametrize("one_shot", [False, True])
def test_a_one_shot_replay_freezes_what_it_kept_and_a_service_s_does_not(strategies, one_shot):
    before = gc.get_freeze_count()
    try:
        replayer = Replayer(strategies, one_shot=one_shot)
        replayer.feed(read_stream(storm_bytes()))
        result = replayer.finish()
        assert len(result.incidents) == 40 and gc.isenabled()
        kept = gc.get_freeze_count() - before
        # Frozen: the incidents, their events, the tracker's memory (out of every scan from
        # now on); else nothing is, and the collector sees them as it sees everything.
        assert (kept > 800) if one_shot else (kept == 0)
        assert gc.is_tracked(result.incidents[0]) and gc.isenabled()
    finally:
        if before == 0:
            gc.unfreeze()


_SLOW_REPLAY = """
import multiprocessing, signal, sys, time
from engine.replay import Replayer
from engine.rules.check import effective_strategies, load_valid
replayer = Replayer(effective_strategies(load_valid(sys.argv[2])).values())
process, seen = replayer.rulebase.process, [0]
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM handled, not stopping", flush=True))

def slow(event, now=None):
    seen[0] += 1
    if seen[0] == 1:     # the worker's pid, once it runs ahead of a slow replay
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    if sys.argv[3] == "fail" and seen[0] == 1500:
        raise ValueError("the rule base failed")
    time.sleep(0.002)
    return process(event, now=now)

replayer.rulebase.process = slow
replayer.feed_file(sys.argv[1], worker=True)
"""


def _gone(pid: int, within: float) -> bool:
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True     # ended (not reaped by its new parent here)
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_killed_replay_leaves_no_parse_worker_behind(tmp_path):
    # The worker blocks writing to a replay that reads slowly; the replay is killed (the OOM
    # killer, kill -9): the worker's next write fails (it holds no read end of its own) and it ends.
    import signal
    import subprocess
    import sys

    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm_bytes(namespaces=4, deployments=50))
    replay = subprocess.Popen([sys.executable, "-c", _SLOW_REPLAY, str(path), str(ROOT / "rules"), "slow"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker = 0
    try:
        worker = int(replay.stdout.readline().split()[0])
        assert not _gone(worker, 0.5)       # running ahead, then waiting on the full pipe
        replay.send_signal(signal.SIGKILL)
        replay.wait(10)
        assert _gone(worker, 10), "the parse worker outlived the replay"
    finally:
        replay.kill()
        replay.wait()
        replay.stdout.close()
        _stop(worker)


def _stop(pid: int) -> None:
    """A worker a failing test left behind is not left running."""
    import signal

    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_replay_that_fails_stops_its_worker_even_with_a_sigterm_handler(tmp_path):
    # The program installed a SIGTERM handler (inherited by the fork): the failing replay
    # still ends promptly with its own error, and its worker with it.
    import subprocess
    import sys

    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm_bytes(namespaces=4, deployments=50))
    done = subprocess.run([sys.executable, "-c", _SLOW_REPLAY, str(path), str(ROOT / "rules"), "fail"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "ValueError: the rule base failed" in done.stderr
    worker = int(done.stdout.split()[0])
    try:
        assert _gone(worker, 5)
    finally:
        _stop(worker)
    assert "SIGTERM handled" not in done.stdout


def test_a_long_run_of_bad_lines_crosses_in_batches_not_all_at_once(strategies, tmp_path, monkeypatch):
    # The worker holds one batch at most, of events or of dead letters: 2,500 malformed lines
    # in a row cross as they come, in order, and the storm after them replays as ever.
    import marshal

    batches: list[tuple[int, int]] = []

    class Spy:
        dumps = staticmethod(marshal.dumps)

        @staticmethod
        def loads(data: bytes) -> Any:
            message = marshal.loads(data)
            if message[0] == "batch":
                batches.append((len(message[2]), len(message[3])))
            return message

    monkeypatch.setattr(replay_module, "WORKER_BATCH", 100)
    monkeypatch.setattr(replay_module, "marshal", Spy)
    path = tmp_path / "recording.jsonl"
    path.write_bytes(b"".join(b"{not json %d\n" % i for i in range(2500)) + storm_bytes())
    replayer = Replayer(strategies)
    replayer.feed_file(path, worker=True)
    result = replayer.finish()
    assert [d.line for d in result.dead_letters] == list(range(1, 2501))
    assert len(result.incidents) == 40
    assert max(dead for dead, _ in batches) <= 100 and len(batches) >= 25 + 8


def test_a_worker_that_cannot_be_forked_leaves_the_replay_to_parse_itself(strategies, tmp_path, monkeypatch,
                                                                           caplog):
    import multiprocessing

    path = tmp_path / "storm.jsonl"
    path.write_bytes(storm_bytes())
    fork = multiprocessing.get_context("fork")

    def no_fork() -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    class NoFork:
        Pipe = staticmethod(fork.Pipe)

        @staticmethod
        def Process(**kwargs: Any) -> Any:     # (multiprocessing's name)
            process = fork.Process(**kwargs)
            process.start = no_fork
            return process

    monkeypatch.setattr(replay_module.multiprocessing, "get_context", lambda method: NoFork)
    caplog.set_level(logging.WARNING, logger="engine")    # whatever an earlier test left it at
    replayer = Replayer(strategies)
    replayer.feed_file(path, worker=True)
    assert len(replayer.finish().incidents) == 40
    assert "could not start the replay's parse worker" in caplog.text
    assert "parsing here instead" in caplog.text
