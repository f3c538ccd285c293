"""Sandboxed expressions for decisions and conditions, on simpleeval.

An expression is parsed and vetted once, when rules load (``aetherius check`` reports
refusals), and evaluated many times. Vetting is stricter than simpleeval's own guard:

- only the names the context offers (``analysis``, ``steps``, ``incident``, ``event``,
  ``events``, ``context``, ``decision``, ``workflow``) and a few pure functions;
- no attribute or name that starts with ``_`` (``().__class__``, ``__import__``);
- no method calls except a short list of harmless string/dict methods;
- what can be bounded before running is: constants, ``**`` (a small constant exponent),
  ``<<`` by a constant, repetition by a constant, ``%`` widths and precisions in a constant
  format, ``round()`` to a constant precision, and the source's length and AST size.

Each evaluation then runs on a budget (:mod:`engine.budget`): every operator, function and
method predicts the size of what it makes and the work it does, charges it, and refuses
before running if the budget would be exceeded. The budget's numbers are the ``MAX_*`` run-time
constants below (:data:`LIMITS`). Values from the context are read in place, never copied.
"""

from __future__ import annotations

import ast
import reprlib
import types
from collections.abc import Callable, Mapping
from typing import Any

import simpleeval

from engine import budget_ops as ops
from engine.budget import MISSING, Budget, Limits
from engine.budget_ops import FORMAT_SPEC
from engine.exceptions import ExpressionError

ROOT_NAMES = frozenset(
    {"analysis", "steps", "incident", "event", "events", "context", "decision", "workflow"}
)
#: The functions an expression may call; each takes the budget first.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": ops.f_len, "int": ops.f_int, "float": ops.f_float, "str": ops.f_str, "bool": ops.f_bool,
    "min": ops.f_min, "max": ops.f_max, "abs": ops.f_abs, "round": ops.f_round, "lower": ops.f_lower,
}
#: The methods an expression may call, whatever the object; each refuses types it does not know.
METHODS: dict[str, Callable[..., Any]] = {
    "get": ops.m_get, "lower": ops.m_lower, "upper": ops.m_upper, "strip": ops.m_strip,
    "startswith": ops.m_startswith, "endswith": ops.m_endswith, "keys": ops.m_keys,
    "values": ops.m_values, "items": ops.m_items, "count": ops.m_count, "split": ops.m_split,
}
SAFE_METHODS = frozenset(METHODS)
OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: ops.add, ast.Sub: ops.sub, ast.Mult: ops.mul, ast.Div: ops.truediv,
    ast.FloorDiv: ops.floordiv, ast.Mod: ops.mod, ast.Pow: ops.power, ast.LShift: ops.lshift,
    ast.RShift: ops.rshift, ast.BitOr: ops.bitor, ast.BitAnd: ops.bitand, ast.BitXor: ops.bitxor,
    ast.USub: ops.neg, ast.UAdd: ops.pos, ast.Invert: ops.invert, ast.Not: ops.not_,
    ast.Eq: ops.eq, ast.NotEq: ops.ne, ast.Lt: ops.lt, ast.LtE: ops.le, ast.Gt: ops.gt,
    ast.GtE: ops.ge, ast.In: ops.contains, ast.NotIn: ops.not_contains,
}

# Checked when rules load.
MAX_SOURCE = 2000
MAX_NODES = 200
MAX_INT = 10**12
MAX_STR_CONST = 10_000
MAX_EXPONENT = 64
MAX_REPEAT = 10_000            # repetition (``'a' * n``, ``[x] * n``) by a constant

# The run-time budget of one evaluation; a decision's conditions share one, and so do the
# placeholders of one rendered template. These are the defaults of LIMITS, which a service
# configuration may replace (``dataclasses.replace(LIMITS, allocation=...)``).
MAX_ALLOCATION = 8 * 2**20     # bytes, the sum of every value an evaluation makes
MAX_WORK = 1_000_000           # units of work (~10 ns each: one element compared or copied)
MAX_SECONDS = 0.025            # CPU seconds: a backstop behind the two above
MAX_INT_BITS = 4096            # the largest integer arithmetic may make (~1233 digits)
MAX_WIDTH = 1000               # the largest ``%`` width or precision
MAX_NDIGITS = 400              # the largest ``round()`` precision, either sign
MAX_NUMBER_TEXT = 1000         # the longest string ``int()`` / ``float()`` parse
MAX_DEPTH = 100                # the deepest nesting ``str()`` and comparisons follow

