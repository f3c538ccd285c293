"""The offline pipeline: a recorded stream -> intake -> rule base -> correlation, on event time.

The same components as the service, driven by a virtual-time scheduler whose clock
follows the events' own timestamps, so a day of events replays in seconds and always
gives the same incidents.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import logging
import marshal
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, BinaryIO

from reactivex.abc import DisposableBase
from reactivex.internal import ArgumentOutOfRangeException
from reactivex.scheduler.scheduler import Scheduler

from engine.correlation import Correlator, Incident
from engine.events import Event, OccurrenceTracker, parse_events, parse_rows, read_open, read_stream
from engine.exceptions import MalformedEvent
from engine.rulebase import RuleBase
from engine.rules.model import Strategy

log = logging.getLogger(__name__)

FLUSH_HORIZON = 10 * 365 * 86400.0

# A file's events cross from the parse worker in batches of this many (marshalled tuples):
# big enough that a batch costs little per event, small enough that the worker is never far
# ahead (the pipe's buffer and one batch: the worker's memory stays flat).
WORKER_BATCH = 1000
# How long a replay that stopped early waits for its worker to see the closed pipe and end,
# before it kills it.
WORKER_GRACE = 2.0


@dataclass
class DeadLetter:
    line: int
    reason: str


@dataclass
class ReplayResult:
    incidents: list[Incident] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    ignored: int = 0
    rulebase: dict[str, int] = field(default_factory=dict)
    correlation: dict[str, int] = field(default_factory=dict)

    def arms(self) -> dict[str, dict[str, int]]:
        """Incidents per experiment arm: strategy id -> arm -> incidents."""
        out: dict[str, dict[str, int]] = {}
        for incident in self.incidents:
            if incident.arm is not None:
                counts = out.setdefault(incident.strategy.id, {})
                counts[incident.arm] = counts.get(incident.arm, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        arms = self.arms()
        return {
            "kind": "summary", "records": self.records, "duplicates": self.duplicates,
            "ignored": self.ignored, "dead_letters": len(self.dead_letters),
            "incidents": len(self.incidents), **{f"rules_{k}": v for k, v in self.rulebase.items()},
            **{f"correlation_{k}": v for k, v in self.correlation.items()},
            **({"arms": arms} if arms else {}),
        }


@contextlib.contextmanager
def _no_cyclic_gc(freeze: bool = False) -> Iterator[None]:
    """The cyclic garbage collector off for a replay's loop, as it was before after.

    A replay allocates millions of short-lived objects, all freed by reference counting,
    and keeps a few hundred thousand (incidents and their samples, the tracker's memory).
    The collector finds next to nothing to collect in it (a few hundred objects in a
    storm of 200,000 events) yet walked the live ones hundreds of times: a tenth of
    the time. Whatever cyclic garbage there is goes at its next run, after the loop.

    With ``freeze`` (a process that ends with its replay: ``aetherius replay``), what the
    loop kept is frozen instead (``gc.freeze``, as :mod:`engine.gctune` freezes what
    start-up kept): the first collection after the loop would otherwise walk every one of
    those objects at once, 60 ms after a storm of 200,000 events.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if collecting:
            gc.enable()


class _Timer(DisposableBase):
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def dispose(self) -> None:
        self.cancelled = True


class EventTimeScheduler(Scheduler):
    """A virtual-time scheduler whose clock the replay moves to each event's time.

    It does what reactivex's ``HistoricalScheduler`` does for the correlator (absolute
    timers, run in the order of their due time, then of their scheduling, each with the
    clock at its due time; ``advance_to`` runs every timer due by then) without its
    per-timer costs: no lock, no ``ScheduledItem`` and disposables around each timer, no
    Python-level comparisons in the heap. A storm's 10,000 groups arm three timers
    each; they were a fifth of a replay's time. Times stay datetimes, as there, so the
    correlator sees the very same clock values.
    """

    def __init__(self, initial_clock: datetime) -> None:
        super().__init__()
        self._now = initial_clock
        self._heap: list[tuple[datetime, int, Any, Any, _Timer]] = []
        self._order = itertools.count()
        self._running = False

    @property
    def now(self) -> datetime:
        return self._now

    def schedule(self, action: Any, state: Any = None) -> DisposableBase:
        return self.schedule_absolute(self._now, action, state)

    def schedule_relative(self, duetime: Any, action: Any, state: Any = None) -> DisposableBase:
        return self.schedule_absolute(self._now + self.to_timedelta(duetime), action, state)

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None) -> DisposableBase:
        timer = _Timer()
        heapq.heappush(self._heap, (self.to_datetime(duetime), next(self._order), action, state, timer))
        return timer

    def advance_to(self, moment: datetime) -> None:
        """Run every timer due by ``moment`` (those they schedule too), then set the clock
        to it. A call from inside a timer does nothing."""
        if moment < self._now:
            raise ArgumentOutOfRangeException()
        if moment == self._now or self._running:
            return
        self._running = True
        heap = self._heap
        try:
            while heap and heap[0][0] <= moment:
                due, _, action, state, timer = heapq.heappop(heap)
                if due > self._now:
                    self._now = due
                if not timer.cancelled:
                    action(self, state)
        finally:
            self._running = False
        self._now = moment


