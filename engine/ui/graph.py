"""A workflow drawn as SVG, laid out on the server (no script draws it).

Nodes are steps (id, type and, on an execution, status, attempts and duration). Edges are
``on_success`` (solid green), ``on_failure`` (dashed red), a decision's branches (blue,
labelled with their condition) and a parallel step's branches (dotted purple). Steps are put
in layers by the longest path from the first step (edges that close a loop are drawn as
loops, along the side), and each layer is ordered by where its parents are, which keeps most
edges short and uncrossed for the shapes workflows have (chains, fans, diamonds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from engine.rules.model import StepSpec, Workflow
from steps import REGISTRY

NODE_W, NODE_H = 188, 48
GAP_X, GAP_Y = 28, 46
MARGIN = 16
COLOURS = {"success": "#2e7d32", "failure": "#c62828", "decision": "#1565c0", "branch": "#6a1b9a"}
DASH = {"success": "", "failure": "6 4", "decision": "", "branch": "2 3"}
EXIT = {"success": -14.0, "failure": 14.0, "decision": 0.0, "branch": 0.0}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str          # success | failure | decision | branch
    label: str = ""


def edges(workflow: Workflow) -> list[Edge]:
    """Every edge of the graph, in step order."""
    ids = {step.id for step in workflow.steps}
    out: list[Edge] = []
    for step in workflow.steps:
        out += [Edge(step.id, t, "success") for t in step.on_success if t in ids]
        out += [Edge(step.id, t, "failure") for t in step.on_failure if t in ids]
        kind = REGISTRY.get(step.type)
        parsed = step._parsed
        if kind is None or parsed is None:
            continue
        labels = _branch_labels(step)
        branches = list(dict.fromkeys(kind.branch_steps(parsed)))
        # A parallel step names its branches as targets too: they are drawn once, as branches.
        out += [Edge(step.id, t, "decision", labels.get(t, "")) for t in dict.fromkeys(kind.targets(parsed))
                if t in ids and t not in branches]
        out += [Edge(step.id, t, "branch") for t in branches if t in ids]
    return out


def _branch_labels(step: StepSpec) -> dict[str, str]:
    """A decision's condition per target, from its raw config (``default`` for the default)."""
    labels: dict[str, str] = {}
    for branch in step.config.get("conditions") or []:
        if isinstance(branch, dict) and isinstance(branch.get("then"), str):
            labels.setdefault(branch["then"], str(branch.get("if", "")))
    default = step.config.get("default")
    if isinstance(default, str):
        labels.setdefault(default, "default")
    return labels


def layout(workflow: Workflow, graph: list[Edge]) -> tuple[dict[str, tuple[int, int]], set[tuple[str, str]]]:
    """(step id -> (layer, position in layer)), and the edges that close a loop."""
    order = [step.id for step in workflow.steps]
    children: dict[str, list[str]] = {sid: [] for sid in order}
    for edge in graph:
        children[edge.source].append(edge.target)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}     # 1 on the stack, 2 done
    post: list[str] = []
    for root in order:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            if i < len(children[node]):
                stack[-1] = (node, i + 1)
                child = children[node][i]
                if state.get(child) == 1:
                    back.add((node, child))
                elif child not in state:
                    state[child] = 1
                    stack.append((child, 0))
            else:
                state[node] = 2
                post.append(node)
                stack.pop()
    layer = dict.fromkeys(order, 0)
    for node in reversed(post):
        for child in children[node]:
            if (node, child) not in back:
                layer[child] = max(layer[child], layer[node] + 1)
    rows: dict[int, list[str]] = {}
    for sid in order:
        rows.setdefault(layer[sid], []).append(sid)
    parents: dict[str, list[str]] = {sid: [] for sid in order}
    for edge in graph:
        if (edge.source, edge.target) not in back:
            parents[edge.target].append(edge.source)
    where: dict[str, tuple[int, int]] = {}
    for depth in sorted(rows):
        def centre(sid: str) -> float:
            placed = [where[p][1] for p in parents[sid] if p in where]
            return sum(placed) / len(placed) if placed else float(order.index(sid))
        for i, sid in enumerate(sorted(rows[depth], key=lambda s: (centre(s), order.index(s)))):
            where[sid] = (depth, i)
    return where, back


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s" if ms < 120_000 else f"{ms / 60000:.1f} min"


