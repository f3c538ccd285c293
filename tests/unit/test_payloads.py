"""engine.payloads: JSON within bounds, and what a dead letter keeps of raw bytes."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from engine.exceptions import BadPayload
from engine.payloads import INT64_MAX, INT64_MIN, MAX_DEPTH, Excerpt, check, depth_exceeds, loads, shown


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param(b'{"a": [1, {"b": "x\\u0000"}]}', "at a[1].b: a string holds a NUL character",
                 id="nul-value"),
    pytest.param(b'{"a": {"b\\u0000": 1}}', "at a: a key holds a NUL character", id="nul-key"),
    pytest.param(b'{"a": 9223372036854775808}', "an integer is outside the 64-bit range", id="past-int64"),
    pytest.param(b'[-9223372036854775809]', "an integer is outside the 64-bit range", id="below-int64"),
    pytest.param(b'{"n": 123456789012345678901234567890}', "an integer is outside the 64-bit range",
                 id="past-uint64"),
    pytest.param(nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels", id="too-deep"),
    pytest.param(nested(100_000), "not JSON", id="far-too-deep"),
    pytest.param(b'{"a": "\xff"}', "not JSON", id="invalid-utf8"),
    pytest.param(b'["\\ud800"]', "not JSON", id="lone-surrogate"),
    pytest.param(b"{", "not JSON", id="truncated"),
])
def test_out_of_bounds_json_is_refused_saying_where(raw: bytes, message: str) -> None:
    with pytest.raises(BadPayload) as caught:
        loads(raw)
    assert message in str(caught.value)
    assert str(caught.value).startswith("not JSON") == (message == "not JSON")
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("raw", [
    nested(MAX_DEPTH),
    orjson.dumps({"a": INT64_MAX, "b": INT64_MIN, "c": 18446744073709551615.0, "d": 1.5e300}),
    b'{"digits": "12345678901234567890123", "x": 1.12345678901234567890123, "e": 12345678901234567890e-3}',
    b'{"quoted \\" 12345678901234567890123": "\\\\"}',
    "{\"text\": \"caf\u00e9 \u2603 \U0001f600\"}".encode(),
])
def test_json_within_bounds_is_taken_as_is(raw: bytes) -> None:
    assert loads(raw) == orjson.loads(raw)


def test_check_walks_decoded_values_without_recursion() -> None:
    value: list = []
    for _ in range(10_000):       # past Python's recursion limit
        value = [value]
    with pytest.raises(BadPayload, match="nested deeper than 64"):
        check(value)
    assert depth_exceeds(value) and not depth_exceeds([[1]], 2) and depth_exceeds([[[1]]], 2)
    with pytest.raises(BadPayload, match="outside the 64-bit range"):
        check({"x": [2 ** 64]})
    check({"ok": [True, None, 1.0, "text", -(2 ** 63)]})


def test_an_error_never_repeats_a_long_key() -> None:
    key = "k" * 10_000
    with pytest.raises(BadPayload) as caught:
        loads(orjson.dumps({key: {key: "\x00"}}))
    assert len(str(caught.value)) < 200 and "..." in str(caught.value)


def test_an_excerpt_keeps_the_head_the_size_and_the_digest() -> None:
    data = bytes(range(256)) * 1000
    whole = Excerpt.of(data, 1000)
    assert bytes(whole.head) == data[:1000] and whole.size == len(data) and whole.truncated
    assert whole.sha256 == hashlib.sha256(data).hexdigest()
    pieces = Excerpt(1000)
    for start in range(0, len(data), 777):
        pieces.add(memoryview(data)[start:start + 777])
    assert (bytes(pieces.head), pieces.size, pieces.sha256) == (bytes(whole.head), whole.size, whole.sha256)
    small = Excerpt.of(b"abc")
    assert bytes(small.head) == b"abc" and not small.truncated


def test_shown_is_short_and_escaped() -> None:
    assert shown("web") == "'web'"
    assert shown("a\x00b\nc") == "'a\\x00b\\nc'"
    assert len(shown("x" * 100_000)) <= 70
    assert len(shown({"a": list(range(10_000))})) < 70
