"""Fixtures for the integration tests: the HTTP stand-ins, started and stopped per test,
and helpers to load workflows through the same path as rule files."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from standins import AgentManager, ReasoningService, Slack, StandIn  # noqa: E402

from engine.rules.check import load_valid  # noqa: E402
from engine.rules.model import Workflow  # noqa: E402

_STOPPING: list[StandIn] = []


def _request_stop(standins: Iterable[StandIn]) -> None:
    # A test may leave a request sleeping in a stand-in (a slow answer the client gave up
    # on): shutdown waits for it only briefly, then cancels it.
    for standin in standins:
        if standin._server is not None:
            standin._server.config.timeout_graceful_shutdown = 0.2
            standin._server.should_exit = True


def _stop(*standins: StandIn) -> None:
    """Stop stand-ins now (each takes a tick or two of uvicorn's loop, so together)."""
    _request_stop(standins)
    for standin in standins:
        standin.stop()


@pytest.fixture(scope="session", autouse=True)
def _reap_standins() -> Iterator[None]:
    yield
    _stop(*_STOPPING)


@pytest.fixture
def _standins() -> Iterator[list[StandIn]]:
    """The stand-ins a test started. After the test they are told to exit, on their own
    ports, and joined at the end of the session, so no test waits for a shutdown."""
    started: list[StandIn] = []
    yield started
    _request_stop(started)
    _STOPPING.extend(started)


@pytest.fixture
def agent(_standins: list[StandIn]) -> AgentManager:
    standin = AgentManager().start()
    _standins.append(standin)
    return standin


@pytest.fixture
def reasoning(_standins: list[StandIn]) -> ReasoningService:
    standin = ReasoningService().start()
    _standins.append(standin)
    return standin


@pytest.fixture
def slack(_standins: list[StandIn]) -> Slack:
    standin = Slack().start()
    _standins.append(standin)
    return standin


@pytest.fixture
def stop_standin():
    """Stop a stand-in in the middle of a test (it is then 'down')."""
    return _stop


@pytest.fixture
def load_workflow(tmp_path: Path):
    """Load a workflow given as a dict (or YAML text) through ``engine.rules.check.load_valid``,
    so step configs are parsed and the whole-set checks run, as for a rule file."""
    counter = iter(range(1_000_000))

    def load(doc: dict[str, Any] | str) -> Workflow:
        Workflow.model_validate(yaml.safe_load(doc) if isinstance(doc, str) else doc)
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
        path = tmp_path / f"workflow-{next(counter)}.yaml"
        path.write_text(text, encoding="utf-8")
        rules = load_valid(path)
        (workflow,) = rules.workflows.values()
        return workflow

    return load


# ----------------------------------------------------------------------------- workflow engines

@pytest.fixture(params=["builtin", "temporal"])
def engine(request: pytest.FixtureRequest):
    """The conformance suite's engine: the same test body runs on each."""
    from engines import Engine
    from test_runner import INCIDENT

    if request.param == "temporal":
        return Engine("temporal", request.getfixturevalue("temporal_server"), INCIDENT)
    return Engine("builtin", incident=INCIDENT)
