"""The active rule generation: rule files plus rules stored through the API, hot-swapped.

A reload reads every rule file and every workflow/strategy created through the API or
SQL, validates the whole set, and only if it is valid compiles a new rule-base
generation and makes it active, atomically between two events. An invalid set leaves
the previous generation running; every problem is logged as ``path:line: message`` and
kept for ``GET /api/v1/rules/status``. A valid set whose digest is the active one's is
no change: the generation stays (so a replica hearing of its own write, or a reload that
finds nothing new, does not count a generation). File rules are mirrored into the
``workflows`` and ``strategies`` tables (so the seed's SQL shows them) and every
workflow version is kept, so a running execution always finds the version it pinned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.policy import Policy
from engine.rulebase import RuleBase
from engine.rules.check import effective_strategies, rule_warnings, validate
from engine.rules.generation import Generation, ReloadStatus
from engine.rules.loader import Origin, RuleSet, add_strategy, add_workflow, load_rules
from engine.rules.model import Strategy, Workflow
from engine.rules.yamlsource import LineMap
from engine.storage.rules import StoredRules, strategy_spec, workflow_spec

log = logging.getLogger(__name__)

Listener = Callable[[bool, ReloadStatus], None]


def _dump(model: Workflow | Strategy) -> dict[str, Any]:
    data = model.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    data.pop("version", None)
    return data


def _digest(strategies: dict[str, Strategy], workflows: dict[str, Workflow]) -> str:
    return hashlib.sha256(json.dumps(
        [sorted(_dump(s).items(), key=str) for s in strategies.values()]
        + [sorted(_dump(w).items(), key=str) for w in workflows.values()],
        default=str, sort_keys=True).encode()).hexdigest()[:16]


class RulesManager:
    """Owns the rule base's generations. Reloads are serialized.

    ``stored`` is None without a database (rule files only)."""

    def __init__(self, directory: str | Path, rulebase: RuleBase, stored: StoredRules | None = None,
                 policy: Policy | None = None) -> None:
        self.directory = Path(directory)
        # What steps are checked against when rules load (engine.policy): the service's.
        self.policy = policy if policy is not None else Policy()
        self.rulebase = rulebase
        self.stored = stored
        self.generation: Generation | None = None
        self.status = ReloadStatus()
        self._lock = asyncio.Lock()
        self._versions: dict[tuple[str, int], Workflow] = {}
        self.listeners: list[Listener] = []   # called with (ok, status) after each reload

    async def reload(self, reason: str = "start") -> bool:
        async with self._lock:
            return await self._reload(reason)

    async def reload_stored(self, reason: str) -> bool:
        """Start from the rules last stored in the database (file rules included, as last
        mirrored): what a replica runs when its rule files are broken at start-up."""
        if self.stored is None:
            return False
        async with self._lock:
            rules = RuleSet()
            workflows, strategies = await self.stored.rows(stored_only=False)
            for row in workflows:
                add_workflow(rules, workflow_spec(row), Origin(f"db:workflows/{row['id']}", LineMap()))
                if row["id"] in rules.workflows:
                    rules.workflows[row["id"]].version = row["version"]
            for row in strategies:
                add_strategy(rules, strategy_spec(row), Origin(f"db:strategies/{row['id']}", LineMap()))
            if validate(rules, self.policy):
                log.error("The stored rules are invalid too: running with no strategies until the rule "
                          "files are fixed")
                return False
            return self._activate(rules, effective_strategies(rules), reason)

    async def _reload(self, reason: str) -> bool:
        status = self.status
        status.last_attempt, status.reason = time.time(), reason
        files = await asyncio.to_thread(load_rules, self.directory)
        # A stored (API/SQL) rule that is invalid, such as the seed's example INSERT with no
        # steps, is left out with a warning; it must not block every rule-file edit.
        excluded: set[str] = set()
        warnings: list[str] = []
        stored = await self.stored.rows(stored_only=True) if self.stored is not None else ([], [])
        while True:   # each round leaves out at least one more stored rule, so it ends
            rules = RuleSet(strategies=dict(files.strategies), workflows=dict(files.workflows),
                            origins=dict(files.origins), problems=list(files.problems),
                            files=list(files.files), invalid=set(files.invalid),
                            loose_steps=list(files.loose_steps))
            self._add_stored(rules, *stored, excluded)
            problems = validate(rules, self.policy)
            stored_bad = {p.path for p in problems if p.path.startswith("db:")}
            if not stored_bad:
                break
            warnings += [f"{p}: left out" for p in problems if p.path in stored_bad]
            excluded |= stored_bad
        for warning in warnings:
            log.warning("Stored rule %s", warning)
        if not problems:
            # Strategies that tie for the same event: valid, but worth a look (the winner is
            # defined: engine.rules.precedence).
            warnings += [str(w) for w in rule_warnings(rules)]
        status.warnings = warnings
        if problems:
            status.ok, status.problems = False, problems
            status.failures += 1
            for problem in problems:
                log.error("Rules invalid (%s), keeping generation %d: %s", reason, status.generation, problem)
            self._notify(False)
            return False
        strategies = effective_strategies(rules)
        if self.stored is not None:
            paths = {key: origin.path for key, origin in files.origins.items()}
            versions = await self.stored.mirror({i: _dump(files.workflows[i]) for i in files.workflows},
                                                {i: _dump(files.strategies[i]) for i in files.strategies},
                                                paths, str(self.directory))
            for wf_id, version in versions.items():
                if wf_id in rules.workflows:     # not a stored rule that was left out
                    rules.workflows[wf_id].version = version
        return self._activate(rules, strategies, reason)

    def _activate(self, rules: RuleSet, strategies: dict[str, Strategy], reason: str) -> bool:
        status = self.status
        digest = _digest(strategies, rules.workflows)
        versions = {wf.id: wf.version for wf in rules.workflows.values()}
        current = self.generation
        if current is not None and current.digest == digest and versions == {
                wf.id: wf.version for wf in current.workflows.values()}:
            status.ok, status.problems = True, []
            status.last_success = time.time()
            log.debug("Rules unchanged (%s): generation %d stays", reason, current.number)
            self._notify(True)
            return True
        self.rulebase.swap(strategies.values())
        # Counted here, not by the rule base (whose numbers are unique per process, across
        # rule bases): a replica's first generation is 1, and each one activated adds 1.
        number = current.number + 1 if current is not None else 1
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

    @staticmethod
    def _add_stored(rules: RuleSet, workflows: list[dict[str, Any]], strategies: list[dict[str, Any]],
                    excluded: set[str]) -> None:
        """Workflows and strategies created through the API or SQL (files win on a clash),
        except those in ``excluded`` (origin paths of stored rules found invalid)."""
        for table, kind, rows, known, add, spec in (
                ("workflows", "workflow", workflows, rules.workflows, add_workflow, workflow_spec),
                ("strategies", "strategy", strategies, rules.strategies, add_strategy, strategy_spec)):
            for row in rows:
                origin = f"db:{table}/{row['id']}"
                if origin in excluded:
                    continue
                if row["id"] in known:
                    log.warning("stored %s %s is shadowed by a rule file with the same id", kind, row["id"])
                    continue
                add(rules, spec(row), Origin(origin, LineMap()))

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
        if cached is not None or self.stored is None:
            return cached
        definition = await self.stored.workflow_version(workflow_id, version)
        if definition is None:
            return None
        rules = RuleSet()
        add_workflow(rules, workflow_spec(definition),
                     Origin(f"db:workflow_versions/{workflow_id}@{version}", LineMap()))
        wf = rules.workflows.get(workflow_id)
        if wf is not None:
            wf.version = version
            self._versions[(workflow_id, version)] = wf
        return wf
