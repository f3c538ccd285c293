"""Intake: batches of raw events in (NATS or HTTP), each event recorded once with where it
went (unmatched, pending in a burst, attached, suppressed, inhibited, dead letter).

A batch is parsed, deduplicated and run through the rule base and the correlator in one
synchronous pass (so a rule reload cannot cut into it), then recorded in one statement. A
NATS batch is acked only once recorded; recording batch N overlaps with processing batch
N+1, at most two batches in flight (the next fetch waits). Events are never lost: a hit
whose burst has not yet formed an incident stays ``pending`` in the store and is
correlated again after a crash (:meth:`Intake.recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from engine.bounded import RecentSet
from engine.correlation import Correlator
from engine.events import Event, OccurrenceTracker, decode, parse_events
from engine.exceptions import MalformedEvent
from engine.metrics import Metrics
from engine.payloads import DEAD_LETTER_BYTES, MAX_DEPTH, Excerpt, depth_exceeds, may_nest_deeper
from engine.rulebase import RuleBase
from engine.service.background import Background
from engine.service.bus import Message, ack_all
from engine.service.contracts import DeadLetter, EventRow, Records, Stats
from engine.service.recorded import Recorded
from engine.statuses import IncidentStatus
from engine.storage.outage import Availability, retrying, transient

log = logging.getLogger(__name__)

# (raw bytes, decoded JSON or the Excerpt of a payload too long to hold, subject, message id, headers)
Item = tuple[Any, str | None, str | None, dict[str, Any]]
# (event id, incident id, field, strategy id, occurrences): a count for an incident already
# recorded, summed once the batch is recorded, for the events that turned out new.
Delta = tuple[str, str, str, str, int]
State = tuple[str, str | None, str | None]

# Event ids remembered for deduplication before the database's key (which catches the rest):
# as 64-bit hashes, at most this many, for at most this long (engine.bounded: at least half of
# each), which covers NATS redeliveries (``nats.ack_wait``, 30 s) at thousands of events/s.
RECENT_IDS = 100_000
RECENT_SECONDS = 600.0


@dataclass
class Batch:
    """A batch of input, processed and waiting to be recorded."""

    source: str
    number: int = 0           # engine.service.recorded: incidents wait for it to be recorded
    rows: list[EventRow] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)
    duplicates: int = 0
    ignored: int = 0
    # Strategy hits and suppressed occurrences, counted into the metrics once per batch.
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)
    suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)


class Intake:
    def __init__(self, *, records: Records, rulebase: RuleBase, correlator: Correlator, metrics: Metrics,
                 stats: Stats, background: Background, recorded: Recorded,
                 max_event_bytes: int, dead_letter_bytes: int = DEAD_LETTER_BYTES,
                 clock: Callable[[], float] = time.time, postgres: Availability | None = None,
                 room: Callable[[], Awaitable[None]] | None = None) -> None:
        self.records = records
        self.rulebase = rulebase
        self.correlator = correlator
        self.metrics = metrics
        self.stats = stats
        self.background = background
        # Which batches are recorded: an incident attaches its events only once they exist.
        self.recorded = recorded
        self.max_event_bytes = max_event_bytes
        self.dead_letter_bytes = dead_letter_bytes
        self.clock = clock
        self.postgres = postgres or Availability("PostgreSQL")
        self.tracker = OccurrenceTracker()
        self._recent = RecentSet(RECENT_IDS, RECENT_SECONDS)
        self._in_flight = asyncio.Semaphore(2)   # batches processed but not yet recorded
        # Waited for after each batch off the bus, before the next fetch: the admission queue's
        # room (Executions.room), so a long overload leaves events in JetStream.
        self.room = room
        self._redelivered, self._redelivered_said = 0, -60.0

    # ------------------------------------------------------------------ entry points

    async def ingest(self, items: Sequence[Item], source: str) -> dict[str, int]:
        """Process and record a batch; returns counts: accepted, duplicates, dead_letters, ignored."""
        return await self.persist(self.prepare(items, source))

    async def ingest_messages(self, messages: list[Message]) -> None:
        """A batch off the bus: processed now, recorded and then acked in the background."""
        items: list[Item] = [(m.data, m.subject, m.msg_id, m.headers) for m in messages]
        redelivered = sum(1 for m in messages if m.deliveries > 1)
        if redelivered:
            self._note_redelivered(redelivered)
        await self._in_flight.acquire()
        try:
            batch = self.prepare(items, "nats")
        except BaseException:
            self._in_flight.release()
            raise
        self.background.spawn(self._record_and_ack(batch, messages))
        if self.room is not None:
            await self.room()

    async def _record_and_ack(self, batch: Batch, messages: list[Message]) -> None:
        try:
            await self.persist(batch)
        except Exception as exc:
            # Not acked, so redelivered: let the redelivery be processed, not dropped as seen.
            for event, _, _ in batch.rows:
                self._recent.discard(event.id)
            if transient(exc):
                self.postgres.failed(exc)   # one line per outage, not a traceback per batch
            else:
                log.exception("recording a batch of %d events failed; it will be redelivered", len(messages))
            return
        finally:
            self._in_flight.release()
        self.postgres.ok()
        with contextlib.suppress(Exception):
            await ack_all(messages)

    def _note_redelivered(self, count: int) -> None:
        """Messages NATS sent again (not acked before: a crash, an outage): counted, and said
        at most once a minute with how many."""
        self.metrics.events_redelivered.inc(count)
        self._redelivered += count
        now = time.monotonic()
        if now - self._redelivered_said >= 60:
            log.info("NATS redelivered %d message(s) not acked before (recorded once, by id)",
                     self._redelivered)
            self._redelivered, self._redelivered_said = 0, now

    # ------------------------------------------------------------------ processing

    def prepare(self, items: Sequence[Item], source: str) -> Batch:
        """Parse, deduplicate and process a batch (synchronous: no reload can cut into it).

        Duplicates are dropped by id (in memory for recent ids here, and by the table's
        primary key across replicas and restarts when the batch is recorded); each new
        event goes through the rule base and the correlator."""
        batch = Batch(source, self.recorded.next())
        try:
            self._prepare(batch, items, source)
        except BaseException:
            self.recorded.done(batch.number)
            raise
        return batch

    def _prepare(self, batch: Batch, items: Sequence[Item], source: str) -> None:
        good: list[tuple[Event, str | None]] = []
        for raw, subject, msg_id, headers in items:
            try:
                events = parse_events(self._decode(raw))
            except MalformedEvent as exc:
                batch.dead.append(self.dead_letter(source, subject, str(exc), raw, headers))
                continue
            except Exception as exc:  # a parser bug must not stop the intake: dead-letter it
                log.exception("unexpected error parsing an event")
                reason = f"internal error: {type(exc).__name__}: {exc}"
                batch.dead.append(self.dead_letter(source, subject, reason, raw, headers))
                continue
            if not events:
                batch.ignored += 1
                continue
            if msg_id and len(events) == 1 and not events[0].id.startswith("pod:"):
                events[0].id = str(msg_id)
            # A Pod's states keep their own ids (pod, container, reason, restart): the same
            # status in another message is the same event.
            good.extend((event, subject) for event in events)
        self.metrics.events_in.labels(source).inc(len(good))
        for event, subject in good:
            if event.id in self._recent:
                batch.duplicates += 1
                continue
            self.remember(event.id)
            batch.rows.append((event, subject, self.process(event, batch.deltas, batch=batch)))
        self._count(batch)

    def _decode(self, raw: Any) -> Any:
        if isinstance(raw, Excerpt):                # a line too long to hold (HTTP NDJSON)
            raise MalformedEvent(f"payload of {raw.size} bytes exceeds {self.max_event_bytes}")
        if isinstance(raw, bytes | bytearray):      # raw bytes off the wire
            if len(raw) > self.max_event_bytes:
                raise MalformedEvent(f"payload of {len(raw)} bytes exceeds {self.max_event_bytes}")
            data = bytes(raw)
            value = decode(data)
            if may_nest_deeper(data) and depth_exceeds(value):
                raise MalformedEvent(f"nested deeper than {MAX_DEPTH} levels")
            return value
        if depth_exceeds(raw):                      # a JSON value decoded already (HTTP)
            raise MalformedEvent(f"nested deeper than {MAX_DEPTH} levels")
        size = len(orjson.dumps(raw, default=str))
        if size > self.max_event_bytes:
            raise MalformedEvent(f"event of {size} bytes exceeds {self.max_event_bytes}")
        return raw

    def dead_letter(self, source: str, subject: str | None, reason: str, raw: Any,
                    headers: dict[str, Any]) -> DeadLetter:
        """What is recorded of an input that cannot be taken in: at most ``dead_letter_bytes``
        of it, with its size and SHA-256 (a decoded value is kept as its JSON)."""
        if isinstance(raw, Excerpt):
            kept: Excerpt | None = raw
        elif isinstance(raw, bytes | bytearray):
            kept = Excerpt.of(raw, self.dead_letter_bytes)
        else:
            try:
                kept = Excerpt.of(orjson.dumps(raw, default=str), self.dead_letter_bytes)
            except (TypeError, orjson.JSONEncodeError):   # too deep to encode: the reason says so
                kept = None
        raw_head = None if kept is None else bytes(kept.head[:self.dead_letter_bytes])
        return DeadLetter(source, subject, reason, raw_head, {k: str(v) for k, v in headers.items()},
                          None if kept is None else kept.size, None if kept is None else kept.sha256)

    def process(self, event: Event, deltas: list[Delta] | None = None, *, recovered: bool = False,
                batch: Batch | None = None) -> State:
        """Rule base + correlation for one event; return (state, strategy id, incident id).
        Synchronous on purpose: a generation swap cannot happen in the middle of it.
        Counts for incidents already recorded are appended to ``deltas``; the metrics are
        counted in ``batch`` if given (once per batch), else at once."""
        counts = batch if batch is not None else Batch("")
        state = self._process(event, deltas, recovered, counts)
        if batch is None:
            self._count(counts)
        return state

    def _process(self, event: Event, deltas: list[Delta] | None, recovered: bool, counts: Batch) -> State:
        if not recovered and not self.tracker.observe(event):
            return ("duplicate", None, None)
        hits = self.rulebase.process(event, now=self.clock())
        if not hits:
            return ("unmatched", None, None)
        hit = hits[0]
        incident = self.correlator.add(hit)
        counts.hits[(hit.strategy.id, "inhibited" if hit.inhibited_by else "hit")] += 1
        if incident is None:
            return ("inhibited" if hit.inhibited_by else "unmatched", hit.strategy.id, None)
        record_id = incident.record_id

        def add(name: str, value: int) -> None:
            # Until the incident's row exists its counts travel with the INSERT instead.
            if record_id is not None and deltas is not None and incident.recorded:
                deltas.append((event.id, record_id, name, hit.strategy.id, value))

        if hit.inhibited_by:
            add("inhibited", event.count)
            return ("inhibited", hit.strategy.id, record_id or incident.id)
        if incident.status == IncidentStatus.FORMING:
            return ("pending", hit.strategy.id, None)
        if incident.status == IncidentStatus.OPEN:
            add("late", event.count)
            return ("attached", hit.strategy.id, record_id)
        assert incident.status == IncidentStatus.CLOSED
        add("suppressed", event.count)
        if incident.arm is not None:
            counts.suppressed[(hit.strategy.id, incident.arm)] += event.count
        return ("suppressed", hit.strategy.id, record_id)

    def _count(self, batch: Batch) -> None:
        for (strategy_id, kind), n in batch.hits.items():
            self.metrics.hits.labels(strategy_id, kind).inc(n)
        for (strategy_id, arm), n in batch.suppressed.items():
            self.metrics.experiment_suppressed.labels(strategy_id, arm).inc(n)

    def remember(self, event_id: str) -> None:
        self._recent.add(event_id)

    # ------------------------------------------------------------------ recording

    async def persist(self, batch: Batch) -> dict[str, int]:
        """Record a prepared batch: dead letters, then every event with where it went."""
        try:
            return await self._persist(batch)
        finally:
            self.recorded.done(batch.number)

    async def _persist(self, batch: Batch) -> dict[str, int]:
        source, dead, rows = batch.source, batch.dead, batch.rows
        if dead:
            await self.records.dead_letters_many(dead)
            self.metrics.dead_letters.labels(source).inc(len(dead))
            self.stats.dead_letters += len(dead)
            for letter in dead:
                log.warning("Dead letter from %s%s: %s (%d bytes)", source,
                            f" {letter.subject}" if letter.subject else "", letter.reason, letter.size or 0)
        recorded = await self._record(source, rows)
        # Recorded before by another replica (or before a restart): not counted again here.
        duplicates = batch.duplicates + len(rows) - len(recorded)
        for incident_id, delta in _sum_deltas(batch.deltas, recorded).items():
            self.background.spawn(retrying(self.postgres, partial(self.records.add_to_incident, incident_id,
                                                                  **delta)))
        self.metrics.events_dedup.inc(duplicates)
        self.stats.events += len(recorded)
        self.stats.duplicates += duplicates
        return {"accepted": len(recorded), "duplicates": duplicates, "dead_letters": len(dead),
                "ignored": batch.ignored}

    async def _record(self, source: str, rows: list[EventRow]) -> set[str]:
        try:
            return await self.records.record_events(rows)
        except Exception as exc:  # one row the database refuses must not sink the batch
            if transient(exc):
                raise           # an outage, not a bad row: the batch waits for redelivery
            log.warning("recording a batch of %d failed (%s: %s); recording one by one",
                        len(rows), type(exc).__name__, exc)
        recorded: set[str] = set()
        for row in rows:
            try:
                recorded |= await self.records.record_events([row])
            except Exception as row_exc:
                reason = f"cannot be recorded: {type(row_exc).__name__}: {row_exc}"
                await self.records.dead_letters_many([self.dead_letter(source, row[1], reason,
                                                                       row[0].to_dict(), {})])
                self.metrics.dead_letters.labels(source).inc()
                recorded.add(row[0].id)   # accounted for, as a dead letter
        return recorded

    # ------------------------------------------------------------------ recovery

    async def recover(self, rows: list[dict[str, Any]]) -> None:
        """Correlate again events recorded before a stop (``pending`` hits, and events
        recorded but never processed), and record the state each ends in."""
        states: list[tuple[str, str, str | None, str | None]] = []
        for row in rows:
            payload = row["payload"]
            fields = {k: payload.get(k) for k in Event.__dataclass_fields__ if k in payload}
            fields.setdefault("labels", {})
            try:
                event = Event(**fields)
            except TypeError:
                states.append((row["id"], "unmatched", None, None))
                continue
            self.remember(event.id)
            # Recorded but never processed: its occurrences count as the tracker would have.
            state = self.process(event, recovered=row.get("state") == "pending")
            states.append((row["id"], *state))
        await self.records.set_event_states(states)


def _sum_deltas(deltas: list[Delta], recorded: set[str]) -> dict[str, dict[str, Any]]:
    """Per incident, the counts to add: of the events recorded now (a redelivery was
    counted when it was first recorded)."""
    counts: dict[str, dict[str, Any]] = {}
    for event_id, incident_id, name, strategy_id, value in deltas:
        if event_id not in recorded:
            continue
        delta = counts.setdefault(incident_id, {})
        if name == "inhibited":
            covered = delta.setdefault("inhibited", {})
            covered[strategy_id] = covered.get(strategy_id, 0) + value
        else:
            delta[name] = delta.get(name, 0) + value
    return counts
