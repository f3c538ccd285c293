"""engine.metrics: every label takes values from a bounded set, and the series of rules that
are gone are removed."""

from __future__ import annotations

from engine.metrics import MAX_RULE_LABELS, OTHER, Metrics


def series(metrics: Metrics, name: str) -> list[str]:
    return [line for line in metrics.render().decode().splitlines() if line.startswith(name + "{")]


def test_fixed_labels_fold_unknown_values_into_other() -> None:
    metrics = Metrics()
    metrics.events_in.labels("nats").inc()
    metrics.events_in.labels("carrier-pigeon").inc()
    metrics.step_seconds.labels("wait", "succeeded").observe(0.1)
    metrics.step_seconds.labels("made-up-type", "weird").observe(0.1)
    metrics.reloads.labels("maybe").inc()
    assert series(metrics, "aetherius_events_received_total") == [
        'aetherius_events_received_total{source="nats"} 1.0',
        f'aetherius_events_received_total{{source="{OTHER}"}} 1.0']
    counts = series(metrics, "aetherius_step_duration_seconds_count")
    assert counts == ['aetherius_step_duration_seconds_count{status="succeeded",type="wait"} 1.0',
                      'aetherius_step_duration_seconds_count{status="other",type="other"} 1.0']
    assert series(metrics, "aetherius_rules_reloads_total") == [
        'aetherius_rules_reloads_total{result="other"} 1.0']


def test_rule_labels_are_the_active_rules_and_deleted_ones_leave_no_series() -> None:
    metrics = Metrics()
    metrics.rules_changed(["crash", "oom"], ["restart"])
    metrics.hits.labels("crash", "hit").inc()
    metrics.hits.labels("oom", "inhibited").inc()
    metrics.incidents.labels("crash").inc()
    metrics.executions.labels("restart", "succeeded").inc()
    metrics.hits.labels("never-loaded", "hit").inc()      # not a rule of the generation
    assert len(series(metrics, "aetherius_strategy_hits_total")) == 3
    metrics.rules_changed(["oom"], [])                     # crash and restart deleted
    assert series(metrics, "aetherius_strategy_hits_total") == [
        'aetherius_strategy_hits_total{outcome="inhibited",strategy="oom"} 1.0',
        'aetherius_strategy_hits_total{outcome="hit",strategy="other"} 1.0']
    assert series(metrics, "aetherius_incidents_opened_total") == []
    assert series(metrics, "aetherius_executions_total") == []
    # A late execution of a deleted workflow (it pinned its version) counts as other.
    metrics.executions.labels("restart", "failed").inc()
    assert series(metrics, "aetherius_executions_total") == [
        'aetherius_executions_total{status="failed",workflow="other"} 1.0']


def test_rule_labels_are_capped_before_and_after_the_rules_are_known() -> None:
    metrics = Metrics()
    for i in range(MAX_RULE_LABELS + 100):                  # no generation yet: first come, up to the cap
        metrics.incidents.labels(f"s{i:05d}").inc()
    assert len(series(metrics, "aetherius_incidents_opened_total")) == MAX_RULE_LABELS + 1
    ids = [f"s{i:05d}" for i in range(2 * MAX_RULE_LABELS)]
    metrics.rules_changed(reversed(ids), [])
    for ident in ids:
        metrics.incidents.labels(ident).inc()
    lines = series(metrics, "aetherius_incidents_opened_total")
    assert len(lines) == MAX_RULE_LABELS + 1                 # the first ids in order, and other
    assert f'aetherius_incidents_opened_total{{strategy="s{MAX_RULE_LABELS - 1:05d}"}} 2.0' in lines
    assert not [line for line in lines if f"s{MAX_RULE_LABELS:05d}" in line]
