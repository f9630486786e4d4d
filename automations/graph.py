"""`flowrelay graph`: deployments as nodes, automations as edges labelled with their trigger.

    upstream/nightly --[on Completed]--> downstream/processing   (downstream-after-upstream)

Rendered as text, Mermaid (`flowchart LR`) or Graphviz dot, from the same `Graph`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from automations.describe import describe_trigger, sources_of
from automations.models import (
    Automation,
    PauseDeploymentAction,
    ResumeDeploymentAction,
    RunDeploymentAction,
)

__all__ = ["Edge", "Graph", "build_graph"]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    automation: str
    label: str
    action: str
    enabled: bool = True


@dataclass
class Graph:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": [{"id": k, **v} for k, v in self.nodes.items()],
            "edges": [e.__dict__ for e in self.edges],
        }

    def text(self) -> str:
        lines = []
        for edge in self.edges:
            verb = "" if edge.action == "run-deployment" else f" {edge.action}"
            paused = "" if edge.enabled else "  [paused]"
            lines.append(
                f"{edge.source} --[{edge.label}]-->{verb} {edge.target}   ({edge.automation}){paused}"
            )
        linked = {e.source for e in self.edges} | {e.target for e in self.edges}
        for node in self.nodes:
            if node not in linked:
                lines.append(f"{node}   (no automation)")
        return "\n".join(lines) if lines else "(no deployments or automations)"

    def mermaid(self) -> str:
        ids = {name: f"n{i}" for i, name in enumerate(self.nodes)}
        lines = ["flowchart LR"]
        for name, node_id in ids.items():
            state = self.nodes[name].get("state")
            label = f"{name}<br/>{state}" if state else name
            lines.append(f'    {node_id}["{_quote(label)}"]')
        for edge in self.edges:
            style = "-.->" if not edge.enabled else "-->"
            lines.append(f'    {ids[edge.source]} {style}|"{_quote(edge.label)}"| {ids[edge.target]}')
        return "\n".join(lines)

    def dot(self) -> str:
        lines = ["digraph flowrelay {", "  rankdir=LR;", "  node [shape=box];"]
        for name, node in self.nodes.items():
            state = node.get("state")
            label = f"{name}\\n{state}" if state else name
            lines.append(f'  "{_dq(name)}" [label="{_dq(label)}"];')
        for edge in self.edges:
            style = ", style=dashed" if not edge.enabled else ""
            lines.append(
                f'  "{_dq(edge.source)}" -> "{_dq(edge.target)}" [label="{_dq(edge.label)}"{style}];'
            )
        lines.append("}")
        return "\n".join(lines)


def _quote(text: str) -> str:
    return text.replace('"', "#quot;")


def _dq(text: str) -> str:
    return re.sub(r'(["\\])', r"\\\1", text).replace("\\\\n", "\\n")


def build_graph(
    deployments: list[dict[str, Any]], automations: list[tuple[Automation, bool]]
) -> Graph:
    """`deployments`: [{"name": FLOW/NAME, "flow": ..., "state": latest run state or None}];
    `automations`: (automation, enabled)."""
    graph = Graph()
    flows: dict[str, list[str]] = {}
    for dep in deployments:
        graph.nodes[dep["name"]] = {"kind": "deployment", "state": dep.get("state")}
        flows.setdefault(dep["flow"], []).append(dep["name"])
    for automation, enabled in automations:
        sources = sources_of(automation, flows)
        label = describe_trigger(automation)
        for action in automation.actions:
            if not isinstance(action, RunDeploymentAction | PauseDeploymentAction | ResumeDeploymentAction):
                continue
            target = action.deployment or "(triggering deployment)"
            for node in [*sources, target]:
                graph.nodes.setdefault(node, {"kind": "deployment" if "/" in node else "source", "state": None})
            for source in sources:
                graph.edges.append(Edge(source, target, automation.name, label, action.type, enabled))
    return graph
