"""Flows for the distributed integration tests: the reference documents' flow-of-flows.

Each flow appends a line `name pid time` to the file named by FLOWRELAY_TEST_RECORD so tests can
count executions and check ordering.
"""

from __future__ import annotations

import asyncio
import os
import time

from engine import create_flow_run, flow, get_run_logger, run_deployment, task, wait_for_flow_run


def record(name: str, extra: str = "") -> None:
    path = os.environ.get("FLOWRELAY_TEST_RECORD")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name} {os.getpid()} {time.time():.6f} {extra}\n")


@flow(name="trivial")
def trivial(x: int = 1) -> int:
    record("trivial")
    return x


@flow(name="A")
def flow_a(batch_id: str = "b-0") -> str:
    record("A", batch_id)
    get_run_logger().info("A ran for %s", batch_id)
    return batch_id


@flow(name="B")
def flow_b(batch_id: str = "b-0") -> str:
    time.sleep(0.5)
    record("B", batch_id)
    return f"B({batch_id})"


@flow(name="C")
def flow_c(batch_id: str = "b-0") -> str:
    time.sleep(0.5)
    record("C", batch_id)
    return f"C({batch_id})"


@flow(name="D")
def flow_d(b: str = "", c: str = "") -> str:
    record("D", f"{b}+{c}")
    return f"D[{b}, {c}]"


@flow(name="parent-flow")
async def parent_flow(batch_id: str = "b-1", deployment: str = "examples") -> str:
    """A, then B and C at the same time once A completed, then D once both completed."""
    a = await run_deployment(f"A/{deployment}", {"batch_id": batch_id})
    b, c = await asyncio.gather(
        run_deployment(f"B/{deployment}", {"batch_id": a.result}),
        run_deployment(f"C/{deployment}", {"batch_id": a.result}),
    )
    d = await run_deployment(f"D/{deployment}", {"b": b.result, "c": c.result})
    record("parent-flow")
    return d.result


@task
def extract_some_data() -> dict[str, str]:
    return {"batch_id": "some-random-piece-of-data"}


@flow(name="parent-param")
def parent_param(deployment: str = "examples") -> str:
    """The parametrised form: a task's output becomes the child's parameters."""
    params = extract_some_data()
    run_id = create_flow_run(f"A/{deployment}", parameters=params)
    child = wait_for_flow_run(run_id, raise_final_state=True)
    return child.result


@flow(name="sleepy")
def sleepy(seconds: float = 1.0) -> float:
    record("sleepy-start")
    time.sleep(seconds)
    record("sleepy-end")
    return seconds


@flow(name="failing")
def failing() -> None:
    record("failing")
    raise RuntimeError("failing on purpose")


@flow(name="crashy", retries=1)
def crashy(marker: str = "") -> str:
    """Sleeps long on its first attempt (the test SIGKILLs its worker), returns on the second."""
    record("crashy")
    path = os.environ["FLOWRELAY_TEST_RECORD"]
    attempts = sum(1 for line in open(path) if line.startswith("crashy "))
    if attempts == 1:
        time.sleep(60)
    return "survived"


@flow(name="typed")
def typed(n: int) -> int:
    record("typed")
    return n * 2


@flow(name="upstream")
def upstream(batch_id: str = "b-0") -> dict[str, str]:
    """Seed 002's upstream: its result feeds the downstream run's parameters."""
    record("upstream", batch_id)
    return {"batch_id": batch_id}


@flow(name="downstream")
def downstream(upstream_batch_id: str) -> str:
    record("downstream", upstream_batch_id)
    return f"processed {upstream_batch_id}"
