"""The seed documents' flows, translated to flowrelay, for the tests that run them as
deployments on RabbitMQ (tests/seeds/test_seeds_distributed.py) with `flowrelay server` and
`flowrelay worker` processes.

Each flow appends `name pid time extra` to the file named by FLOWRELAY_TEST_RECORD, so a test can
see what ran, in which order, with which parameters.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime

from pydantic import BaseModel

from engine import create_flow_run, flow, get_run_logger, run_deployment, task, wait_for_flow_run
from engine.client import get_client


def record(name: str, extra: str = "") -> None:
    path = os.environ.get("FLOWRELAY_TEST_RECORD")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name} {os.getpid()} {time.time():.6f} {extra}\n")


# --- seed 000/001: "Running a parametrized flow" -----------------------------------------------
@flow(name="example")
def example(param_key: str = "default") -> str:
    record("example", param_key)
    return f"processed {param_key}"


@task
def extract_some_data() -> dict[str, str]:
    return {"param_key": "some-random-piece-of-data"}


@flow(name="parent-flow-create")
def parent_create() -> str:
    """Seed 000, functional API: create the child's run with parameters made by a task, don't wait."""
    flow_run = create_flow_run(flow_name="example", parameters=extract_some_data())
    return str(flow_run)


@flow(name="parent-flow-start")
def parent_start() -> str:
    """Seed 001: `StartFlowRun(flow_name="example", wait=True)(parameters=extract_some_data)`."""
    run = run_deployment("example/seeds", parameters=extract_some_data())
    return str(run.result)


# --- seed 000/001: "Scheduling a Flow-of-Flows" --------------------------------------------------
@flow(name="A")
def flow_a(batch_id: str = "b-0") -> str:
    record("A", batch_id)
    return batch_id


@flow(name="B")
def flow_b(batch_id: str = "b-0") -> str:
    time.sleep(0.3)
    record("B", batch_id)
    return f"B({batch_id})"


@flow(name="C")
def flow_c(batch_id: str = "b-0") -> str:
    time.sleep(0.3)
    record("C", batch_id)
    return f"C({batch_id})"


@flow(name="D")
def flow_d(b: str = "", c: str = "") -> str:
    record("D", f"{b}+{c}")
    return f"D[{b}, {c}]"


@flow(name="parent-flow")
def parent_flow_of_flows(batch_id: str = "b-0") -> str:
    """Seed 000: create_flow_run + wait_for_flow_run(raise_final_state=True); B and C both wait
    for A, D for B and C (B and C are created before either is waited for, so they overlap)."""
    flow_a_run = create_flow_run(flow_name="A", parameters={"batch_id": batch_id})
    wait_for_flow_run(flow_a_run, raise_final_state=True)
    flow_b_run = create_flow_run(flow_name="B", parameters={"batch_id": batch_id})
    flow_c_run = create_flow_run(flow_name="C", parameters={"batch_id": batch_id})
    b = wait_for_flow_run(flow_b_run, raise_final_state=True)
    c = wait_for_flow_run(flow_c_run, raise_final_state=True)
    flow_d_run = create_flow_run(flow_name="D", parameters={"b": b.result, "c": c.result})
    return str(wait_for_flow_run(flow_d_run, raise_final_state=True).result)


@flow(name="parent-flow-wait")
async def parent_start_flow_run_wait(batch_id: str = "b-0") -> str:
    """Seed 001: StartFlowRun(..., wait=True) for A, B, C, D → run_deployment (waits by default)."""
    a = await run_deployment("A/seeds", {"batch_id": batch_id})
    b, c = await asyncio.gather(
        run_deployment("B/seeds", {"batch_id": a.result}),
        run_deployment("C/seeds", {"batch_id": a.result}),
    )
    d = await run_deployment("D/seeds", {"b": b.result, "c": c.result})
    return str(d.result)


@flow(name="broken")
def broken() -> None:
    record("broken")
    raise ValueError("broken child")


@flow(name="parent-of-broken")
def parent_of_broken() -> str:
    """Seed 000, "reflect the flow run state as the task state": a failed child fails the caller."""
    child = create_flow_run(flow_name="broken")
    wait_for_flow_run(child, raise_final_state=True)
    return "not reached"


@flow(name="parent-retried", retries=1, retry_delay_seconds=0)
def parent_retried() -> str:
    """Seed 000, "stable retries to prevent duplication of runs": a retry gets the same child."""
    child = create_flow_run(flow_name="example", parameters={"param_key": "once"})
    record("parent-retried", str(child))
    if len([line for line in open(os.environ["FLOWRELAY_TEST_RECORD"]) if line.startswith("parent-retried ")]) < 2:
        raise RuntimeError("first attempt fails after launching its child")
    return str(wait_for_flow_run(child, raise_final_state=True).result)


# --- seed 002: the flow-dependencies guide --------------------------------------------------------
@flow(name="Upstream Data Preparation")
def upstream_data_preparation(batch_id: str = "batch_123", seconds: float = 0.0) -> dict[str, str]:
    time.sleep(seconds)
    record("upstream", batch_id)
    return {"batch_id": batch_id}


def get_latest_upstream_batch() -> str:
    """The latest successful upstream run's batch id (read from the engine, no polling)."""
    [latest] = get_client().read_flow_runs(flow="Upstream Data Preparation", state="Completed", limit=1)
    return str(latest.result["batch_id"])