def svg(workflow: Workflow, runs: Mapping[str, Mapping[str, Any]] | None = None, *,
        link: str = "#step-") -> Markup:
    """The workflow's SVG; ``runs``: step id -> {status, attempts, duration_ms, error} of the
    step's last run in an execution (colours the nodes and adds timings)."""
    graph = edges(workflow)
    where, back = layout(workflow, graph)
    width = max((pos for _, pos in where.values()), default=0) + 1
    depth = max((d for d, _ in where.values()), default=0) + 1
    row_width: dict[int, int] = {}
    for d, _ in where.values():
        row_width[d] = row_width.get(d, 0) + 1
    total_w = MARGIN * 2 + width * NODE_W + (width - 1) * GAP_X + 40
    total_h = MARGIN * 2 + depth * NODE_H + (depth - 1) * GAP_Y

    def box(sid: str) -> tuple[float, float]:
        d, i = where[sid]
        offset = (width - row_width[d]) * (NODE_W + GAP_X) / 2     # centre short rows
        return MARGIN + offset + i * (NODE_W + GAP_X), MARGIN + d * (NODE_H + GAP_Y)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" '
             f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" width="{total_w:.0f}" height="{total_h:.0f}" '
             f'aria-label="{escape(f"workflow {workflow.id}")}">',
             '<defs>' + "".join(
                 f'<marker id="arrow-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                 f'markerHeight="7" orient="auto-start-reverse">'
                 f'<path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
                 for k, c in COLOURS.items()) + '</defs>']
    for edge in graph:
        sx, sy = box(edge.source)
        tx, ty = box(edge.target)
        colour, dash = COLOURS[edge.kind], DASH[edge.kind]
        attrs = (f'fill="none" stroke="{colour}" stroke-width="1.6" marker-end="url(#arrow-{edge.kind})"'
                 + (f' stroke-dasharray="{dash}"' if dash else ""))
        if (edge.source, edge.target) in back or ty <= sy:
            # A loop (or a jump back up): out of the right side, along it, into the target's right side.
            x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H / 2, tx + NODE_W, ty + NODE_H / 2
            bend = max(x1, x2) + 30
            route = f"M{x1:.0f},{y1:.0f} C{bend:.0f},{y1:.0f} {bend:.0f},{y2:.0f} {x2 + 2:.0f},{y2:.0f}"
        else:
            # Success leaves left of centre, failure right of it, so the two never share a line.
            x1 = sx + NODE_W / 2 + EXIT[edge.kind]
            y1, x2, y2 = sy + NODE_H, tx + NODE_W / 2 + EXIT[edge.kind] / 2, ty - 2
            mid = y1 + min(GAP_Y, (y2 - y1) / 2)
            route = f"M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} {x2:.0f},{y2:.0f}"
        title = f"{edge.source} → {edge.target}: {edge.kind}" + (f" ({edge.label})" if edge.label else "")
        parts.append(f'<path class="edge edge-{edge.kind}" d="{route}" {attrs}>'
                     f'<title>{escape(title)}</title></path>')
        if edge.label:
            # Just above its target's arrow, centred: labels of edges to different targets stay apart.
            text = edge.label if len(edge.label) <= 26 else edge.label[:25] + "…"
            parts.append(f'<text class="edge-label" x="{x2:.0f}" y="{y2 - 9:.0f}" text-anchor="middle" '
                         f'fill="{colour}">{escape(text)}</text>')
    for step in workflow.steps:
        x, y = box(step.id)
        run = (runs or {}).get(step.id)
        status = str(run.get("status")) if run else "not_run"
        detail: str = step.type
        if run:
            timing = _fmt_ms(run.get("duration_ms"))
            attempts = run.get("attempts") or 0
            detail = " · ".join(p for p in (step.type, status.replace("_", " "), timing,
                                            f"×{attempts}" if attempts and attempts > 1 else "") if p)
        tip = f"{step.id} ({step.type}): {status}"
        if run and run.get("error"):
            tip += f"\n{str(run['error'])[:300]}"
        label = step.id if len(step.id) <= 24 else step.id[:23] + "…"
        detail = detail if len(detail) <= 32 else detail[:31] + "…"
        parts.append(
            f'<a href="{escape(link + step.id)}" class="node status-{escape(status)}" '
            f'data-step="{escape(step.id)}">'
            f'<title>{escape(tip)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 10:.0f}" y="{y + 20:.0f}" class="node-id">{escape(label)}</text>'
            f'<text x="{x + 10:.0f}" y="{y + 38:.0f}" class="node-type">{escape(detail)}</text></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
