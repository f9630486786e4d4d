"""The quick-start demo: the reference documents' flow-of-flows on the embedded engine, twice.

    make demo

1. From Python: `parent-flow` runs upstream → downstream, then A, B and C at the same time, D.
2. Wired only by automations (examples/automations.yaml): upstream Completed → downstream with the
   batch id from the upstream's result; A Completed → B and C; B and C Completed for the same
   batch → D. A live table of runs follows the events, and the graph of the wiring ends it.

Embedded mode (`broker.url: memory://`, SQLite): the server, its outbox relay and a worker for the
`demo` pool all run in this process, exactly as `flowrelay dev` does. The same flows run unchanged
on RabbitMQ with `flowrelay server` and `flowrelay worker` processes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("FLOWRELAY_LOGGING__LEVEL", "WARNING")  # the table tells the story

from rich.console import Console
from rich.live import Live
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flows import (  # noqa: E402
    downstream_flow,
    flow_a,
    flow_b,
    flow_c,
    flow_d,
    parent_flow,
    upstream_flow,
)

from engine import run_deployment  # noqa: E402
from engine.cli import output  # noqa: E402
from engine.client import get_client  # noqa: E402
from engine.schemas import Event  # noqa: E402


def main() -> int:
    console = Console()
    for f in (upstream_flow, downstream_flow, flow_a, flow_b, flow_c, flow_d, parent_flow):
        deployment = f.deploy("demo", work_pool="demo")
        console.print(f"deployed [bold]{deployment.full_name}[/] (version {deployment.version})")
    start = time.perf_counter()
    parent = run_deployment("parent-flow/demo", timeout=60)
    elapsed = time.perf_counter() - start
    client = get_client()
    runs = [parent, *sorted(client.read_children(parent.id), key=lambda r: r.start_time or r.created)]
    table = Table(title=f"flow run {parent.name!r} and its children ({elapsed * 1000:.0f} ms)")
    for col in ("deployment", "run", "state", "parameters", "result", "duration"):
        table.add_column(col)
    for run in runs:
        table.add_row(run.deployment_name or run.flow_name, run.name,
                      output.state_text(run.state), str(run.parameters), str(run.result),
                      output.duration(run.start_time, run.end_time))
    console.print(table)
    console.print(f"parent-flow finished {parent.state_name}: {parent.result}")
    if not (parent.state and parent.state.is_completed()):
        return 1
    return 0 if by_automations(console) else 1


def by_automations(console: Console) -> bool:
    """Act 2: the same chain, launched by events and automations only."""
    from automations.client import automations_client
    from automations.graph import build_graph
    from automations.models import Automation
    from engine.runtime import embedded

    rules = (Path(__file__).resolve().parent / "automations.yaml")

    async def apply(_: object) -> list[str]:
        api = await automations_client()
        names: list[str] = await api.apply_automations(
            documents=[{"source": str(rules), "text": rules.read_text()}]
        )
        return names

    names = embedded.call_sync(apply)
    console.print(f"\napplied automations: {', '.join(names)}")
    batch_id = f"b-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    with LiveRuns(console, title=f"runs launched by automations for batch {batch_id}") as live:
        run_deployment("upstream-data-preparation/demo", wait=False)
        run_deployment("A/demo", {"batch_id": batch_id}, wait=False)
        done = live.wait_for(lambda runs: _finished(runs, batch_id), timeout=30)
    elapsed = time.perf_counter() - start
    console.print()
    console.print(f"chain finished in {elapsed * 1000:.0f} ms" if done else "[red]chain did not finish[/]")

    async def graph(api: object) -> str:
        auto = await automations_client()
        rows = await auto.read_automations()
        deployments = [{"name": d.full_name, "flow": d.flow_name, "state": None}
                       for d in await api.read_deployments()  # type: ignore[attr-defined]
                       if d.full_name.endswith("/demo") and d.flow_name != "parent-flow"]
        models = [(Automation.model_validate(r["definition"]), r["enabled"]) for r in rows]
        return build_graph(deployments, models).text()

    console.print("\n[bold]flowrelay graph[/]")
    console.print(embedded.call_sync(graph), markup=False, highlight=False, soft_wrap=True)
    return done


def _finished(runs: dict[str, dict[str, str]], batch_id: str) -> bool:
    """downstream and D completed, D for this batch."""
    states = {(r["deployment"], r["state"]) for r in runs.values()}
    d_done = any(r["deployment"] == "D/demo" and r["state"] == "Completed" and batch_id in r["parameters"]
                 for r in runs.values())
    return d_done and ("downstream-processing/demo", "Completed") in states


class LiveRuns:
    """A live table of flow runs, updated from their events (no polling)."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.runs: dict[str, dict[str, str]] = {}
        self._changed = threading.Condition()

    def __enter__(self) -> LiveRuns:
        from engine.runtime import embedded

        self._live = Live(self._table(), console=self.console, refresh_per_second=20)
        self._live.__enter__()
        embedded.call_sync(lambda _: self._subscribe())
        return self

    async def _subscribe(self) -> None:
        from engine.broker.topology import Names, QueueSpec
        from engine.runtime import embedded

        broker = embedded.broker()
        names = Names()
        self._queue = await broker.declare_queue(QueueSpec.temporary(prefix=f"{names.prefix}.demo"))
        await broker.bind(self._queue, names.events, "flow-run.#")
        self._consumer = await broker.consume(self._queue, self._on_event, prefetch=100)

    async def _on_event(self, message: Any) -> None:
        await message.ack()
        event = Event.model_validate_json(message.body)
        run_id = str(event.resource.get("id", ""))
        with self._changed:
            row = self.runs.setdefault(run_id, {"deployment": "", "name": "", "state": "", "parameters": "", "result": ""})
            row["deployment"] = str(event.resource.get("deployment") or event.resource.get("flow"))
            row["name"] = str(event.resource.get("name"))
            row["state"] = event.event.removeprefix("flow-run.")
            row["parameters"] = json.dumps(event.payload.get("parameters") or {})
            if "result" in event.payload:
                row["result"] = json.dumps(event.payload["result"])
            self._changed.notify_all()
        self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=self.title)
        for col in ("deployment", "run", "state", "parameters", "result"):
            table.add_column(col)
        for row in self.runs.values():
            table.add_row(row["deployment"], row["name"], output.state_text(_state(row["state"])),
                          row["parameters"], row["result"])
        return table

    def wait_for(self, done: Any, timeout: float) -> bool:
        with self._changed:
            return bool(self._changed.wait_for(lambda: done(self.runs), timeout=timeout))

    def __exit__(self, *exc: object) -> None:
        from engine.runtime import embedded

        async def close(_: object) -> None:
            await self._consumer.cancel()
            await embedded.broker().delete_queue(self._queue)

        embedded.call_sync(close)
        self._live.update(self._table())
        self._live.__exit__(None, None, None)


def _state(name: str) -> Any:
    from engine.states import STATE_NAMES, State

    kind = STATE_NAMES.get(name)
    return State(type=kind, name=name) if kind is not None else None


if __name__ == "__main__":
    sys.exit(main())
