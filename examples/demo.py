"""The quick-start demo: a flow-of-flows on the embedded engine (SQLite, in-process broker).

    make demo

Runs an upstream flow whose result becomes the downstream flow's parameters, then the
reference documents' flow-of-flows: A, then B and C at the same time, then D once both finished.
Prints the runs as the engine recorded them.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from rich.console import Console
from rich.table import Table

from engine import flow, get_run_logger, task
from engine.client import get_client


@task
def extract_some_data() -> dict[str, str]:
    return {"batch_id": f"b-{uuid.uuid4().hex[:6]}"}


@flow(name="upstream-data-preparation")
def upstream_flow() -> dict[str, str]:
    batch = extract_some_data()
    get_run_logger().info("prepared batch %s", batch["batch_id"])
    return batch


@flow(name="downstream-processing")
def downstream_flow(upstream_batch_id: str) -> str:
    get_run_logger().info("processing batch %s", upstream_batch_id)
    return f"processed {upstream_batch_id}"


@flow(name="A")
async def flow_a(batch_id: str) -> str:
    await asyncio.sleep(0.05)
    return batch_id


@flow(name="B")
async def flow_b(batch_id: str) -> str:
    await asyncio.sleep(0.2)
    return f"B({batch_id})"


@flow(name="C")
async def flow_c(batch_id: str) -> str:
    await asyncio.sleep(0.2)
    return f"C({batch_id})"


@flow(name="D")
async def flow_d(b: str, c: str) -> str:
    return f"D[{b}, {c}]"


@flow(name="parent-flow")
async def parent_flow() -> str:
    batch = upstream_flow()                                   # a subflow; its result is data
    downstream_flow(upstream_batch_id=batch["batch_id"])      # parameters from upstream's result
    a = await flow_a(batch["batch_id"])
    b, c = await asyncio.gather(flow_b(a), flow_c(a))         # B and C at the same time
    return await flow_d(b, c)


def main() -> int:
    console = Console()
    start = time.perf_counter()
    state = asyncio.run(parent_flow(return_state=True))
    elapsed = time.perf_counter() - start
    client = get_client()
    [parent] = client.read_flow_runs(flow="parent-flow", limit=1)
    table = Table(title=f"flow runs of {parent.name} ({elapsed * 1000:.0f} ms)")
    for col in ("flow", "run", "state", "parameters", "result"):
        table.add_column(col)
    runs = [parent, *sorted(client.read_children(parent.id), key=lambda r: r.start_time or r.created)]
    for run in runs:
        table.add_row(run.flow_name, run.name, run.state.name if run.state else "-",
                      str(run.parameters), str(run.result))
    console.print(table)
    console.print(f"parent-flow finished {state.name}: {state.result(raise_on_failure=False)}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
