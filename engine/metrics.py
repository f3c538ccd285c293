"""Prometheus metrics of the service (``GET /metrics``).

Each service instance has its own registry, so tests can run several in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("aetherius_events_received_total", "Events taken in", ["source"], registry=r)
        self.events_dedup = Counter("aetherius_events_duplicate_total", "Duplicate events dropped",
                                    registry=r)
        self.dead_letters = Counter("aetherius_dead_letters_total",
                                    "Malformed inputs recorded as dead letters", ["source"], registry=r)
        self.hits = Counter("aetherius_strategy_hits_total", "Events that matched a strategy",
                            ["strategy", "outcome"], registry=r)
        self.incidents = Counter("aetherius_incidents_opened_total", "Incidents opened", ["strategy"],
                                 registry=r)
        self.executions = Counter("aetherius_executions_total", "Workflow executions by final status",
                                  ["workflow", "status"], registry=r)
        self.outcomes = Counter("aetherius_execution_outcomes_total",
                                "Executions by what they did to the cluster (engine.outcomes)", ["outcome"],
                                registry=r)
        self.executions_running = Gauge("aetherius_executions_running", "Executions running here",
                                        registry=r)
        self.step_seconds = Histogram(
            "aetherius_step_duration_seconds", "Step run duration", ["type", "status"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.reloads = Counter("aetherius_rules_reloads_total", "Rule reloads", ["result"], registry=r)
        self.rules_ok = Gauge("aetherius_rules_valid", "1 if the last reload was valid, 0 if it failed",
                              registry=r)
        self.rules_generation = Gauge("aetherius_rules_generation", "Active rule generation", registry=r)
        self.publish_to_start = Histogram(
            "aetherius_event_to_execution_seconds", "From an incident's first event to its execution start",
            registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))

    def render(self) -> bytes:
        return generate_latest(self.registry)
