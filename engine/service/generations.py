"""The active rule generation: rule files plus rules stored through the API, hot-swapped.

A reload reads every rule file and every workflow/strategy created through the API or
SQL, validates the whole set, and only if it is valid compiles a new rule-base
generation and makes it active, atomically between two events. An invalid set leaves
the previous generation running; every problem is logged as ``path:line: message`` and
kept for ``GET /api/v1/rules/status``. File rules are mirrored into the ``workflows`` and
``strategies`` tables (so the seed's SQL shows them) and every workflow version is kept,
so a running execution always finds the version it pinned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import asyncpg

from engine.rulebase import RuleBase
from engine.rules.check import effective_strategies, validate
from engine.rules.generation import Generation, ReloadStatus
from engine.rules.loader import Origin, RuleSet, add_strategy, add_workflow, load_rules
from engine.rules.model import Strategy, Workflow
from engine.rules.yamlsource import LineMap
from engine.storage.rules import STRATEGY_COLUMNS, WORKFLOW_COLUMNS, strategy_spec, workflow_spec

log = logging.getLogger(__name__)

MIRROR_LOCK = 0x4165746866  # one advisory lock id for mirroring rule files into the tables



def _dump(model: Workflow | Strategy) -> dict[str, Any]:
    data = model.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    data.pop("version", None)
    return data


class RulesManager:
    """Owns the rule base's generations. Reloads are serialized."""

    def __init__(self, directory: str | Path, rulebase: RuleBase, pool: asyncpg.Pool | None = None) -> None:
        self.directory = Path(directory)
        self.rulebase = rulebase
        self.pool = pool
        self.generation: Generation | None = None
        self.status = ReloadStatus()
        self._lock = asyncio.Lock()
        self._versions: dict[tuple[str, int], Workflow] = {}
        self.listeners: list[Any] = []   # called with (ok: bool, status) after each reload
        self.last_write = 0.0             # when a reload last wrote to the rule tables

    async def reload(self, reason: str = "start") -> bool:
        async with self._lock:
            return await self._reload(reason)

    async def reload_stored(self, reason: str) -> bool:
        """Start from the rules last stored in the database (file rules included, as last
        mirrored): what a replica runs when its rule files are broken at start-up."""
        if self.pool is None:
            return False
        async with self._lock:
            rules = RuleSet()
            for row in await self.pool.fetch("SELECT * FROM workflows ORDER BY id"):
                add_workflow(rules, workflow_spec(dict(row)), Origin(f"db:workflows/{row['id']}", LineMap()))
                if row["id"] in rules.workflows:
                    rules.workflows[row["id"]].version = row["version"]
            for row in await self.pool.fetch("SELECT * FROM strategies ORDER BY id"):
                origin = Origin(f"db:strategies/{row['id']}", LineMap())
                add_strategy(rules, strategy_spec(dict(row)), origin)
            if validate(rules):
                log.error("The stored rules are invalid too: running with no strategies until the rule "
                          "files are fixed")
                return False
            return self._activate(rules, effective_strategies(rules), reason)

    async def _reload(self, reason: str) -> bool:
        status = self.status
        status.last_attempt, status.reason = time.time(), reason
        files = await asyncio.to_thread(load_rules, self.directory)
        file_workflows = set(files.workflows)
        file_strategies = set(files.strategies)
        # A stored (API/SQL) rule that is invalid, such as the seed's example INSERT with no
        # steps, is left out with a warning; it must not block every rule-file edit.
        excluded: set[str] = set()
        warnings: list[str] = []
        while True:   # each round leaves out at least one more stored rule, so it ends
            rules = RuleSet(strategies=dict(files.strategies), workflows=dict(files.workflows),
                            origins=dict(files.origins), problems=list(files.problems),
                            files=list(files.files), invalid=set(files.invalid))
            if self.pool is not None:
                await self._add_stored(rules, excluded)
            problems = validate(rules)
            stored_bad = {p.path for p in problems if p.path.startswith("db:")}
            if not stored_bad:
                break
            warnings += [f"{p}: left out" for p in problems if p.path in stored_bad]
            excluded |= stored_bad
        status.warnings = warnings
        for warning in warnings:
            log.warning("Stored rule %s", warning)
        if problems:
            status.ok, status.problems = False, problems
            status.failures += 1
            for problem in problems:
                log.error("Rules invalid (%s), keeping generation %d: %s", reason, status.generation, problem)
            self._notify(False)
            return False
        strategies = effective_strategies(rules)
        if self.pool is not None:
            versions = await self._mirror(rules, file_workflows, file_strategies)
            for wf_id, version in versions.items():
                if wf_id in rules.workflows:     # not a stored rule that was left out
                    rules.workflows[wf_id].version = version
        return self._activate(rules, strategies, reason)

    def _activate(self, rules: RuleSet, strategies: dict[str, Strategy], reason: str) -> bool:
        status = self.status
        digest = hashlib.sha256(json.dumps(
            [sorted(_dump(s).items(), key=str) for s in strategies.values()]
            + [sorted(_dump(w).items(), key=str) for w in rules.workflows.values()],
            default=str, sort_keys=True).encode()).hexdigest()[:16]
        self.rulebase.swap(strategies.values())
        number = self.rulebase.generation.number if self.rulebase.generation else 0
        self.generation = Generation(number, strategies, dict(rules.workflows), digest,
                                     files=len(rules.files))
        for wf in rules.workflows.values():
            self._versions[(wf.id, wf.version)] = wf
        status.ok, status.problems, status.generation = True, [], number
        status.last_success = time.time()
        status.reloads += 1
        log.info("Rules reloaded: generation %d (%d strategies, %d workflows) [%s, digest %s]",
                 number, len(strategies), len(rules.workflows), reason, digest)
        self._notify(True)
        return True

    def _notify(self, ok: bool) -> None:
        for listener in self.listeners:
            try:
                listener(ok, self.status)
            except Exception:
                log.exception("rules listener failed")

    async def _add_stored(self, rules: RuleSet, excluded: set[str] = frozenset()) -> None:
        """Workflows and strategies created through the API or SQL (files win on a clash),
        except those in ``excluded`` (origin paths of stored rules found invalid)."""
        assert self.pool is not None
        for row in await self.pool.fetch("SELECT * FROM workflows WHERE source <> 'file' ORDER BY id"):
            if f"db:workflows/{row['id']}" in excluded:
                continue
            if row["id"] in rules.workflows:
                log.warning("stored workflow %s is shadowed by a rule file with the same id", row["id"])
                continue
            add_workflow(rules, workflow_spec(dict(row)), Origin(f"db:workflows/{row['id']}", LineMap()))
        for row in await self.pool.fetch("SELECT * FROM strategies WHERE source <> 'file' ORDER BY id"):
            if f"db:strategies/{row['id']}" in excluded:
                continue
            if row["id"] in rules.strategies:
                log.warning("stored strategy %s is shadowed by a rule file with the same id", row["id"])
                continue
            add_strategy(rules, strategy_spec(dict(row)), Origin(f"db:strategies/{row['id']}", LineMap()))

    async def _mirror(self, rules: RuleSet, file_workflows: set[str],
                      file_strategies: set[str]) -> dict[str, int]:
        """Write changed file rules to the tables; return every workflow's current version.
        Nothing is written when nothing changed (a write NOTIFYs every replica)."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            # Replicas starting together mirror the same files: one at a time, in id order.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIRROR_LOCK)
            await self._mirror_table(conn, "workflows",
                                     {i: _dump(rules.workflows[i]) for i in file_workflows},
                                     lambda spec: {**{c: spec[c] for c in WORKFLOW_COLUMNS[1:]},
                                                   "timeout": f"{spec['timeout']:g}s"})
            await self._mirror_table(conn, "strategies",
                                     {i: _dump(rules.strategies[i]) for i in file_strategies},
                                     lambda spec: {c: spec[c] for c in STRATEGY_COLUMNS[1:]})
            return {r["id"]: r["version"] for r in await conn.fetch("SELECT id, version FROM workflows")}

    async def _mirror_table(self, conn: asyncpg.Connection, table: str, specs: dict[str, dict[str, Any]],
                            columns_of: Any) -> None:
        """Upsert the changed file rules of one table (columns plus the whole spec) and
        delete the file rules that are gone."""
        stored = {r["id"]: r for r in await conn.fetch(f"SELECT id, definition, source FROM {table}")}
        for ident in sorted(specs):
            spec = specs[ident]
            row = stored.get(ident)
            if row is not None and row["source"] == "file" and row["definition"] == spec:
                continue
            values = columns_of(spec)
            names = list(values)
            params = ", ".join(f"${i + 2}" for i in range(len(names)))
            self.last_write = time.time()
            await conn.execute(
                f"INSERT INTO {table} (id, {', '.join(names)}, definition, source) "
                f"VALUES ($1, {params}, ${len(names) + 2}, 'file') "
                f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = EXCLUDED.{n}' for n in names)}, "
                "definition = EXCLUDED.definition, source = 'file'",
                ident, *values.values(), spec)
        gone = [i for i, r in stored.items() if r["source"] == "file" and i not in specs]
        if gone:
            self.last_write = time.time()
            await conn.execute(f"DELETE FROM {table} WHERE id = ANY($1::text[])", gone)

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None:
        """The active workflow, or the exact version an execution pinned."""
        gen = self.generation
        if gen is not None and workflow_id in gen.workflows:
            current = gen.workflows[workflow_id]
            if version is None or current.version == version:
                return current
        if version is None:
            return None
        cached = self._versions.get((workflow_id, version))
        if cached is not None or self.pool is None:
            return cached
        row = await self.pool.fetchrow(
            "SELECT definition FROM workflow_versions WHERE workflow_id = $1 AND version = $2",
            workflow_id, version)
        if row is None:
            return None
        rules = RuleSet()
        add_workflow(rules, workflow_spec(dict(row["definition"])),
                      Origin(f"db:workflow_versions/{workflow_id}@{version}", LineMap()))
        wf = rules.workflows.get(workflow_id)
        if wf is not None:
            wf.version = version
            self._versions[(workflow_id, version)] = wf
        return wf
