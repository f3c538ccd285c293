"""The console's rule pages: every workflow and strategy with its source, version and
validation status; one rule's definition (read-only with its path when it comes from a rule
file) and its stored versions with diffs; and the editor for rules stored through the API.

The editor validates a draft with the API's own check (:func:`engine.api.rules._check`: the
loader and the whole-set checks of ``aetherius check``, against the active rules) and shows
each problem at its line in the YAML. Saving needs the same permission as ``POST
/api/v1/workflows`` (edit rules) and writes through the same queries, so the audit trigger
records the editor's token as the author, then reloads the rules as an API write does.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from engine.api.deps import Deps
from engine.api.rules import STRATEGY, WORKFLOW, Kind, _check, _reload
from engine.api.versions import _diff, _list
from engine.rules.history import to_yaml
from engine.rules.yamlsource import load_documents, yaml_error_line
from engine.storage.console import ConsoleQueries
from engine.storage.versions import RuleVersions
from engine.ui.access import UI, ConsoleError, User, read_form
from engine.ui.render import HEADERS, page

router = APIRouter(prefix=UI, include_in_schema=False)
KINDS = {"workflow": WORKFLOW, "strategy": STRATEGY}
SHOWN_VERSIONS = 20     # the newest versions listed, each with its diff from the one before
NEW = {
    "workflow": "id: my_workflow\nname: What it does\ntrigger_type: manual\nsteps:\n  - id: tell\n"
                "    type: notification\n"
                "    config: {channel: log, message: \"hello from {{ incident.id }}\"}\n",
    "strategy": "id: my_strategy\nname: What it matches\nworkflow_id: my_workflow\npriority: 5\nsymptoms:\n"
                "  - type: event\n    conditions: {kind: Pod, reason: BackOff}\n",
}


def _kind(kind: str) -> Kind:
    found = KINDS.get(kind)
    if found is None:
        raise ConsoleError(404, "no such kind of rule (workflow or strategy)")
    return found


def _yaml(kind: str, value: Any) -> str:
    return to_yaml(kind, value) if isinstance(value, dict) else yaml.safe_dump(value, allow_unicode=True)


def _deps(deps: Any) -> tuple[Any, Any]:
    if deps.queries is None or deps.rules is None:
        raise ConsoleError(503, "the service is starting")
    return deps.queries, deps.rules


@router.get("/rules")
async def rules_page(request: Request, deps: Deps, who: User) -> Response:
    q, rules = _deps(deps)
    gen = rules.generation
    console = ConsoleQueries(q.pool)
    workflows = [WORKFLOW.summary(r, gen) for r in await q.list_workflows()]
    strategies = [STRATEGY.summary(r, gen) for r in await q.list_strategies()]
    return page(request, "rules.html", who, workflows=workflows, strategies=strategies,
                rules_status=rules.status,
                paths={"workflow": await console.rule_paths("workflow"),
                       "strategy": await console.rule_paths("strategy")})


@router.get("/rules/{kind}/{rule_id}")
async def rule_page(request: Request, kind: str, rule_id: str, deps: Deps, who: User) -> Response:
    q, rules = _deps(deps)
    k = _kind(kind)
    row = await k.get(q, rule_id)
    if row is None:
        raise ConsoleError(404, f"no {kind} {rule_id[:100]!r}")
    console = ConsoleQueries(q.pool)
    store = RuleVersions(q.pool)
    # The versions API's own history and diffs (engine.api.versions): who made each, and what changed.
    try:
        history = (await _list(k, rule_id, q, store))["items"]
    except HTTPException:
        history = []
    versions = []
    for item in reversed(history[-SHOWN_VERSIONS:]):
        diff = await _diff(k, rule_id, item["version"], None, store)
        versions.append({**item, "diff": diff["diff"], "identical": diff["identical"]})
    path = (await console.rule_paths(kind)).get(rule_id)
    return page(request, "rule.html", who, kind=kind, row=k.summary(row, rules.generation),
                text=_yaml(kind, k.definition(row)), versions=versions, total_versions=len(history),
                file_path=path)


async def _validate(k: Kind, text: str, q: Any, rules: Any,
                    replacing: str | None) -> tuple[Any, Any, list[dict]]:
    """(document, spec, problems [{line, msg, kind}]) of a draft, as ``aetherius check`` sees it."""
    try:
        documents = load_documents(text)
    except yaml.YAMLError as exc:
        line, message = yaml_error_line(exc, text)
        return None, None, [{"line": line, "msg": message, "type": "yaml"}]
    if len(documents) != 1 or not isinstance(documents[0][0], dict):
        return None, None, [{"line": 1, "msg": f"the editor takes one {k.name}: one YAML mapping",
                             "type": "yaml"}]
    raw, lines = documents[0]
    raw = orjson.loads(orjson.dumps(raw, default=str))    # as the API would receive it: JSON
    drop = (k.name, replacing) if replacing else None
    spec, errors = await _check(k, raw, q, rules.generation, drop, rules.policy)
    problems = [{"line": lines.line(tuple(e["loc"])) if e["type"] == "rule_error" else 0, "msg": e["msg"],
                 "type": e["type"], "loc": ".".join(map(str, e["loc"]))} for e in errors]
    return raw, spec, sorted(problems, key=lambda p: p["line"])


def _editor(request: Request, who: Any, kind: str, text: str, rule_id: str | None, problems: list[dict],
            checked: bool, status: int = 200) -> Response:
    template = "editor_problems.html" if request.headers.get("hx-request") else "editor.html"
    at: dict[int, list[str]] = {}
    for problem in problems:
        at.setdefault(problem["line"], []).append(problem["msg"])
    # The draft with each problem under its line (the first 400 lines; the list above has them all).
    annotated = [(n, line, at.get(n, [])) for n, line in enumerate(text.splitlines()[:400], start=1)] \
        if problems else []
    return page(request, template, who, status=status, kind=kind, text=text, rule_id=rule_id or "",
                problems=problems, checked=checked, lines=text.count("\n") + 1, annotated=annotated)


@router.get("/editor/{kind}")
async def editor(request: Request, kind: str, deps: Deps, who: User, id: str | None = None) -> Response:
    q, _ = _deps(deps)
    k = _kind(kind)
    text = NEW[kind]
    if id:
        row = await k.get(q, id)
        if row is None:
            raise ConsoleError(404, f"no {kind} {id[:100]!r}")
        if row["source"] == "file":
            raise ConsoleError(409, f"{kind} {id!r} is defined in a rule file: edit it there")
        text = _yaml(kind, k.definition(row))
    return _editor(request, who, kind, text, id, [], checked=False)


@router.post("/editor/{kind}/check")
async def check(request: Request, kind: str, deps: Deps, who: User) -> Response:
    q, rules = _deps(deps)
    form = await read_form(request)
    text, rule_id = form.get("yaml", ""), form.get("id") or None
    _, _, problems = await _validate(_kind(kind), text, q, rules, rule_id)
    return _editor(request, who, kind, text, rule_id, problems, checked=True)


@router.post("/editor/{kind}/save")
async def save(request: Request, kind: str, deps: Deps, who: User) -> Response:
    q, rules = _deps(deps)
    k = _kind(kind)
    form = await read_form(request)
    text, rule_id = form.get("yaml", ""), form.get("id") or None
    raw, spec, problems = await _validate(k, text, q, rules, rule_id)
    if not problems:
        ident = raw.get("id")
        existing = await k.get(q, ident) if isinstance(ident, str) else None
        gen = rules.generation
        if (existing is not None and existing["source"] == "file") or (
                existing is None and gen is not None and ident in k.of(gen)):
            problems = [{"line": 1, "msg": f"{kind} {ident!r} is defined in a rule file: edit it there",
                         "type": "conflict", "loc": "id"}]
        elif rule_id is not None and ident != rule_id:
            problems = [{"line": 1, "msg": f"the id is {rule_id!r}: to make another {kind}, start a new one",
                         "type": "conflict", "loc": "id"}]
        elif rule_id is None and existing is not None:
            problems = [{"line": 1, "msg": f"{kind} {ident!r} exists: open it to edit it", "type": "conflict",
                         "loc": "id"}]
        else:
            values = k.values(raw, spec)
            row = await (k.update(q, ident, values, who) if rule_id else k.insert(q, ident, values, who))
            if row is None:
                problems = [{"line": 1, "msg": f"{kind} {ident!r} changed meanwhile: reload it",
                             "type": "conflict", "loc": "id"}]
            else:
                await _reload(rules, Response())
                return RedirectResponse(f"{UI}/rules/{kind}/{ident}", status_code=303, headers=HEADERS)
    return _editor(request, who, kind, text, rule_id, problems, checked=True, status=422)
