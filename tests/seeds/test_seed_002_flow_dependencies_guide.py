"""Seed 002 — "Prefect Flow Dependencies Guide": the in-process patterns (subflows, retries,
parameter passing, conditional, fan-out/fan-in, circuit breaker task) on the embedded engine.
The deployment, CLI and automation patterns of the same guide run on RabbitMQ in
test_seed_002_distributed.py.

Translations (smallest change):
- `from prefect import flow, task` → `from engine import flow, task`; the guide's helper
  functions it leaves undefined (`upstream_flow`, `check_upstream_completion`,
  `check_multiple_upstreams`, `process_partition`, `data_partitions`, ...) are defined here as the
  smallest flows/tasks that make each example run, and the undefined `logger` is
  `get_run_logger()`.
- `@task(retries=3, retry_delay_seconds=60)` → `retry_delay_seconds=0.05`, so the test is fast;
  the retry count is the seed's.
- "Use Prefect UI to visualize flow relationships" / "Web UI at http://localhost:4200": the
  flowrelay web UI (same port) is tested in tests/ui, not here.
"""

from __future__ import annotations

import asyncio

import pytest

from engine import flow, get_run_logger, task
from engine.client import get_client


# --- 1. Subflows (flow composition) --------------------------------------------------------------
@flow
def upstream_flow() -> dict:
    return {"batch_id": "batch_123"}


@flow
def data_processing_flow() -> dict:
    return {"rows": 3}


@flow
def downstream_flow(upstream_batch_id: str = None) -> dict:  # type: ignore[assignment] - as in the seed
    if not upstream_batch_id:
        # Get latest successful upstream run
        upstream_batch_id = get_latest_upstream_batch()
    return process_batch(upstream_batch_id)


def get_latest_upstream_batch() -> str:
    [latest] = get_client().read_flow_runs(flow="upstream_flow", state="Completed", limit=1)
    return str(latest.result["batch_id"])


@task
def process_batch(batch_id: str) -> dict:
    return {"processed": batch_id}


@flow
def orchestrator_flow():
    # Execute flows in sequence
    result1 = upstream_flow()
    result2 = data_processing_flow()
    result3 = downstream_flow(result1["batch_id"])
    return {"all_results": [result1, result2, result3]}


def test_subflows_in_sequence_pass_results_on() -> None:
    assert orchestrator_flow() == {"all_results": [
        {"batch_id": "batch_123"}, {"rows": 3}, {"processed": "batch_123"}]}
    client = get_client()
    [parent] = client.read_flow_runs(flow="orchestrator_flow")
    children = sorted(client.read_children(parent.id), key=lambda r: r.start_time)
    assert [c.flow_name for c in children] == ["upstream_flow", "data_processing_flow", "downstream_flow"]
    assert children[2].parameters == {"upstream_batch_id": "batch_123"}
    assert all(c.end_time <= n.start_time for c, n in zip(children, children[1:], strict=False))


@flow
def failing_upstream() -> dict:
    raise ValueError("upstream broke")


@flow
def orchestrator_with_a_failing_subflow():
    result1 = failing_upstream()
    return downstream_flow(result1["batch_id"])


def test_a_failed_subflow_fails_the_orchestrator_and_stops_it() -> None:
    state = orchestrator_with_a_failing_subflow(return_state=True)
    assert state.is_failed() and "upstream broke" in state.message
    assert get_client().read_flow_runs(flow="downstream_flow") == []


# --- parameter passing ------------------------------------------------------------------------------
def test_downstream_without_a_batch_id_takes_the_latest_upstream_one() -> None:
    upstream_flow()
    assert downstream_flow() == {"processed": "batch_123"}
    assert downstream_flow("batch_9") == {"processed": "batch_9"}


# --- error handling: retries -------------------------------------------------------------------------
attempts: list[int] = []


def check_upstream_completion(fail_times: int) -> str:
    attempts.append(1)
    if len(attempts) <= fail_times:
        raise TimeoutError("upstream not done yet")
    return "upstream done"


@task(retries=3, retry_delay_seconds=0.05)
async def wait_for_upstream(fail_times: int):
    logger = get_run_logger()
    try:
        result = check_upstream_completion(fail_times)
        return result
    except TimeoutError:
        # Handle timeout gracefully
        logger.warning("Upstream flow timed out")
        raise


@flow
async def guarded(fail_times: int) -> str:
    return await wait_for_upstream(fail_times)