LIMITS = Limits(allocation=MAX_ALLOCATION, work=MAX_WORK, seconds=MAX_SECONDS,
                int_bits=MAX_INT_BITS, width=MAX_WIDTH, ndigits=MAX_NDIGITS,
                number_text=MAX_NUMBER_TEXT, depth=MAX_DEPTH)


def new_budget() -> Budget:
    """A fresh budget of :data:`LIMITS`, for one evaluation or several that share it."""
    return Budget(LIMITS)


# Held by an evaluator between evaluations: it refuses anything, and keeps nothing alive.
_IDLE = Budget(Limits(allocation=0, work=0, seconds=0.0, int_bits=0, width=0, ndigits=0,
                      number_text=0, depth=0))


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    """simpleeval whose operators, functions and methods charge a budget before they run.

    One instance per expression and thread of use. Attribute reads follow the seed's YAML:
    ``analysis.root_cause`` reads a dict key, a key wins over a method of the same name
    (``output.items`` is kubectl's ``items`` list), and a missing key reads as MISSING.
    """

    def __init__(self) -> None:
        # Copies: simpleeval adds list/tuple/dict/set to the dict it is given.
        super().__init__(operators=dict(OPERATORS), functions=dict(FUNCTIONS), names={})
        self.budget = _IDLE

    def _eval(self, node: ast.AST) -> Any:
        try:
            handler = self.nodes[type(node)]
        except KeyError:
            raise simpleeval.FeatureNotAvailable(
                f"Sorry, {type(node).__name__} is not available in this evaluator") from None
        result = handler(node)
        # simpleeval walks every result for forbidden functions and modules, which costs the
        # size of the value at each node. No value here can hold one (names come from JSON,
        # the functions are ours and _vet allows no other call), so look at the value itself.
        if isinstance(result, types.ModuleType) or (
                callable(result) and not isinstance(result, type) and _forbidden(result)):
            raise simpleeval.FeatureNotAvailable("This function is forbidden")
        return result

    def _operator(self, op: ast.AST) -> Callable[..., Any]:
        try:
            return self.operators[type(op)]
        except KeyError:
            raise simpleeval.OperatorNotDefined(op, self.expr) from None

    def _eval_binop(self, node: ast.BinOp) -> Any:
        return self._operator(node.op)(self.budget, self._eval(node.left), self._eval(node.right))

    def _eval_unaryop(self, node: ast.UnaryOp) -> Any:
        return self._operator(node.op)(self.budget, self._eval(node.operand))

    def _eval_compare(self, node: ast.Compare) -> Any:
        right = self._eval(node.left)
        result: Any = True
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            left, right = right, self._eval(comparator)
            result = self._operator(op)(self.budget, left, right)
            if not result:
                break
        return result

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        obj = self._eval(node.value)
        name = node.attr
        if isinstance(obj, dict):
            if name in obj:
                return obj[name]
            return getattr(obj, name, MISSING) if name in METHODS else MISSING
        if obj is MISSING:
            return MISSING
        # Other values show only the methods an expression may call, and a number's parts:
        # nothing else of theirs is ours to hand out (``events.append``, ``keys().mapping``).
        if name not in METHODS and name not in _NUMBER_PARTS:
            raise simpleeval.FeatureNotAvailable(f"attribute {name!r} of a {type(obj).__name__} "
                                                 "is not allowed")
        try:
            return getattr(obj, name)
        except AttributeError:
            raise simpleeval.AttributeDoesNotExist(name, self.expr) from None

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        key = self._eval(node.slice)
        if container is MISSING:
            return MISSING
        if isinstance(key, slice) and isinstance(container, str | list | tuple):
            count = len(range(*key.indices(len(container))))
            ops.charge_sequence(self.budget, "a slice", container, count)
        elif isinstance(container, dict) and not ops.cheap(key):
            self.budget.spend("a lookup", work=ops.weight(self.budget, key))
        return container[key]

    # Literals store None where a value is missing: see engine.budget.contains.
    def _eval_list(self, node: ast.List) -> Any:
        return [None if v is MISSING else v for v in super()._eval_list(node)]

    def _eval_tuple(self, node: ast.Tuple) -> Any:
        return tuple(None if v is MISSING else v for v in super()._eval_tuple(node))

    def _eval_set(self, node: ast.Set) -> Any:
        return {None if v is MISSING else v for v in super()._eval_set(node)}

    def _eval_dict(self, node: ast.Dict) -> Any:
        return {None if k is MISSING else k: None if v is MISSING else v
                for k, v in super()._eval_dict(node).items()}

    def _eval_call(self, node: ast.Call) -> Any:
        func = node.func
        if isinstance(func, ast.Name):
            function = FUNCTIONS.get(func.id)
            if function is None:
                raise simpleeval.FunctionNotDefined(func.id, self.expr)
            return function(self.budget, *[self._eval(a) for a in node.args])
        if isinstance(func, ast.Attribute):
            obj = self._eval(func.value)
            if isinstance(obj, dict) and func.attr in obj:     # the key wins: call its value
                raise TypeError(f"{type(obj[func.attr]).__name__!r} object is not callable")
            method = METHODS.get(func.attr)
            if method is None:
                raise simpleeval.FeatureNotAvailable(f"method {func.attr!r} is not allowed")
            return method(self.budget, obj, *[self._eval(a) for a in node.args])
        raise simpleeval.FeatureNotAvailable("only named functions may be called")