@flow(name="Downstream Data Processing")
def downstream_flow(upstream_batch_id: str = None) -> str:  # type: ignore[assignment] - as in the seed
    if not upstream_batch_id:
        # Get latest successful upstream run
        upstream_batch_id = get_latest_upstream_batch()
    record("downstream", upstream_batch_id)
    return f"processed {upstream_batch_id}"


@flow(name="Data Processing")
def data_processing_flow() -> int:
    """The guide's "basic ETL workflow" (its `data-processing-demo` deployment runs hourly)."""
    return 3


@task
async def trigger_downstream() -> str:
    flow_run = await run_deployment(
        name="Downstream Data Processing/downstream-processing",
        parameters={"upstream_batch_id": "batch_123"},
    )
    return str(flow_run.id)


@flow(name="trigger")
async def trigger() -> str:
    return await trigger_downstream()


@task
def wait_for_flow_completion(flow_name: str) -> str:
    """The guide's polling loop (`while True: read_flow_runs ...; sleep(10)`), event-driven: take
    the flow's latest run and wait on its events until it is final."""
    [latest] = get_client().read_flow_runs(flow=flow_name, limit=1)
    run = wait_for_flow_run(latest.id, raise_final_state=True, timeout=60)
    return str(run.result["batch_id"])


@flow(name="waits-for-upstream")
def waits_for_upstream() -> str:
    batch_id = wait_for_flow_completion("Upstream Data Preparation")
    get_run_logger().info("upstream done: %s", batch_id)
    return downstream_flow(batch_id)


@flow(name="flaky")
def flaky() -> None:
    record("flaky")
    raise RuntimeError("flaky fails")


# --- seed 003: creating flow runs -------------------------------------------------------------------
@flow(name="hello-world")
def hello_world(name: str = "world") -> str:
    get_run_logger().info("Hello, %s!", name)
    record("hello-world", name)
    return f"Hello, {name}!"


@flow(name="parent-of-hello")
def parent_of_hello(wait: bool = True) -> str:
    # Create the child flow run, look up the flow by name
    child_run_id = create_flow_run(flow_name="hello-world")
    # Wait for the flow run to complete before considering this flow run done
    # This is optional, this flow could exit and leave the other one running
    if wait:
        wait_for_flow_run(child_run_id)
    return str(child_run_id)


# --- seed 004: parameters of deployment runs ---------------------------------------------------------
class Model(BaseModel):
    a: int
    b: float
    c: str


@flow
def model_validator(model: Model) -> str:
    record("model_validator", repr(model).replace(" ", "_"))
    return f"{model.a!r} {model.b!r} {model.c!r}"


@flow
def what_day_is_it(date: datetime = None) -> str:  # type: ignore[assignment] - as in the seed
    if date is None:
        date = datetime.utcnow()
    return f"It was {date.strftime('%A')} on {date.isoformat()}"


# --- seed 002, "Option 1: Run Orchestrator Flow" (`python orchestrator_flow.py`) ----------------------
@flow(name="orchestrator")
def orchestrator_flow(batch_id: str = "batch-orch") -> dict[str, object]:
    # Execute flows in sequence
    result1 = upstream_data_preparation(batch_id)
    result3 = downstream_flow(result1["batch_id"])
    return {"all_results": [result1, result3]}


if __name__ == "__main__":
    print(orchestrator_flow())
