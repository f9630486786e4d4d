"""The quick-start demo: a flow-of-flows of deployments on the embedded engine.

    make demo

Embedded mode (`broker.url: memory://`, SQLite): the server, its outbox relay and a worker for the
`demo` pool all run in this process, exactly as `flowrelay dev` does. The same flows run unchanged
on RabbitMQ with `flowrelay server` and `flowrelay worker` processes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("FLOWRELAY_LOGGING__LEVEL", "WARNING")  # the table tells the story

from rich.console import Console
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
    return 0 if parent.state and parent.state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
