"""Sandboxed expressions for decisions and conditions, on simpleeval.

An expression is parsed and vetted once, when rules load (``aetherius check`` reports
refusals), and evaluated many times. Vetting is stricter than simpleeval's own guard:

- only the names the context offers (``analysis``, ``steps``, ``incident``, ``event``,
  ``events``, ``context``, ``decision``) and a few pure functions;
- no attribute or name that starts with ``_`` (``().__class__``, ``__import__``);
- no method calls except a short list of harmless string/dict methods;
- a budget: constants are bounded, ``**`` needs a small constant exponent, the source is
  bounded in length and AST size, and simpleeval's own runtime caps are lowered.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

import simpleeval

from engine.exceptions import ExpressionError

ROOT_NAMES = frozenset(
    {"analysis", "steps", "incident", "event", "events", "context", "decision", "workflow"}
)
FUNCTIONS: dict[str, Any] = {
    "len": len, "int": int, "float": float, "str": str, "bool": bool,
    "min": min, "max": max, "abs": abs, "round": round, "lower": lambda s: str(s).lower(),
}
SAFE_METHODS = frozenset(
    {"get", "lower", "upper", "strip", "startswith", "endswith", "keys", "values", "items",
     "count", "split"}
)
MAX_SOURCE = 2000
MAX_NODES = 200
MAX_INT = 10**12
MAX_STR_CONST = 10_000
MAX_EXPONENT = 64


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    """simpleeval with tighter runtime caps; one instance per thread of use."""


def _attribute_view(value: Any) -> Any:
    """Let ``analysis.root_cause`` read dict keys the way the seed's YAML writes them."""
    if isinstance(value, _AttrDict):
        return value
    if isinstance(value, Mapping):
        return _AttrDict(value)
    if isinstance(value, list | tuple):
        return [_attribute_view(v) for v in value]
    return value


class _Missing:
    """What a missing key reads as: None-like, and reading through it stays missing, so
    ``analysis.summary`` is empty before any analysis ran instead of an error."""

    __slots__ = ()

    def __getattr__(self, name: str) -> _Missing:
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> _Missing:
        return self

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _Missing)

    def __hash__(self) -> int:
        return hash(None)

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return "None"


MISSING = _Missing()


class _AttrDict(dict):
    """A read-only view of a dict whose keys read as attributes, wrapped lazily.

    A key wins over a dict method of the same name (``output.items`` is kubectl's
    ``items`` list, not ``dict.items``); a missing key reads as None, not an error.
    """

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and dict.__contains__(self, name):
            return _attribute_view(dict.__getitem__(self, name))
        try:
            return super().__getattribute__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            return MISSING

    def __getitem__(self, key: Any) -> Any:
        return _attribute_view(dict.__getitem__(self, key))

    def get(self, key: Any, default: Any = None) -> Any:
        return _attribute_view(dict.get(self, key, default))


def _vet(tree: ast.AST, source: str) -> None:
    for count, node in enumerate(ast.walk(tree), 1):
        if count > MAX_NODES:
            raise ExpressionError(f"expression too large (more than {MAX_NODES} nodes): {source!r}")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ExpressionError(f"name {node.id!r} is not allowed")
            if node.id not in ROOT_NAMES and node.id not in FUNCTIONS and node.id not in (
                "True", "False", "None", "true", "false", "null"
            ):
                allowed = ", ".join(sorted(ROOT_NAMES))
                raise ExpressionError(f"unknown name {node.id!r} (use one of: {allowed})")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise ExpressionError(f"attribute {node.attr!r} is not allowed")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                if func.id not in FUNCTIONS:
                    raise ExpressionError(f"function {func.id!r} is not allowed")
            elif isinstance(func, ast.Attribute):
                if func.attr not in SAFE_METHODS:
                    raise ExpressionError(f"method {func.attr!r} is not allowed")
            else:
                raise ExpressionError("only named functions may be called")
            if node.keywords:
                raise ExpressionError("keyword arguments are not allowed")
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_INT:
                raise ExpressionError(f"constant {value!r} exceeds the budget ({MAX_INT})")
            if isinstance(value, str | bytes) and len(value) > MAX_STR_CONST:
                raise ExpressionError("string constant exceeds the budget")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right
            if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int)
                    and abs(exp.value) <= MAX_EXPONENT):
                raise ExpressionError(
                    f"'**' needs a constant exponent of at most {MAX_EXPONENT}"
                )
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            # 'a' * 10**9 style memory bombs: both sides unknown-size is fine at runtime
            # (simpleeval caps strings), a literal string times a big constant is not.
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, int) and side.value > 10_000:
                    raise ExpressionError("multiplication by a large constant exceeds the budget")
        elif isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp
                        | ast.GeneratorExp | ast.NamedExpr | ast.Starred | ast.JoinedStr):
            raise ExpressionError(f"{type(node).__name__} is not allowed in expressions")


class Expression:
    """A vetted, pre-parsed expression. ``evaluate(names)`` is safe to call many times."""

    __slots__ = ("_evaluator", "_tree", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("expression is empty")
        if len(source) > MAX_SOURCE:
            raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
        self.source = source
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"syntax error in {source!r}: {exc.msg}") from None
        _vet(tree, source)
        evaluator = _Evaluator(functions=FUNCTIONS, names={})
        try:
            self._tree = evaluator.parse(source.strip())
        except Exception as exc:
            raise ExpressionError(f"cannot parse {source!r}: {exc}") from None
        # A missing key reads as MISSING, which equals None but is not None: make
        # ``x is None`` mean ``x == None`` so both spellings work on missing keys.
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Compare):
                node.ops = [ast.Eq() if isinstance(op, ast.Is) else ast.NotEq()
                            if isinstance(op, ast.IsNot) else op for op in node.ops]
        self._evaluator = evaluator

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        # A name with no value yet (``analysis`` before any analysis ran) reads as missing,
        # so ``analysis.summary`` is empty rather than an error.
        view = {k: MISSING if v is None else _attribute_view(v) for k, v in names.items()}
        view.update(true=True, false=False, null=None)
        self._evaluator.names = view
        try:
            result = self._evaluator.eval(self.source.strip(), previously_parsed=self._tree)
            return None if isinstance(result, _Missing) else result
        except simpleeval.InvalidExpression as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError,
                AttributeError, OverflowError, MemoryError) as exc:
            raise ExpressionError(f"{self.source!r}: {type(exc).__name__}: {exc}") from None
        finally:
            self._evaluator.names = {}

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


# Lower simpleeval's runtime caps: our expressions compare fields, they do not compute.
simpleeval.MAX_POWER = 10_000
simpleeval.MAX_STRING_LENGTH = 100_000