class Replayer:
    """Feeds decoded stream items through the pipeline on a virtual clock."""

    def __init__(self, strategies: Iterable[Strategy],
                 on_incident: Callable[[Incident], None] | None = None, *, one_shot: bool = False) -> None:
        """``one_shot``: this process ends with the replay (a command, not a service), so
        what each feed keeps is frozen out of the garbage collector's sight (_no_cyclic_gc)."""
        self.rulebase = RuleBase(strategies)
        self.one_shot = one_shot
        self.tracker = OccurrenceTracker()
        self.scheduler: EventTimeScheduler | None = None
        self.correlator: Correlator | None = None
        self.result = ReplayResult()
        self._on_incident = on_incident
        self._clock = 0.0

    def _ensure_clock(self, start: float) -> Correlator:
        if self.correlator is None:
            self.scheduler = EventTimeScheduler(datetime.fromtimestamp(start, UTC))
            self._clock = start
            self.correlator = Correlator(self.scheduler, ids=itertools.count(1))
            self.correlator.formed.subscribe(self._formed)
        return self.correlator

    def _formed(self, incident: Incident) -> None:
        self.result.incidents.append(incident)
        if self._on_incident is not None:
            self._on_incident(incident)
        # Offline, the workflow "runs" at once (dry-run): the incident closes on forming
        # and its cooldown starts.
        assert self.correlator is not None
        self.correlator.close(incident)

    def feed(self, items: Iterable[tuple[int, Any]]) -> None:
        """Feed decoded stream items (:func:`~engine.events.read_file`'s): malformed ones
        become dead letters, the rest go through the pipeline in order."""
        with _no_cyclic_gc(self.one_shot):
            self._run(self._events(items))

    def feed_file(self, path: str | Path, *, worker: bool | None = None) -> None:
        """Feed a recorded stream from a file (``"-"``: standard input, read whole), as
        :meth:`feed` of :func:`~engine.events.read_file`.

        With ``worker`` (by default for a file, where there is more than one core and this
        process runs no other thread), the file is read, decoded and parsed in a forked
        process, which also learns the pods' nodes (OccurrenceTracker.learn_row), while this
        one counts occurrences and runs the rule base and the correlator on what it has
        parsed, in the same order: the same result in about two thirds of the time. (The
        nodes it learnt stay in it: a later feed of this replayer does not know them.) The
        file is opened here, so a missing one raises the usual OSError before anything
        starts."""
        if str(path) == "-":
            self.feed(read_stream(sys.stdin.buffer.read()))
            return
        with open(path, "rb") as fp:
            started = None
            if _worker_helps() if worker is None else worker:
                try:
                    started = self._start_worker(fp)
                except OSError as exc:      # EAGAIN, ENOMEM: not the file's fault
                    log.warning("could not start the replay's parse worker (%s); parsing here instead", exc)
            if started is None:
                self.feed(read_open(fp))
                return
            try:
                with _no_cyclic_gc(self.one_shot):
                    # (the worker learnt the nodes: only the counting is left to do here)
                    self._run(self._from_worker(*started), self.tracker.count)
            finally:
                _stop_worker(*started)      # the worker ends with the replay, whichever way it ends

    def _start_worker(self, fp: BinaryIO) -> tuple[BaseProcess, Connection]:
        """Fork the parse worker of ``fp``: (the process, the replay's end of its pipe)."""
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_parse_worker, args=(fp, sender, receiver, self.tracker),
                                  daemon=True, name="aetherius-replay-parse")
        try:
            process.start()
        except BaseException:
            receiver.close()
            raise
        finally:
            sender.close()
        return process, receiver

    def _from_worker(self, process: BaseProcess, receiver: Connection) -> Generator[Event, None, None]:
        """The events the parse worker reads, in order (each batch of rows one marshalled
        message on the pipe); its dead letters and ignored records go into the result as
        they arrive."""
        result = self.result
        loads = marshal.loads
        while True:
            try:
                message = loads(receiver.recv_bytes())
            except EOFError:
                process.join()
                raise RuntimeError(f"the replay's parse worker stopped (exit code {process.exitcode})"
                                   " before the end of the file") from None
            kind = message[0]
            if kind == "batch":
                _, ignored, dead, rows = message
                result.ignored += ignored
                result.dead_letters.extend(DeadLetter(line, reason) for line, reason in dead)
                yield from itertools.starmap(Event, rows)
            elif kind == "end":
                return
            elif kind == "oserror":
                raise OSError(message[1], message[2])
            else:
                raise RuntimeError(f"the replay's parse worker failed: {message[1]}")

    def feed_events(self, events: Iterable[Event]) -> None:
        """Feed events already parsed (a rehearsal builds them), in time order."""
        with _no_cyclic_gc(self.one_shot):
            self._run(events)

    def _events(self, items: Iterable[tuple[int, Any]]) -> Iterator[Event]:
        result = self.result
        dead = result.dead_letters
        for line, obj in items:
            if isinstance(obj, MalformedEvent):
                dead.append(DeadLetter(line, str(obj)))
                continue
            try:
                events = parse_events(obj)
            except MalformedEvent as exc:
                dead.append(DeadLetter(line, str(exc)))
                continue
            if not events:
                result.ignored += 1
                continue
            yield from events

    def _run(self, events: Iterable[Event], observe: Callable[[Event], bool] | None = None) -> None:
        # The hot loop of a replay: one pass per event record, attribute lookups hoisted.
        result = self.result
        observe = observe or self.tracker.observe
        process = self.rulebase.process
        correlator = self.correlator
        clock = self._clock
        scheduler = self.scheduler
        records = duplicates = 0
        try:
            for event in events:
                records += 1
                if not observe(event):
                    duplicates += 1
                    continue
                ts = event.last_seen or event.first_seen      # Event.time
                if correlator is None:
                    correlator = self._ensure_clock(ts)
                    scheduler = self.scheduler
                    clock = self._clock
                if ts > clock:
                    clock = self._clock = ts
                    assert scheduler is not None
                    scheduler.advance_to(datetime.fromtimestamp(ts, UTC))
                hits = process(event, now=clock)
                if hits:
                    add = correlator.add
                    for hit in hits:
                        add(hit, clock)
        finally:
            result.records += records
            result.duplicates += duplicates

    def finish(self) -> ReplayResult:
        """Let every pending burst run out its quiet period."""
        if self.scheduler is not None:
            with _no_cyclic_gc(self.one_shot):
                self.scheduler.advance_to(datetime.fromtimestamp(self._clock + FLUSH_HORIZON, UTC))
        self.result.rulebase = dict(self.rulebase.stats)
        if self.correlator is not None:
            self.result.correlation = dict(self.correlator.stats)
        self.rulebase.close()
        return self.result