_NUMBER_PARTS = frozenset({"real", "imag", "numerator", "denominator"})


def _forbidden(value: Any) -> bool:
    try:
        return value in simpleeval.DISALLOW_FUNCTIONS
    except TypeError:                      # unhashable
        return False


def _const_int(node: ast.AST) -> int | None:
    """The value of an integer constant, a negative one included (``-5`` is a UnaryOp)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _const_int(node.operand)
        return None if inner is None else -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def _vet_name(node: ast.Name) -> None:
    if node.id.startswith("_"):
        raise ExpressionError(f"name {node.id!r} is not allowed")
    if node.id not in ROOT_NAMES and node.id not in FUNCTIONS and node.id not in (
        "True", "False", "None", "true", "false", "null"
    ):
        allowed = ", ".join(sorted(ROOT_NAMES))
        raise ExpressionError(f"unknown name {node.id!r} (use one of: {allowed})")


def _vet_attribute(node: ast.Attribute) -> None:
    if node.attr.startswith("_"):
        raise ExpressionError(f"attribute {node.attr!r} is not allowed")


def _vet_call(node: ast.Call) -> None:
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
    name, args = getattr(func, "id", None), node.args
    if name == "round" and len(args) == 2:
        ndigits = _const_int(args[1])
        if ndigits is not None and abs(ndigits) > MAX_NDIGITS:
            raise ExpressionError(f"round() to {ndigits} digits exceeds the budget ({MAX_NDIGITS})")
    if name in ("int", "float") and args and isinstance(args[0], ast.Constant) \
            and isinstance(args[0].value, str) and len(args[0].value) > MAX_NUMBER_TEXT:
        raise ExpressionError(f"{name}() of a string longer than {MAX_NUMBER_TEXT} characters "
                              "exceeds the budget")


def _vet_constant(node: ast.Constant) -> None:
    value = node.value
    if isinstance(value, bytes):
        raise ExpressionError("bytes are not allowed in expressions")
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ExpressionError(f"constant {value!r} exceeds the budget ({MAX_INT})")
    if isinstance(value, str) and len(value) > MAX_STR_CONST:
        raise ExpressionError("string constant exceeds the budget")


def _vet_format(fmt: str, args: ast.AST) -> None:
    """Widths and precisions of a constant ``%`` format, written or given as constants."""
    positional = list(args.elts) if isinstance(args, ast.Tuple) else [args]
    for match in FORMAT_SPEC.finditer(fmt):
        key, _, width, precision, conv = match.groups()
        for what, text in (("width", width), ("precision", precision)):
            if text == "*":
                value = _const_int(positional.pop(0)) if positional else None
                shown = str(value)
            elif text:
                value = int(text) if len(text) <= 9 else MAX_WIDTH + 1
                shown = text if len(text) <= 20 else text[:20] + "..."
            else:
                continue
            if value is not None and abs(value) > MAX_WIDTH:
                raise ExpressionError(f"{what} {shown} in a '%' format exceeds the budget ({MAX_WIDTH})")
        if conv != "%" and key is None and positional:
            positional.pop(0)


def _vet_binop(node: ast.BinOp) -> None:
    op = node.op
    if type(op) not in OPERATORS:
        raise ExpressionError(f"operator {type(op).__name__} is not allowed")
    if isinstance(op, ast.Pow):
        exp = node.right
        if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int)
                and abs(exp.value) <= MAX_EXPONENT):
            raise ExpressionError(f"'**' needs a constant exponent of at most {MAX_EXPONENT}")
    elif isinstance(op, ast.Mult):
        # 'a' * 10**9: repetition by a large constant. A product of unknown sizes is left to
        # the run-time budget.
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and isinstance(side.value, int) and side.value > MAX_REPEAT:
                raise ExpressionError("multiplication by a large constant exceeds the budget")
    elif isinstance(op, ast.LShift):
        shift = _const_int(node.right)
        if shift is not None and shift > MAX_INT_BITS:
            raise ExpressionError(f"'<<' by {shift} exceeds the budget ({MAX_INT_BITS} bits)")
    elif isinstance(op, ast.Mod) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
        _vet_format(node.left.value, node.right)


def _vet_dict(node: ast.Dict) -> None:
    if any(key is None for key in node.keys):
        raise ExpressionError("dict unpacking (**) is not allowed in expressions")


def _refuse(node: ast.AST) -> None:
    raise ExpressionError(f"{type(node).__name__} is not allowed in expressions")


_VET: dict[type, Callable[[Any], None]] = {
    ast.Name: _vet_name, ast.Attribute: _vet_attribute, ast.Call: _vet_call,
    ast.Constant: _vet_constant, ast.BinOp: _vet_binop, ast.Dict: _vet_dict,
    **dict.fromkeys((ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                     ast.NamedExpr, ast.Starred, ast.JoinedStr), _refuse),
}


def _vet(tree: ast.AST, source: str) -> None:
    for count, node in enumerate(ast.walk(tree), 1):
        if count > MAX_NODES:
            raise ExpressionError(f"expression too large (more than {MAX_NODES} nodes): {source!r}")
        check = _VET.get(type(node))
        if check is not None:
            check(node)


def _message(exc: BaseException) -> str:
    """An error's text, bounded: a KeyError quotes its key, which may be a huge string."""
    if isinstance(exc, KeyError) and exc.args:
        return reprlib.repr(exc.args[0])
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


