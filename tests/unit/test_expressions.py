"""Sandboxed expressions: what decisions can read, and what is refused."""

from __future__ import annotations

import pytest

from engine.exceptions import ExpressionError
from engine.expressions import MAX_SOURCE, Expression

# ----------------------------------------------------------------------------- evaluation


def test_seed_root_cause_expression():
    expr = Expression("analysis.root_cause == 'OOM'")

    assert expr.evaluate({"analysis": {"root_cause": "OOM"}}) is True
    assert expr.evaluate({"analysis": {"root_cause": "Timeout"}}) is False


def test_expression_is_reusable_and_does_not_keep_old_names():
    expr = Expression("analysis.root_cause == 'OOM'")

    assert expr.evaluate({"analysis": {"root_cause": "OOM"}}) is True
    # A later evaluation without 'analysis' must not see the previous call's value.
    with pytest.raises(ExpressionError, match=r"analysis"):
        expr.evaluate({})


@pytest.mark.parametrize(
    ("cause", "expected"),
    [("OOM", True), ("CrashLoop", True), ("Timeout", False), (None, False)],
)
def test_in_with_a_tuple(cause, expected):
    expr = Expression("analysis.root_cause in ('OOM', 'CrashLoop')")

    assert expr.evaluate({"analysis": {"root_cause": cause}}) is expected


def test_not_in_with_a_list():
    expr = Expression("event.reason not in ['Pulled', 'Created']")

    assert expr.evaluate({"event": {"reason": "BackOff"}}) is True
    assert expr.evaluate({"event": {"reason": "Pulled"}}) is False


def test_nested_step_output():
    expr = Expression("steps.diagnose.output.exit_code == 137")
    names = {"steps": {"diagnose": {"output": {"exit_code": 137, "signal": "SIGKILL"}}}}

    assert expr.evaluate(names) is True
    names["steps"]["diagnose"]["output"]["exit_code"] = 0
    assert expr.evaluate(names) is False


def test_nested_value_is_returned_as_is():
    expr = Expression("steps.diagnose.output.exit_code")

    assert expr.evaluate({"steps": {"diagnose": {"output": {"exit_code": 137}}}}) == 137


def test_lists_of_dicts_read_by_attribute_too():
    expr = Expression("events[0].reason == 'BackOff' and len(events) == 2")

    assert expr.evaluate({"events": [{"reason": "BackOff"}, {"reason": "Pulled"}]}) is True


def test_subscript_reads_keys():
    expr = Expression("steps['diagnose']['output']['exit_code'] > 100")

    assert expr.evaluate({"steps": {"diagnose": {"output": {"exit_code": 137}}}}) is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("analysis.confidence", None),
        ("steps.not_run", None),
        ("analysis.confidence == None", True),
        ("analysis.confidence == null", True),
        ("analysis.confidence is None", True),
    ],
)
def test_missing_keys_read_as_none(source, expected):
    result = Expression(source).evaluate({"analysis": {"root_cause": "OOM"}, "steps": {}})

    assert result is expected


def test_missing_key_compares_unequal_rather_than_failing():
    expr = Expression("analysis.confidence == 'high'")

    assert expr.evaluate({"analysis": {}}) is False


def test_get_with_a_default():
    expr = Expression("analysis.get('confidence', 0) >= 0.8")

    assert expr.evaluate({"analysis": {"confidence": 0.9}}) is True
    assert expr.evaluate({"analysis": {}}) is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("lower(analysis.root_cause) == 'oom'", True),
        ("analysis.root_cause.lower() == 'oom'", True),
        ("event.message.startswith('Back-off')", True),
        ("len(events) >= 3", True),
        ("max(event.count, 10) == 23", True),
        ("event.count > 5 and event.reason == 'BackOff'", True),
        ("event.count > 5 and not (event.reason == 'BackOff')", False),
        ("'x' if event.count > 100 else 'y'", "y"),
        ("true and not false", True),
        ("event.message.split(' ')[0]", "Back-off"),
    ],
)
def test_allowed_functions_and_operators(source, expected):
    names = {
        "analysis": {"root_cause": "OOM"},
        "event": {"message": "Back-off restarting", "count": 23, "reason": "BackOff"},
        "events": [1, 2, 3],
    }

    assert Expression(source).evaluate(names) == expected


def test_key_named_items_reads_as_the_key():
    expr = Expression("len(steps.pods.output.items) == 2")

    assert expr.evaluate({"steps": {"pods": {"output": {"items": ["a", "b"]}}}}) is True