def _stop_worker(process: BaseProcess, receiver: Connection) -> None:
    """The parse worker ended, or made to: once the pipe is closed its next write fails and
    it ends; one still busy (inside a long line) after ``WORKER_GRACE`` is killed."""
    receiver.close()
    process.join(WORKER_GRACE)
    if process.is_alive():
        process.kill()
        process.join()


def _worker_helps() -> bool:
    """A parse worker pays off with a second core (one this process may run on); it is
    forked, so only from a process with no other thread (a fork copies one thread, and
    whatever locks the others held)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores > 1 and threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def _parse_worker(fp: BinaryIO, out: Connection, replay_end: Connection, tracker: OccurrenceTracker) -> None:
    """In the forked worker: read, decode and parse ``fp``, sending (``"batch"``, ignored,
    dead letters as (line, reason), events as their fields) messages, then ``("end",)``; an
    error of reading as ``("oserror", errno, text)``, any other as ``("error", text)``."""
    # The replay's end of the pipe, inherited: closed, so that once the replay is gone
    # (even killed) a write here fails with EPIPE and the worker ends instead of waiting.
    replay_end.close()
    # Signals are the replay's: Ctrl-C is its to handle (it stops this worker), and a
    # handler it installed for SIGTERM must not keep this one alive when it is stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    gc.disable()        # short-lived, and it keeps nothing: reference counting frees it all
    send = out.send_bytes
    dumps = marshal.dumps
    learn = tracker.learn_row   # the replay's tracker as it was when forked
    ignored, dead, rows = 0, [], []
    try:
        for line, obj in read_open(fp):
            if isinstance(obj, MalformedEvent):
                dead.append((line, str(obj)))
            else:
                try:
                    parsed = parse_rows(obj)
                except MalformedEvent as exc:
                    dead.append((line, str(exc)))
                else:
                    if not parsed:
                        ignored += 1
                    for row in parsed:
                        rows.append(learn(row))
            # (a long run of bad lines is sent as it comes too: the worker holds one batch)
            if len(rows) >= WORKER_BATCH or len(dead) >= WORKER_BATCH:
                send(dumps(("batch", ignored, dead, rows)))
                ignored, dead, rows = 0, [], []
        send(dumps(("batch", ignored, dead, rows)))
        send(dumps(("end",)))
    except BrokenPipeError:
        pass            # the replay stopped reading: nothing to say
    except Exception as exc:
        failure = (("oserror", exc.errno or 0, exc.strerror or str(exc)) if isinstance(exc, OSError)
                   else ("error", f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(OSError):
            send(dumps(failure))
    finally:
        out.close()


def replay_bytes(data: bytes, strategies: Iterable[Strategy],
                 on_incident: Callable[[Incident], None] | None = None) -> ReplayResult:
    replayer = Replayer(strategies, on_incident)
    replayer.feed(read_stream(data))
    return replayer.finish()