class Expression:
    """A vetted, pre-parsed expression. ``evaluate(names)`` is safe to call many times."""

    __slots__ = ("_evaluator", "_source", "_tree", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("expression is empty")
        if len(source) > MAX_SOURCE:
            raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
        self.source = source
        self._source = source.strip()
        try:
            tree = ast.parse(self._source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"syntax error in {source!r}: {exc.msg}") from None
        except (MemoryError, RecursionError):
            raise ExpressionError(f"expression too deeply nested: {source!r}") from None
        _vet(tree, source)
        evaluator = _Evaluator()
        try:
            self._tree = evaluator.parse(self._source)
        except Exception as exc:
            raise ExpressionError(f"cannot parse {source!r}: {exc}") from None
        # A missing key reads as MISSING, which equals None but is not None: make
        # ``x is None`` mean ``x == None`` so both spellings work on missing keys.
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Compare):
                node.ops = [ast.Eq() if isinstance(op, ast.Is) else ast.NotEq()
                            if isinstance(op, ast.IsNot) else op for op in node.ops]
        self._evaluator = evaluator

    def evaluate(self, names: Mapping[str, Any], budget: Budget | None = None) -> Any:
        """The value of the expression over ``names``, spending ``budget`` (a fresh one of
        :data:`LIMITS` if none is given). Raises ExpressionError, naming the expression, when
        it fails or would exceed the budget."""
        # A name with no value yet (``analysis`` before any analysis ran) reads as missing,
        # so ``analysis.summary`` is empty rather than an error.
        view = {k: MISSING if v is None else v for k, v in names.items()}
        view.update(true=True, false=False, null=None)
        evaluator = self._evaluator
        evaluator.names = view
        evaluator.budget = budget if budget is not None else new_budget()
        try:
            result = evaluator.eval(self._source, previously_parsed=self._tree)
            return None if result is MISSING else result
        except ExpressionError as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None
        except simpleeval.InvalidExpression as exc:
            raise ExpressionError(f"{self.source!r}: {_message(exc)}") from None
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError,
                AttributeError, OverflowError, MemoryError, RecursionError) as exc:
            raise ExpressionError(f"{self.source!r}: {type(exc).__name__}: {_message(exc)}") from None
        finally:
            evaluator.names = {}
            evaluator.budget = _IDLE

    def evaluate_text(self, names: Mapping[str, Any], budget: Budget) -> str:
        """The value as text, as a ``{{ placeholder }}`` inside a longer string shows it
        (None shows as nothing); making the text is charged to ``budget`` too."""
        value = self.evaluate(names, budget)
        if value is None:
            return ""
        try:
            return ops.f_str(budget, value)
        except ExpressionError as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"
