"""The operators, functions and methods expressions can reach, each charging its
:class:`~engine.budget.Budget` before it runs (sizes predicted by :mod:`engine.budget`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from engine.budget import (
    _ITEMS,
    _KEYS,
    _REPR,
    _VALUES,
    _WALK,
    _WRITER,
    MISSING,
    Budget,
    _int_chars,
    _int_items,
    _quadratic,
    cheap,
    kind,
    text_bytes,
    text_size,
    weight,
)
from engine.exceptions import ExpressionError

# ----------------------------------------------------------------------------- operators
# Each takes the budget first, then the operands as simpleeval's operators do.

_SEQUENCES = (str, list, tuple)
_SETS: tuple[type, ...] = (set, frozenset, _KEYS, _ITEMS)


def _charge_int(b: Budget, what: str, bits: int) -> None:
    if bits > 64:
        b.int_bits(what, bits)
        b.spend(what, nbytes=bits // 8 + 64, work=bits // 256)


def charge_sequence(b: Budget, what: str, like: Any, count: int, width: int | None = None) -> None:
    """Charge a new str, list or tuple like ``like``, of ``count`` characters (of ``width``
    bytes, by default as wide as ``like``'s) or elements."""
    if isinstance(like, str):
        b.spend(what, nbytes=text_bytes(count, kind(like) if width is None else width), work=count // 8)
    else:
        b.spend(what, nbytes=8 * count + 64, work=count)


def _charge_set_op(b: Budget, what: str, x: Any, y: Any) -> None:
    """Set operators on sets and dict views (which take any iterable on the other side)."""
    n = sum(len(v) for v in (x, y) if hasattr(v, "__len__"))
    b.spend(what, nbytes=128 * n + 256, work=4 * n)


def add(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, int) and isinstance(y, int):
        _charge_int(b, "'+'", max(x.bit_length(), y.bit_length()) + 1)
    elif isinstance(x, str) and isinstance(y, str):
        charge_sequence(b, "'+'", x, len(x) + len(y), max(kind(x), kind(y)))
    elif isinstance(x, list | tuple) and isinstance(y, list | tuple):
        charge_sequence(b, "'+'", x, len(x) + len(y))
    return x + y


def sub(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, int) and isinstance(y, int):
        _charge_int(b, "'-'", max(x.bit_length(), y.bit_length()) + 1)
    elif isinstance(x, _SETS) or isinstance(y, _SETS):
        _charge_set_op(b, "'-'", x, y)
    return x - y


def _repeat(b: Budget, seq: Any, n: int) -> None:
    count = len(seq) * max(n, 0)
    charge_sequence(b, "repeating a sequence with '*'", seq, count)


def mul(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, int) and isinstance(y, int):
        _charge_int(b, "'*'", x.bit_length() + y.bit_length())
    elif isinstance(x, _SEQUENCES) and isinstance(y, int):
        _repeat(b, x, y)
    elif isinstance(y, _SEQUENCES) and isinstance(x, int):
        _repeat(b, y, x)
    return x * y


def truediv(b: Budget, x: Any, y: Any) -> Any:
    b.spend("'/'", work=_quadratic(x, y))
    return x / y


def floordiv(b: Budget, x: Any, y: Any) -> Any:
    b.spend("'//'", work=_quadratic(x, y))
    return x // y


def mod(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, str):
        _charge_format(b, x, y)
    else:
        b.spend("'%'", work=_quadratic(x, y))
    return x % y


def power(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, int) and isinstance(y, int) and y > 0:
        _charge_int(b, "'**'", 1 if abs(x) <= 1 else x.bit_length() * y)
    return x**y


def lshift(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, int) and isinstance(y, int) and y > 0:
        _charge_int(b, "'<<'", x.bit_length() + y)
    return x << y


def rshift(b: Budget, x: Any, y: Any) -> Any:
    return x >> y


def bitor(b: Budget, x: Any, y: Any) -> Any:
    if (isinstance(x, dict) and isinstance(y, dict)) or isinstance(x, _SETS) or isinstance(y, _SETS):
        _charge_set_op(b, "'|'", x, y)
    return x | y


def bitand(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, _SETS) or isinstance(y, _SETS):
        _charge_set_op(b, "'&'", x, y)
    return x & y


def bitxor(b: Budget, x: Any, y: Any) -> Any:
    if isinstance(x, _SETS) or isinstance(y, _SETS):
        _charge_set_op(b, "'^'", x, y)
    return x ^ y


def neg(b: Budget, x: Any) -> Any:
    return -x


def pos(b: Budget, x: Any) -> Any:
    return +x


def invert(b: Budget, x: Any) -> Any:
    return ~int(x) if isinstance(x, bool) else ~x      # ~True is deprecated in Python 3.12


def not_(b: Budget, x: Any) -> Any:
    return not x


def _charge_compare(b: Budget, x: Any, y: Any, equality: bool) -> None:
    if isinstance(x, str) and isinstance(y, str):
        if not (equality and len(x) != len(y)) and min(len(x), len(y)) > 4096:
            b.spend("comparing strings", work=min(len(x), len(y)) // 16)
        return
    if cheap(x) or cheap(y) or isinstance(x, str) or isinstance(y, str):
        return
    if equality and type(x) is type(y) and isinstance(x, list | tuple | dict) and len(x) != len(y):
        return
    b.spend("comparing", work=weight(b, x) + weight(b, y))


def _comparison(fn: Callable[[Any, Any], Any], equality: bool) -> Callable[[Budget, Any, Any], Any]:
    def compare(b: Budget, x: Any, y: Any) -> Any:
        _charge_compare(b, x, y, equality)
        return fn(x, y)
    return compare


eq = _comparison(lambda x, y: x == y, True)
ne = _comparison(lambda x, y: x != y, True)
lt = _comparison(lambda x, y: x < y, False)
le = _comparison(lambda x, y: x <= y, False)
gt = _comparison(lambda x, y: x > y, False)
ge = _comparison(lambda x, y: x >= y, False)


def _charge_contains(b: Budget, needle: Any, hay: Any) -> None:
    if isinstance(hay, str):
        if isinstance(needle, str) and len(hay) > 4096:
            b.spend("'in'", work=(len(hay) + len(needle)) // 8)
    elif isinstance(hay, list | tuple | _VALUES):
        b.spend("'in'", work=len(hay) * (1 if cheap(needle) else weight(b, needle)))
    elif isinstance(hay, dict | set | frozenset | _KEYS | _ITEMS) and not cheap(needle):
        b.spend("'in'", work=weight(b, needle))


# MISSING equals None through a method written in Python, which a scan of a list would call
# once per element. Containers never hold MISSING (the evaluator stores None instead), so
# scanning for None answers the same.

def contains(b: Budget, needle: Any, hay: Any) -> bool:
    needle = None if needle is MISSING else needle
    _charge_contains(b, needle, hay)
    return needle in hay


def not_contains(b: Budget, needle: Any, hay: Any) -> bool:
    needle = None if needle is MISSING else needle
    _charge_contains(b, needle, hay)
    return needle not in hay


# ----------------------------------------------------------------------------- % formatting

#: One printf-style conversion: mapping key, flags, width, precision, conversion. A key with
#: parentheses inside, which Python allows, ends the match early and is refused as unknown.
FORMAT_SPEC = re.compile(r"%(?:\(([^()]*)\))?([-+ #0]*)(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.S)
_CONVERSIONS = frozenset("sradiuoxXeEfFgGc%")


def _format_number(b: Budget, what: str, digits: str | None) -> int:
    if not digits:
        return 0
    if len(digits) > 9 or int(digits) > b.limits.width:
        raise ExpressionError(f"over budget: {what} {digits} in a '%' format; "
                              f"the limit is {b.limits.width:,}")
    return int(digits)


def _charge_format(b: Budget, fmt: str, args: Any) -> None:
    """Predict the text ``fmt % args`` makes, spec by spec, as Python reads them."""
    b.spend("a '%' format", work=fmt.count("%") * _WALK + len(fmt) // 8)
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping: Any = None if isinstance(args, tuple | str) else args     # Python tries any other
    chars, char_width, temp = len(fmt), kind(fmt), 0
    for match in FORMAT_SPEC.finditer(fmt):
        key, _, field_text, prec_text, conv = match.groups()
        if conv not in _CONVERSIONS:
            raise ExpressionError(f"unsupported conversion {match.group(0)!r} in a '%' format")
        sizes = []
        for what, text in (("width", field_text), ("precision", prec_text)):
            if text != "*":
                sizes.append(_format_number(b, what, text))
                continue
            if not positional or not isinstance(positional[0], int):
                return _spend_format(b, chars, char_width, temp)     # Python refuses it here
            size = positional.pop(0)
            if abs(size) > b.limits.width:
                raise ExpressionError(f"over budget: {what} {size:,} in a '%' format; "
                                      f"the limit is {b.limits.width:,}")
            sizes.append(size)
        field, prec = abs(sizes[0]), sizes[1]
        if conv == "%":
            chars += max(field, 1)
            continue
        if key is not None:
            try:
                value = mapping[key]
            except Exception:
                break                                   # and so does Python
        elif positional:
            value = positional.pop(0)
        else:
            break
        body, body_width, body_temp = _conversion_size(b, conv, value, None if prec_text is None else prec)
        chars += max(field, body) + 4
        char_width = max(char_width, body_width)
        temp += body_temp
    _spend_format(b, chars, char_width, temp)


def _spend_format(b: Budget, chars: int, char_width: int, temp: int) -> None:
    b.spend("a '%' format", nbytes=_WRITER * text_bytes(chars, char_width) + temp, work=chars // 8)


def _conversion_size(b: Budget, conv: str, value: Any, prec: int | None) -> tuple[int, int, int]:
    """(characters written, bytes per character, bytes of temporaries)."""
    if conv in "sra":
        chars, width = text_size(b, value, quoted=conv != "s")
        if conv == "a" and width > 1:        # ascii() escapes every non-ASCII character
            chars, width = 10 * chars, 1
        temp = 0 if type(value) is str and conv == "s" else text_bytes(chars, width)
        return (chars if prec is None else min(chars, max(prec, 0))), width, temp
    if conv == "c":
        return 1, 4, 0
    if isinstance(value, float):
        digits = 310
    elif isinstance(value, int):
        digits = _int_chars(b, value)
        b.spend("a '%' format", work=_REPR * _int_items(value))
    else:
        digits = 330                 # Python refuses it, or converts it to a float
    return digits + 20 + (max(prec, 0) if prec is not None else 6), 1, 0


# ----------------------------------------------------------------------------- functions
# The functions an expression may call, by name; each takes the budget first.


def _text(b: Budget, v: Any) -> str:
    if type(v) is str:
        return v
    chars, width = text_size(b, v)
    b.spend("str()", nbytes=_WRITER * text_bytes(chars, width))
    return str(v)


def _number_text(b: Budget, what: str, args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], str) and len(args[0]) > b.limits.number_text:
        raise ExpressionError(f"over budget: {what} of a string of {len(args[0]):,} characters; "
                              f"the limit is {b.limits.number_text:,}")


def f_len(b: Budget, *args: Any) -> Any:
    return len(*args)


def f_int(b: Budget, *args: Any) -> Any:
    _number_text(b, "int()", args)
    return int(*args)


def f_float(b: Budget, *args: Any) -> Any:
    _number_text(b, "float()", args)
    return float(*args)


def f_str(b: Budget, *args: Any) -> Any:
    return _text(b, args[0]) if len(args) == 1 else str(*args)


def f_bool(b: Budget, *args: Any) -> Any:
    return bool(*args)


def _extreme(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def guard(b: Budget, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], str):
            b.spend(f"{name}()", work=2 * len(args[0]))
        else:
            b.spend(f"{name}()", work=sum(weight(b, a) for a in args))
        return fn(*args)
    return guard


f_min = _extreme(min, "min")
f_max = _extreme(max, "max")


def f_abs(b: Budget, *args: Any) -> Any:
    return abs(*args)


def f_round(b: Budget, *args: Any) -> Any:
    if len(args) == 2 and isinstance(args[1], int):
        if abs(args[1]) > b.limits.ndigits:
            raise ExpressionError(f"over budget: round() to {args[1]:,} digits; "
                                  f"the limit is {b.limits.ndigits}")
        if isinstance(args[0], int) and args[1] < 0:     # divides by 10 ** -ndigits
            b.spend("round()", work=_quadratic(args[0], 10 ** -args[1]))
    return round(*args)


def f_lower(b: Budget, *args: Any) -> Any:
    return _case(b, _text(b, args[0]), "lower") if len(args) == 1 else str(*args).lower()


# ----------------------------------------------------------------------------- methods
# The methods an expression may call, by name; each takes the budget and the object first,
# and refuses a type it does not know rather than calling whatever method it has.


def _no_method(obj: Any, name: str) -> Any:
    if obj is MISSING:
        raise TypeError(f"{name}() of a missing value")
    raise AttributeError(f"{type(obj).__name__!r} object has no method {name!r}")


def _case(b: Budget, s: Any, name: str) -> Any:
    if not isinstance(s, str):
        return _no_method(s, name)
    n = len(s)
    if s.isascii():
        b.spend(f"{name}()", nbytes=text_bytes(n, 1), work=n // 8)
    else:      # a character may become three, and CPython converts in a wide buffer first
        b.spend(f"{name}()", nbytes=24 * n + 160, work=n // 2)
    return getattr(str, name)(s)


def m_lower(b: Budget, obj: Any, *args: Any) -> Any:
    return _case(b, obj, "lower") if not args else str.lower(obj, *args)


def m_upper(b: Budget, obj: Any, *args: Any) -> Any:
    return _case(b, obj, "upper") if not args else str.upper(obj, *args)


def m_strip(b: Budget, obj: Any, *args: Any) -> Any:
    if not isinstance(obj, str):
        return _no_method(obj, "strip")
    chars = args[0] if args and isinstance(args[0], str) else ""
    b.spend("strip()", nbytes=text_bytes(len(obj), kind(obj)),
            work=len(obj) * (1 + len(chars) // 32) // 8)
    return obj.strip(*args)


def _affix(name: str) -> Callable[..., Any]:
    def guard(b: Budget, obj: Any, *args: Any) -> Any:
        if not isinstance(obj, str):
            return _no_method(obj, name)
        if args:
            b.spend(f"{name}()", work=weight(b, args[0]))
        return getattr(str, name)(obj, *args)
    return guard


m_startswith = _affix("startswith")
m_endswith = _affix("endswith")


def m_count(b: Budget, obj: Any, *args: Any) -> Any:
    args = tuple(None if a is MISSING else a for a in args)
    if isinstance(obj, str):
        needle = len(args[0]) if args and isinstance(args[0], str) else 0
        b.spend("count()", work=(len(obj) + needle) // 8)
    elif isinstance(obj, list | tuple):
        b.spend("count()", work=len(obj) * (1 if not args or cheap(args[0]) else weight(b, args[0])))
    else:
        return _no_method(obj, "count")
    return obj.count(*args)


def m_split(b: Budget, obj: Any, *args: Any) -> Any:
    if not isinstance(obj, str):
        return _no_method(obj, "split")
    sep = args[0] if args else None
    maxsplit = args[1] if len(args) > 1 else -1
    if (sep is not None and not isinstance(sep, str)) or sep == "" or not isinstance(maxsplit, int) \
            or len(args) > 2:
        return obj.split(*args)                 # Python refuses these before it allocates
    n = len(obj)
    text = text_bytes(n, kind(obj))
    per_piece = 96                              # a str header and a list slot
    if sep is not None:
        b.spend("split()", work=n // 8)
        pieces = obj.count(sep) + 1
        if maxsplit >= 0:
            pieces = min(pieces, maxsplit + 1)
        b.spend("split()", nbytes=pieces * per_piece + text, work=8 * pieces)
        return obj.split(sep, maxsplit)
    # On whitespace the count of pieces is unknown before splitting: split at most as often
    # as the budget affords, then see whether the rest would have made more pieces.
    bound = (n + 1) // 2 if maxsplit < 0 else min((n + 1) // 2, maxsplit + 1)
    afford = max((b.bytes_left - 2 * text) // per_piece, 1)
    if bound <= afford:
        b.spend("split()", nbytes=bound * per_piece + text, work=n // 8 + 8 * bound)
        parts = obj.split(None, maxsplit)
        b.refund((bound - len(parts)) * per_piece)
        return parts
    b.spend("split()", nbytes=afford * per_piece + 2 * text, work=n // 8 + 8 * afford)
    parts = obj.split(None, afford - 1)
    if len(parts) == afford:
        rest = parts[-1].split(None, 1)
        if len(rest) > 1:
            raise ExpressionError(f"over budget: split() would make more than {afford:,} pieces")
        parts[-1:] = rest
    b.refund((afford - len(parts)) * per_piece)
    return parts


def _dict_method(name: str) -> Callable[..., Any]:
    def guard(b: Budget, obj: Any, *args: Any) -> Any:
        if not isinstance(obj, dict):
            return _no_method(obj, name)
        if args and not cheap(args[0]):
            b.spend(f"{name}()", work=weight(b, args[0]))
        return getattr(dict, name)(obj, *args)
    return guard


m_get = _dict_method("get")
m_keys = _dict_method("keys")
m_values = _dict_method("values")
m_items = _dict_method("items")
