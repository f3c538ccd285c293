"""``{{ expression }}`` templates in step configs, rendered from the execution context.

A string that is exactly one ``{{ ... }}`` renders to the expression's value (a number
stays a number); otherwise each placeholder is replaced by its value as text, and None
renders as an empty string. Expressions are the sandboxed ones of
:mod:`engine.expressions`, vetted when rules load.

One render, whatever it holds, spends one expression budget: its placeholders, their text
and the text they are joined into, and the text a whole-string placeholder's value would
make once written out (as JSON or text: a few bytes of shared references can print as
gigabytes). A template whose text would not fit is refused
(ExpressionError, a non-retryable step error), never cut short: rendered values are
command arguments and remediation targets, where a shortened value is a different value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from engine.budget import Budget, charge_export, kind
from engine.budget_ops import charge_sequence
from engine.exceptions import ExpressionError
from engine.expressions import Expression, new_budget

_PLACEHOLDER = re.compile(r"\{\{\s*(.+?)\s*\}\}")


def placeholders(text: str) -> Iterator[str]:
    for match in _PLACEHOLDER.finditer(text):
        yield match.group(1)


def walk_strings(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every string inside nested dicts/lists, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk_strings(item, (*path, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from walk_strings(item, (*path, i))


@lru_cache(maxsize=4096)
def _compiled(text: str) -> tuple[Expression | None, tuple[tuple[str, Expression | None], ...]]:
    found = list(_PLACEHOLDER.finditer(text))
    if len(found) == 1 and found[0].group(0) == text.strip():
        return Expression(found[0].group(1)), ()
    parts: list[tuple[str, Expression | None]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append((text[pos:match.start()], None))
        parts.append(("", Expression(match.group(1))))
        pos = match.end()
    parts.append((text[pos:], None))
    return None, tuple(parts)


def render(value: Any, names: Mapping[str, Any], budget: Budget | None = None) -> Any:
    """Render every template inside ``value`` (strings, dicts, lists), on one budget."""
    if budget is None:
        budget = new_budget()
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole, parts = _compiled(value)
        if whole is not None:
            result = whole.evaluate(names, budget)
            try:
                charge_export(budget, result)
            except ExpressionError as exc:
                raise ExpressionError(f"template {_excerpt(value)}: {exc}") from None
            return result
        out = [text if expr is None else expr.evaluate_text(names, budget) for text, expr in parts]
        try:
            charge_sequence(budget, "the rendered text", "", sum(map(len, out)), max(map(kind, out)))
        except ExpressionError as exc:
            raise ExpressionError(f"template {_excerpt(value)}: {exc}") from None
        return "".join(out)
    if isinstance(value, Mapping):
        return {k: render(v, names, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, names, budget) for v in value]
    return value


def _excerpt(text: str) -> str:
    return repr(text) if len(text) <= 120 else repr(text[:120]) + "..."
