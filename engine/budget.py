"""What one evaluation of an expression may spend, and operations that charge it before they run.

Expressions run on the service's only event loop, over values from events, step outputs
and execute bodies. A single C-level call (``str(huge)``, ``'a' * n``) cannot be
interrupted, so a clock alone cannot bound them. Instead every operation an expression can
reach that allocates or loops in proportion to its operands is done here: it predicts the
size of its result and the work it does from its operands (``len``, ``bit_length``, a walk
of a container that is itself charged and bounded), charges the prediction to a
:class:`Budget`, and runs only if the budget holds. Otherwise it raises
:class:`~engine.exceptions.ExpressionError` without running.

A budget has three parts, fixed by :class:`Limits`:

- *allocation*: the sum of the predicted sizes, in bytes, of every value the evaluation
  makes, temporaries included; nothing is counted as freed, so this bounds the peak;
- *work*: about one unit per element an operation compares, copies or visits in C, or per
  few characters it scans (a unit is some 10 ns); walks done in Python cost more per
  element;
- *CPU time*: a backstop for mistakes in the predictions, looked at as work accrues.

Predictions are upper bounds: a prediction may refuse what would have fitted, never the
reverse. Reading a value from the context costs nothing: values are never copied in.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.exceptions import ExpressionError


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


@dataclass(frozen=True)
class Limits:
    """The run-time limits of an evaluation (the values live in :mod:`engine.expressions`)."""

    allocation: int        # bytes
    work: int              # units of work
    seconds: float         # CPU seconds, the backstop
    int_bits: int          # the largest integer arithmetic may make
    width: int             # the largest ``%`` width or precision
    ndigits: int           # the largest ``round()`` precision, either sign
    number_text: int       # the longest string ``int()`` / ``float()`` parse
    depth: int             # the deepest nesting a measurement follows


_CLOCK_EVERY = 20_000      # units of progress between two looks at the clock
_WRITER = 2                # text built piecewise (repr, %) may hold twice its size while it grows
_WALK = 24                 # work per element of a walk done in Python
_REPR = 8                  # work per element that repr() writes, in C


def _amount(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.0f} KiB"


class Budget:
    """What is left to one evaluation, or to several that share it (a decision's conditions,
    a template's placeholders)."""

    __slots__ = ("_deadline", "_next_clock", "_progress", "_sizes", "bytes_left", "limits", "work_left")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bytes_left = limits.allocation
        self.work_left = limits.work
        self._progress = 0
        self._next_clock = _CLOCK_EVERY
        self._deadline = time.thread_time() + limits.seconds
        # Sizes of the containers measured so far, by id; each entry keeps its object alive
        # so that an id cannot be reused by another object during the evaluation.
        self._sizes: dict[int, tuple[Any, tuple[int, int, int]]] = {}

    def spend(self, what: str, nbytes: int = 0, work: int = 0) -> None:
        """Charge ``nbytes`` and ``work`` for ``what``, or refuse it if they do not fit."""
        if nbytes > self.bytes_left:
            raise ExpressionError(
                f"over budget: {what} would allocate about {_amount(nbytes)}; an evaluation may "
                f"allocate {_amount(self.limits.allocation)} ({_amount(self.bytes_left)} left)")
        if work > self.work_left:
            raise ExpressionError(
                f"over budget: {what} would take about {work:,} units of work; an evaluation may "
                f"take {self.limits.work:,} ({self.work_left:,} left)")
        self.bytes_left -= nbytes
        self.work_left -= work
        self._progress += work + nbytes // 16
        if self._progress >= self._next_clock:
            self._next_clock = self._progress + _CLOCK_EVERY
            self.check_clock()

    def refund(self, nbytes: int) -> None:
        """Give back bytes charged for an upper bound the result turned out not to need
        (measured after the fact, so the charges still cover every allocation)."""
        self.bytes_left = min(self.bytes_left + max(nbytes, 0), self.limits.allocation)

    def check_clock(self) -> None:
        if time.thread_time() > self._deadline:
            raise ExpressionError(
                f"over budget: the evaluation took more than {self.limits.seconds * 1000:g} ms of CPU")

    def int_bits(self, what: str, bits: int) -> None:
        if bits > self.limits.int_bits:
            raise ExpressionError(f"over budget: {what} would make an integer of about {bits:,} bits; "
                                  f"the limit is {self.limits.int_bits:,}")


# ----------------------------------------------------------------------------- sizes
# Text is measured as (characters, bytes per character): CPython stores a string in 1, 2 or 4
# bytes per character, the widest of its characters, and text built from parts is as wide
# as its widest part.

def kind(s: str) -> int:
    """Bytes per character of ``s``, in O(1)."""
    if s.isascii():
        return 1
    width = (sys.getsizeof(s) - 72) // (len(s) + 1)     # a compact non-ASCII str
    return width if width in (1, 2) else 4


def text_bytes(chars: int, width: int) -> int:
    """An upper bound of the memory of a str of ``chars`` characters of ``width`` bytes."""
    return 80 + chars * width


def _digits(v: int) -> int:
    """An upper bound of ``len(str(v))``."""
    return (v.bit_length() * 1233 >> 12) + 2


def _int_chars(b: Budget, v: int) -> int:
    """``_digits(v)``, refusing an integer whose conversion to text would be slow: CPython's
    is quadratic, and its own limit (``sys.set_int_max_str_digits``) may be lifted."""
    if v.bit_length() > 4 * b.limits.int_bits:
        raise ExpressionError(f"over budget: an integer of {v.bit_length():,} bits is too large to "
                              "write as text")
    return _digits(v)


def _int_items(v: int) -> int:
    """What writing ``v`` as text costs, in elements: CPython's conversion is quadratic in
    its 30-bit digits, negligible up to 64 bits, ~20 us at 4,096."""
    limbs = v.bit_length() // 30
    return 1 + limbs * limbs // 64


def _quadratic(x: Any, y: Any) -> int:
    """The work of dividing (or taking the remainder of) integers: quadratic in their digits."""
    if isinstance(x, int) and isinstance(y, int) and max(x.bit_length(), y.bit_length()) > 64:
        return (x.bit_length() // 30 + 1) * (y.bit_length() // 30 + 1) // 8
    return 0


def _repr_str(b: Budget, s: str) -> int:
    """An upper bound of ``len(repr(s))``."""
    n = len(s)
    if n <= 256:
        return len(repr(s))
    b.spend("measuring a string", work=n // 4)
    if s.isprintable():         # only backslashes and quotes are escaped, one character each
        return 2 * n + 2 + (0 if type(s) is str else 256)      # a StrEnum's repr names its class
    return (4 if s.isascii() else 10) * n + 2 + (0 if type(s) is str else 256)


_KEYS: type[Any] = type({}.keys())
_VALUES: type[Any] = type({}.values())
_ITEMS: type[Any] = type({}.items())
_CONTAINERS: tuple[type, ...] = (list, tuple, dict, set, frozenset, _KEYS, _VALUES, _ITEMS)
_SCALAR_CHARS: dict[type, int] = {float: 24, bool: 5, type(None): 4, _Missing: 4, complex: 52}
_SMALL = 16                 # containers up to this size are walked in Python, without the C passes
_CONTAINER = 150            # work per container visited in Python


def measure(b: Budget, v: Any, depth: int = 0) -> tuple[int, int, int]:
    """Upper bounds of ``len(repr(v))`` and of the bytes per character of that text, and how
    many values ``v`` holds at all levels (shared ones as often as they are shown). The
    walk is charged to ``b``; a container's size is remembered for the evaluation."""
    t = type(v)
    if t is str:
        return _repr_str(b, v), kind(v), 1
    if t is int:
        return _int_chars(b, v), 1, _int_items(v)
    chars = _SCALAR_CHARS.get(t)
    if chars is not None:
        return chars, 1, 1
    if isinstance(v, _CONTAINERS):
        return _measure_container(b, v, depth)
    if isinstance(v, str):
        return _repr_str(b, v), kind(v), 1
    if isinstance(v, int):
        return _int_chars(b, v) + 256, 1, _int_items(v)
    if isinstance(v, float | complex):
        return 256, 1, 1
    raise ExpressionError(f"cannot measure a value of type {t.__name__!r}")


def _measure_container(b: Budget, v: Any, depth: int) -> tuple[int, int, int]:
    hit = b._sizes.get(id(v))
    if hit is not None:
        return hit[1]
    if depth >= b.limits.depth:
        raise ExpressionError(f"over budget: a value nested more than {b.limits.depth} levels deep")
    n = len(v)
    if isinstance(v, dict) or type(v) is _ITEMS:
        mapping = v if isinstance(v, dict) else v.mapping
        groups: tuple[Any, ...] = (mapping.keys(), mapping.values())
        chars = 32 + 6 * n
    else:
        groups = (v,)
        chars = 32 + 2 * n
    b.spend("measuring a value", work=_CONTAINER)
    width, items = 1, 1
    for group in groups:
        c, w, i = (_measure_small if n <= _SMALL else _measure_group)(b, group, n, depth)
        chars, width, items = chars + c, max(width, w), items + i
    size = (chars, width, items)
    b._sizes[id(v)] = (v, size)
    return size


def _measure_small(b: Budget, elems: Iterable[Any], n: int, depth: int) -> tuple[int, int, int]:
    b.spend("measuring a value", work=_WALK * n)
    chars, width, items = 0, 1, 0
    for e in elems:
        c, w, i = measure(b, e, depth + 1)
        chars, width, items = chars + c, max(width, w), items + i
    return chars, width, items


def _measure_group(b: Budget, elems: Iterable[Any], n: int, depth: int) -> tuple[int, int, int]:
    """Measure ``n`` elements in a few passes in C when they all have one simple type,
    else one by one."""
    b.spend("measuring a value", work=2 * n)          # the pass that finds their types
    kinds = set(map(type, elems))
    if len(kinds) == 1:
        only = kinds.pop()
        if only is int:
            b.spend("measuring a value", work=2 * n)
            top = max(max(elems), -min(elems))
            return n * (_int_chars(b, top) + 1), 1, n * _int_items(top)
        if only in _SCALAR_CHARS:
            return n * _SCALAR_CHARS[only], 1, n
        if only is str:
            b.spend("measuring a value", work=3 * n)
            total = sum(map(len, elems))
            b.spend("measuring a value", work=total // 4)
            width = 1
            if not all(map(str.isascii, elems)):
                b.spend("measuring a value", work=_WALK * n)
                width = max(map(kind, elems))
            if all(map(str.isprintable, elems)):
                return 2 * total + 2 * n, width, n
            return (10 if width > 1 else 4) * total + 2 * n, width, n
    return _measure_small(b, elems, n, depth)


def weight(b: Budget, v: Any) -> int:
    """About the work of comparing or hashing ``v`` once."""
    t = type(v)
    if t is str:
        return 1 + len(v) // 16
    if t is int or t is bool or t is float or v is None or t is _Missing:
        return 1
    chars, _, items = measure(b, v)
    return items + chars // 16


def text_size(b: Budget, v: Any, quoted: bool = False) -> tuple[int, int]:
    """Upper bounds of ``len(str(v))`` (``repr`` if ``quoted``) and of its bytes per
    character, having charged the work of making it."""
    if isinstance(v, str) and not quoted:
        return len(v), kind(v)
    if v is MISSING and not quoted:
        return 0, 1
    chars, width, items = measure(b, v)
    b.spend("making text", work=_REPR * items + chars // 8)
    return chars, width


def charge_export(b: Budget, v: Any) -> None:
    """Charge writing ``v`` out once, as text or JSON, after it leaves the evaluation (a
    template's value goes into a request body, a command, a log line). A few bytes can show
    as a huge text (``[x] * 10000`` where ``x`` is big), so the value must fit as text."""
    if isinstance(v, str) or cheap(v):
        return
    chars, width = text_size(b, v)
    b.spend("writing the value out", nbytes=text_bytes(chars, width))


def cheap(v: Any) -> bool:
    """Comparing or hashing ``v`` against anything costs O(1)."""
    t = type(v)
    return t is int or t is bool or t is float or v is None or t is _Missing
