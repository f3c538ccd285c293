"""The workflow graph laid out on the server: every kind of edge, layers by the longest path,
loops drawn as loops, nodes coloured by their step's run, and every text escaped."""

from __future__ import annotations

import re

from engine.rules.loader import RuleSet, load_text
from engine.ui.graph import edges, layout, svg

WORKFLOW = """
id: g
trigger_type: manual
steps:
  - id: look
    type: command
    config: {action: logs, target: {namespace: shop, name: web}}
    on_success: [fan]
    on_failure: [tell]
  - id: fan
    type: parallel
    config: {branches: [[a], [b]]}
    on_success: [choose]
  - id: a
    type: wait
    config: {duration: 1s}
  - id: b
    type: wait
    config: {duration: 1s}
  - id: choose
    type: decision
    config:
      conditions:
        - {if: "len(steps) < 3 and 'x' != \\"<script>\\"", then: tell}
      default: look
  - id: tell
    type: notification
    config: {channel: log, message: done}
"""


def workflow():
    rules = RuleSet()
    load_text(rules, WORKFLOW, "g.yaml")
    return rules.workflows["g"]


def test_every_kind_of_edge_with_a_decision_labelled_by_its_condition() -> None:
    found = {(e.source, e.target, e.kind) for e in edges(workflow())}
    assert found == {("look", "fan", "success"), ("look", "tell", "failure"), ("fan", "a", "branch"),
                     ("fan", "b", "branch"), ("fan", "choose", "success"), ("choose", "tell", "decision"),
                     ("choose", "look", "decision")}
    labels = {e.target: e.label for e in edges(workflow()) if e.kind == "decision"}
    assert labels["look"] == "default" and labels["tell"].startswith("len(steps) < 3")


def test_layers_follow_the_longest_path_and_a_loop_is_a_back_edge() -> None:
    where, back = layout(workflow(), edges(workflow()))
    assert back == {("choose", "look")}
    depth = {sid: d for sid, (d, _) in where.items()}
    assert depth == {"look": 0, "fan": 1, "a": 2, "b": 2, "choose": 2, "tell": 3}
    assert len({where[s] for s in where}) == len(where)       # no two nodes in one place


def test_nodes_are_coloured_by_their_run_and_everything_is_escaped() -> None:
    drawn = str(svg(workflow(), {"look": {"status": "succeeded", "duration_ms": 1500, "attempts": 2},
                                 "tell": {"status": "failed", "error": "<b>boom</b> & more"}}))
    assert 'class="node status-succeeded" data-step="look"' in drawn
    assert "command · succeeded · 1.5 s · ×2" in drawn
    assert 'class="node status-not_run" data-step="fan"' in drawn
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; more" in drawn and "<b>" not in drawn
    assert "<script>" not in drawn and "&lt;" in drawn
    assert len(re.findall(r'<a href="#step-', drawn)) == 6
    assert drawn.count('class="edge edge-') == 7
