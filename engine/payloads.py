"""Bounds on payloads from outside, checked where they come in (the API, the intake).

A JSON value from a client is taken only within what every part behind it can hold:
PostgreSQL refuses a NUL character in text and jsonb; asyncpg and orjson refuse integers
past 64 bits; the rule loader, orjson and the database's encoders recurse per level of
nesting. :func:`loads` refuses any of these with a :class:`~engine.exceptions.BadPayload`
that says where (``loc``) and what, never repeating the value. What a dead letter keeps of
raw bytes is an :class:`Excerpt`: the first bytes, the total size and the SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.exceptions import BadPayload, Loc

MAX_DEPTH = 64                     # levels of arrays and objects in one JSON value
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
DEAD_LETTER_BYTES = 64 * 1024      # what a dead letter keeps of its raw bytes, by default

# orjson reads an integer past 64 bits as a float; one of 19 digits or more may be past
# int64. Only a body with such a run of digits is tokenized to find them (strings skipped).
_LONG_DIGITS = re.compile(rb"\d{19}")
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])', re.S)


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``raw`` as JSON, within bounds: UTF-8, no NUL in any string or key, every integer
    within int64, nested at most ``max_depth`` deep. Raises BadPayload otherwise."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    if _LONG_DIGITS.search(raw):
        for token in _TOKENS.finditer(raw):
            text = token.group()
            if text[:1] != b'"' and not INT64_MIN <= int(text) <= INT64_MAX:
                raise BadPayload("an integer is outside the 64-bit range", offset=token.start())
    check(value, max_depth=max_depth)
    return value


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise BadPayload if a decoded JSON value is out of bounds (see :func:`loads`).
    Iterative, so a value nested past Python's recursion limit is refused, not a crash."""
    stack: list[tuple[Any, int, Loc]] = [(value, 1, ())]
    while stack:
        item, depth, loc = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadPayload("a string holds a NUL character", loc=loc)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise BadPayload("an integer is outside the 64-bit range", loc=loc)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise BadPayload(f"nested deeper than {max_depth} levels", loc=loc)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or "\x00" in key:
                        raise BadPayload("a key holds a NUL character", loc=loc)
                    stack.append((child, depth + 1, (*loc, key)))
            else:
                stack.extend((child, depth + 1, (*loc, i)) for i, child in enumerate(item))


def may_nest_deeper(raw: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """False if JSON text ``raw`` certainly nests no deeper than ``max_depth``: every level
    opens with a bracket, so fewer brackets than levels settles it without walking the value
    (a Kubernetes event has about six). Brackets inside strings only make it say True."""
    return raw.count(b"{") + raw.count(b"[") > max_depth


def depth_exceeds(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """True if a decoded JSON value nests deeper than ``max_depth`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


@dataclass
class Excerpt:
    """What is kept of raw bytes: the first ``limit`` of them, their total size and SHA-256.
    Fed in pieces (:meth:`add`), it never holds more than ``limit`` bytes."""

    limit: int = DEAD_LETTER_BYTES
    head: bytearray = field(default_factory=bytearray)
    size: int = 0
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    @classmethod
    def of(cls, raw: bytes | bytearray, limit: int = DEAD_LETTER_BYTES) -> Excerpt:
        excerpt = cls(limit)
        excerpt.add(raw)
        return excerpt

    def add(self, piece: bytes | bytearray | memoryview) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += piece[:room]
        self.size += len(piece)
        self._digest.update(piece)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def truncated(self) -> bool:
        return self.size > len(self.head)


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist = 2, 4, 4
_SHOWN.maxstring, _SHOWN.maxlong, _SHOWN.maxother = 64, 40, 64


def shown(value: Any) -> str:
    """A client's value as an error message may show it: a repr with control characters
    escaped, of at most about 64 characters (the middle of a longer one is left out)."""
    return _SHOWN.repr(value)
