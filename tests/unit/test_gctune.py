"""The replica's garbage-collector settings: what the configuration says, applied once started."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from engine import gctune
from engine.config import Config


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_what_startup_left_and_sets_the_thresholds(restore_gc) -> None:
    kept = [[] for _ in range(1000)]       # objects the startup holds on to
    gctune.tune((12_345, 7, 3))
    assert gc.get_threshold() == (12_345, 7, 3)
    assert gc.get_freeze_count() >= len(kept)
    # Cyclic garbage made afterwards is still collected.
    cycle: list = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_the_configuration_sets_the_thresholds_and_refuses_nonsense() -> None:
    assert Config().service.gc_thresholds == gctune.THRESHOLDS
    assert Config.model_validate({"service": {"gc_thresholds": [700, 10, 10]}}).service.gc_thresholds == (
        700, 10, 10)
    with pytest.raises(ValidationError, match="gc_thresholds"):
        Config.model_validate({"service": {"gc_thresholds": [0, 10, 10]}})
    with pytest.raises(ValidationError, match="gc_thresholds"):
        Config.model_validate({"service": {"gc_thresholds": [700, 10]}})
