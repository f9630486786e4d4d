"""The flows of the quick-start demo: the reference documents' flow-of-flows.

`upstream-data-preparation` produces a batch, `downstream-processing` takes its id as a parameter;
`parent-flow` runs A, then B and C at the same time, then D — each a deployment, run by a worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from engine import flow, get_run_logger, run_deployment, task


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
def flow_a(batch_id: str) -> str:
    return batch_id


@flow(name="B")
def flow_b(batch_id: str) -> str:
    time.sleep(0.2)
    return f"B({batch_id})"


@flow(name="C")
def flow_c(batch_id: str) -> str:
    time.sleep(0.2)
    return f"C({batch_id})"


@flow(name="D")
def flow_d(b: str, c: str) -> str:
    return f"D[{b}, {c}]"


@flow(name="parent-flow")
async def parent_flow() -> str:
    upstream = await run_deployment("upstream-data-preparation/demo")
    batch_id = upstream.result["batch_id"]
    await run_deployment("downstream-processing/demo", {"upstream_batch_id": batch_id})
    a = await run_deployment("A/demo", {"batch_id": batch_id})
    b, c = await asyncio.gather(                      # B and C at the same time
        run_deployment("B/demo", {"batch_id": a.result}),
        run_deployment("C/demo", {"batch_id": a.result}),
    )
    d = await run_deployment("D/demo", {"b": b.result, "c": c.result})
    return d.result