# ----------------------------------------------------------------------------- refused at construction


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        pytest.param("__import__('os')", r"__import__", id="import"),
        pytest.param("__import__('os').system('id')", r"not allowed", id="import-system"),
        pytest.param("().__class__", r"'__class__' is not allowed", id="dunder-class"),
        pytest.param("().__class__.__bases__[0].__subclasses__()", r"not allowed", id="subclasses"),
        pytest.param("analysis._private", r"'_private' is not allowed", id="underscore-attr"),
        pytest.param("9**9999999", r"constant exponent", id="pow-bomb"),
        pytest.param("event.count ** event.count", r"constant exponent", id="pow-variable"),
        pytest.param("2 ** 65", r"constant exponent", id="pow-65"),
        pytest.param("'a'.ljust(50000000)", r"method 'ljust' is not allowed", id="ljust"),
        pytest.param("'a' * 50000000", r"large constant", id="mult-bomb"),
        pytest.param("50000000 * 'a'", r"large constant", id="mult-bomb-left"),
        pytest.param("os.environ", r"unknown name 'os'", id="unknown-name"),
        pytest.param("request.root_cause == 'OOM'", r"unknown name 'request'", id="unknown-root"),
        pytest.param("os.system('id')", r"not allowed", id="unknown-call"),
        pytest.param("open('/etc/passwd')", r"function 'open' is not allowed", id="open"),
        pytest.param("eval('1')", r"function 'eval' is not allowed", id="eval"),
        pytest.param("getattr(analysis, 'x')", r"not allowed", id="getattr"),
        pytest.param("analysis.format('x')", r"method 'format' is not allowed", id="format"),
        pytest.param("lambda: 1", r"Lambda is not allowed", id="lambda"),
        pytest.param("(lambda: 1)()", r"only named functions", id="lambda-call"),
        pytest.param("len([e for e in events])", r"ListComp is not allowed", id="listcomp"),
        pytest.param("len({e for e in events})", r"SetComp is not allowed", id="setcomp"),
        pytest.param("len({e: 1 for e in events})", r"DictComp is not allowed", id="dictcomp"),
        pytest.param("max(e for e in events)", r"GeneratorExp is not allowed", id="genexp"),
        pytest.param("(x := 1)", r"NamedExpr is not allowed", id="walrus"),
        pytest.param("f'{analysis}'", r"JoinedStr is not allowed", id="fstring"),
        pytest.param("round(1.5, ndigits=1)", r"keyword arguments", id="kwargs"),
        pytest.param("event.count > 10000000000000", r"exceeds the budget", id="huge-int"),
        pytest.param("event.count > 1e300", r"exceeds the budget", id="huge-float"),
        pytest.param("analysis.root_cause ==", r"syntax error", id="syntax"),
        pytest.param("x = 1", r"syntax error", id="statement"),
        pytest.param("", r"empty", id="empty"),
        pytest.param("   ", r"empty", id="blank"),
    ],
)
def test_refused_at_construction(source, pattern):
    with pytest.raises(ExpressionError, match=pattern):
        Expression(source)


def test_over_long_source_is_refused():
    source = "analysis.root_cause == '" + "x" * MAX_SOURCE + "'"

    with pytest.raises(ExpressionError, match=rf"longer than {MAX_SOURCE} characters"):
        Expression(source)


def test_too_many_nodes_is_refused():
    source = " + ".join(["1"] * 150)
    assert len(source) < MAX_SOURCE

    with pytest.raises(ExpressionError, match=r"too large"):
        Expression(source)


def test_non_string_source_is_refused():
    with pytest.raises(ExpressionError):
        Expression(42)  # type: ignore[arg-type]


def test_small_constant_exponent_is_allowed():
    assert Expression("2 ** 10").evaluate({}) == 1024


# ----------------------------------------------------------------------------- evaluation errors


@pytest.mark.parametrize(
    "source",
    [
        "1/0",
        "event.count % 0",
        "int('not a number')",
        "analysis.root_cause + 1",
        "events[5]",
        "steps['missing']['output']",
        "(9**64)**64",
        "'a' * 10000 * 10000",
        "workflow.name",  # a root name the caller did not provide
    ],
)
def test_evaluation_errors_become_expression_errors(source):
    expr = Expression(source)
    names = {"analysis": {"root_cause": "OOM"}, "event": {"count": 3}, "events": [1], "steps": {}}

    with pytest.raises(ExpressionError) as info:
        expr.evaluate(names)
    # The message names the expression, so an operator can find the rule at fault.
    assert repr(source) in str(info.value)


def test_zero_division_is_not_leaked():
    expr = Expression("event.count / 0")

    with pytest.raises(ExpressionError, match=r"ZeroDivisionError") as info:
        expr.evaluate({"event": {"count": 3}})
    assert not isinstance(info.value, ZeroDivisionError)