@pytest.mark.parametrize(("fail_times", "final", "runs"), [(3, "Completed", 4), (4, "Failed", 4)])
def test_task_retries_then_succeeds_or_fails(fail_times: int, final: str, runs: int) -> None:
    attempts.clear()
    state = asyncio.run(guarded(fail_times, return_state=True))
    assert state.name == final and len(attempts) == runs
    [run] = get_client().read_flow_runs(flow="guarded")
    [task_run] = get_client().read_task_runs(run.id)
    assert task_run.run_count == runs and task_run.state.name == final
    warnings = [r.message for r in get_client().read_logs(run.id) if r.level == 30]
    assert warnings.count("Upstream flow timed out") == fail_times
    if final == "Completed":
        assert state.result() == "upstream done"


@flow(timeout_seconds=30)
def upstream_check_times_out():
    raise TimeoutError("upstream did not answer")


@flow
def upstream_check_without_timeout():
    raise TimeoutError("upstream did not answer")


@pytest.mark.parametrize("a_flow", [upstream_check_times_out, upstream_check_without_timeout])
def test_a_timeout_error_raised_by_the_flow_is_its_failure(a_flow) -> None:
    # A TimeoutError from user code (or a WaitTimeout from run_deployment) is not the engine's own
    # timeout: it crashed the run with "unsupported format string passed to NoneType" when the
    # flow had no timeout_seconds, and said "exceeded its timeout of 30 s" when it had one.
    state = a_flow(return_state=True)
    assert state.is_failed() and "upstream did not answer" in state.message
    assert "exceeded its timeout" not in state.message


# --- conditional dependencies ------------------------------------------------------------------------
@task
def check_multiple_upstreams(outcomes: list[bool]) -> list[bool]:
    return outcomes


@task
def calculate_success_rate(results: list[bool]) -> float:
    return sum(results) / len(results)


@flow
def proceed_with_processing() -> str:
    return "processed"


@flow
def skip_processing_and_alert() -> str:
    get_run_logger().warning("too many upstream failures: skipped")
    return "skipped"


@flow
def conditional_flow(outcomes: list[bool]):
    upstream_results = check_multiple_upstreams(outcomes)

    success_rate = calculate_success_rate(upstream_results)

    if success_rate >= 0.8:  # 80% success threshold
        return proceed_with_processing()
    else:
        return skip_processing_and_alert()


def test_conditional_flow_takes_one_branch() -> None:
    assert conditional_flow([True] * 4 + [False]) == "processed"
    assert conditional_flow([True, False]) == "skipped"
    flows = [r.flow_name for r in get_client().read_flow_runs(limit=20)]
    assert flows.count("proceed_with_processing") == 1 and flows.count("skip_processing_and_alert") == 1


# --- fan-out / fan-in ----------------------------------------------------------------------------------
data_partitions = ["p0", "p1", "p2", "p3"]


@task
def process_partition(partition: str) -> int:
    return int(partition[1:]) * 10


@task
def aggregate_results(results: list[int]) -> int:
    return sum(results)


@flow
def fan_out_flow():
    # Trigger multiple parallel flows
    tasks = []
    for partition in data_partitions:
        task = process_partition.submit(partition)
        tasks.append(task)

    # Wait for all to complete
    results = [task.result() for task in tasks]

    # Fan-in: aggregate results
    return aggregate_results(results)


def test_fan_out_then_fan_in() -> None:
    assert fan_out_flow() == 60
    [run] = get_client().read_flow_runs(flow="fan_out_flow")
    task_runs = get_client().read_task_runs(run.id)
    assert sorted(t.name for t in task_runs if t.name.startswith("process_partition")) == [
        f"process_partition-{i}" for i in range(4)]
    assert all(t.state.name == "Completed" for t in task_runs)


# --- circuit breaker (the task) ----------------------------------------------------------------------
failure_rate = {"value": 0.0}


def get_recent_failure_rate() -> float:
    return failure_rate["value"]


@task
def circuit_breaker_check():
    failure_rate = get_recent_failure_rate()

    if failure_rate > 0.5:  # 50% failure rate
        raise Exception("Circuit breaker open - too many failures")

    return "Circuit closed - proceeding"


@flow
def protected_flow() -> str:
    return circuit_breaker_check()


def test_circuit_breaker_task_opens_above_half_failures() -> None:
    failure_rate["value"] = 0.2
    assert protected_flow() == "Circuit closed - proceeding"
    failure_rate["value"] = 0.6
    with pytest.raises(Exception, match="Circuit breaker open"):  # the flow call re-raises it
        protected_flow()
    states = [r.state.name for r in get_client().read_flow_runs(flow="protected_flow")]
    assert sorted(states) == ["Completed", "Failed"]
