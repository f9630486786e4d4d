"""The flow/task runtime through the public API, on the embedded engine (SQLite)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

import pytest
from pydantic import BaseModel

from engine import flow, get_run_logger, task
from engine.client import get_client
from engine.errors import ParameterValidationError, RunFailed
from engine.states import Completed, Failed, State, StateType


def run_of(state: State):
    client = get_client()
    runs = client.read_flow_runs(limit=100)
    return client, runs


# --- decorators -------------------------------------------------------------------------------
def test_decorators_with_and_without_arguments():
    @flow
    def plain():
        return 1

    @flow(name="Named Flow", description="d", version="2", retries=1, retry_delay_seconds=0,
          timeout_seconds=5, tags=["etl"])
    def named():
        return 2

    @task
    def t1():
        return 1

    @task(name="named-task", retries=2, retry_delay_seconds=0.1, timeout_seconds=3, tags=["x"])
    def t2():
        return 2

    assert plain.name == "plain" and named.name == "Named Flow"
    assert named.description == "d" and named.version == "2" and named.retries == 1
    assert named.timeout_seconds == 5 and named.tags == ["etl"]
    assert t1.name == "t1" and t2.name == "named-task" and t2.retries == 2 and t2.tags == ["x"]
    assert plain() == 1 and named() == 2


def test_flow_run_is_recorded_with_parameters_name_and_states():
    @flow
    def add(x: int, y: int = 2):
        return x + y

    state = add(1, return_state=True)
    assert state.is_completed() and state.result() == 3
    [run] = get_client().read_flow_runs(flow="add")
    assert run.parameters == {"x": 1, "y": 2}
    assert run.state.name == "Completed" and run.result == 3
    assert "-" in run.name  # adjective-animal
    names = [s.name for s in get_client().read_flow_run_states(run.id)]
    assert names == ["Pending", "Running", "Completed"]


def test_custom_flow_run_name():
    @flow(flow_run_name="report-{day}")
    def report(day: str):
        return day

    report("monday")
    [run] = get_client().read_flow_runs(flow="report")
    assert run.name == "report-monday"


# --- sync and async, futures, concurrency -----------------------------------------------------
def test_submit_returns_future_and_tasks_run_concurrently():
    spans = []

    @task
    def slow(i: int) -> int:
        start = time.perf_counter()
        time.sleep(0.3)
        spans.append((start, time.perf_counter()))
        return i * 2

    @flow
    def fan_out():
        futures = [slow.submit(i) for i in range(5)]
        assert all(hasattr(f, "result") for f in futures)
        return sum(f.result() for f in futures)

    assert fan_out() == 20
    # all five were running at one moment: the last to start began before the first to end
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_future_wait_and_state():
    @task
    def one():
        return 1

    @flow
    def f():
        fut = one.submit()
        final = fut.wait(10)
        return final.name, fut.state.name, fut.result()

    assert f() == ("Completed", "Completed", 1)


def test_map_and_futures_resolve_into_tasks():
    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow
    def fan_in():
        doubled = double.map([1, 2, 3])
        return total(doubled)

    assert fan_in() == 12


def test_async_flow_and_tasks():
    spans = []

    @task
    async def fetch(i: int) -> int:
        start = time.perf_counter()
        await asyncio.sleep(0.2)
        spans.append((start, time.perf_counter()))
        return i

    @flow
    async def gather_flow():
        values = await asyncio.gather(*(fetch(i) for i in range(5)))
        return sum(values)

    assert asyncio.run(gather_flow()) == 10
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_sync_task_runs_in_a_thread_not_the_caller():
    seen = []

    @task
    def where():
        seen.append(threading.current_thread().name)

    @flow
    def f():
        where()

    f()
    assert seen and seen[0] != threading.current_thread().name


# --- parameters -------------------------------------------------------------------------------
class Model(BaseModel):
    a: int
    b: float
    c: str


def test_pydantic_model_and_datetime_coercion():
    @flow
    def model_validator(model: Model):
        return model

    @flow
    def what_day_is_it(date: dt.datetime = None):  # noqa: RUF013 - as in Prefect's docs
        return date.strftime("%A")

    m = model_validator({"a": 1, "b": 2.5, "c": "x"})
    assert isinstance(m, Model) and m.a == 1
    assert what_day_is_it("2021-01-01T02:00:19.180906") == "Friday"
    [run] = get_client().read_flow_runs(flow="what_day_is_it")
    assert run.parameters == {"date": "2021-01-01T02:00:19.180906"}


def test_invalid_parameters_fail_the_run_and_the_body_never_runs():
    ran = []

    @flow
    def typed(n: int):
        ran.append(n)

    state = typed("not a number", return_state=True)
    assert state.is_failed()
    assert "n: Input should be a valid integer" in state.message
    assert ran == []
    with pytest.raises(ParameterValidationError):
        typed("nope")
    [run, _] = get_client().read_flow_runs(flow="typed")
    assert [s.name for s in get_client().read_flow_run_states(run.id)] == ["Pending", "Failed"]


def test_missing_parameter_is_a_failed_run():
    @flow
    def needs(x: int):
        return x

    state = needs(return_state=True)
    assert state.is_failed() and "x" in state.message


# --- final state rules (the reference document's examples) ------------------------------------
@task
def always_fails_task():
    raise ValueError("I am bad task")


@task
def always_succeeds_task():
    return "foo"


def test_exception_fails_the_flow():
    @flow
    def always_fail_flow():
        raise ValueError("This flow immediately fails")

    state = always_fail_flow(return_state=True)
    assert state.is_failed() and "This flow immediately fails" in state.message
    with pytest.raises(ValueError, match="immediately fails"):
        always_fail_flow()


def test_return_none_with_a_failed_task_fails():
    @flow
    def always_fails_flow():
        always_fails_task()
        always_succeeds_task()

    state = always_fails_flow(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."
    with pytest.raises(ValueError, match="I am bad task"):
        always_fails_flow()


def test_return_none_all_good_completes():
    @flow
    def fine():
        always_succeeds_task()

    assert fine(return_state=True).is_completed()


def test_return_a_future_decides():
    @flow
    def always_succeeds_flow():
        always_fails_task.submit()
        y = always_succeeds_task.submit()
        return y

    @flow
    def fails_via_future():
        return always_fails_task.submit()

    state = always_succeeds_flow(return_state=True)
    assert state.is_completed() and state.result() == "foo"
    assert fails_via_future(return_state=True).is_failed()


def test_return_value_of_direct_call_completes():
    @flow
    def always_succeeds_flow():
        x = always_fails_task()  # noqa: F841 - as in the reference example
        y = always_succeeds_task()
        return y

    state = always_succeeds_flow(return_state=True)
    assert state.is_completed() and state.result() == "foo"


def test_return_multiple_states_or_futures():
    @flow
    def always_succeeds_flow():
        return "bar"

    @flow
    def always_fails_flow():
        x = always_fails_task()
        y = always_succeeds_task()
        z = always_succeeds_flow()
        return x, y, z

    @flow
    def all_good():
        return always_succeeds_task.submit(), always_succeeds_task.submit()

    state = always_fails_flow(return_state=True)
    assert state.is_failed() and state.message == "1/1 states failed."
    assert all_good() == ("foo", "foo")


def test_return_a_manual_state():
    @flow
    def manual():
        x = always_fails_task.submit()  # noqa: F841
        y = always_succeeds_task.submit()
        if y.result() == "foo":
            return Completed(message="I am happy with this result")
        return Failed(message="How did this happen!?")

    @flow
    def manual_fail():
        return Failed(message="How did this happen!?")

    state = manual(return_state=True)
    assert state.is_completed() and state.message == "I am happy with this result"
    failed = manual_fail(return_state=True)
    assert failed.is_failed() and failed.message == "How did this happen!?"
    with pytest.raises(RunFailed, match="How did this happen"):
        manual_fail()


def test_return_an_object_completes_even_with_failed_task():
    @flow
    def always_succeeds_flow():
        always_fails_task()
        return "foo"

    assert always_succeeds_flow() == "foo"


def test_state_api():
    @flow
    def ok():
        return {"k": 1}

    state = ok(return_state=True)
    assert state.type is StateType.COMPLETED and state.name == "Completed"
    assert state.is_completed() and state.is_final() and not state.is_failed()
    assert isinstance(state.timestamp, dt.datetime)
    assert state.result() == {"k": 1}
    failed = Failed(message="boom")
    assert isinstance(failed.result(raise_on_failure=False), RunFailed)


# --- results ----------------------------------------------------------------------------------
def test_result_too_large_is_a_clear_failure(monkeypatch):
    monkeypatch.setenv("FLOWRELAY_RESULTS__MAX_BYTES", "1000")
    from engine.settings import reset_settings

    reset_settings()

    @flow
    def big():
        return "x" * 5000

    state = big(return_state=True)
    assert state.is_failed()
    assert "over the 1.0 KB limit (results.max_bytes)" in state.message


def test_non_serialisable_result_is_a_clear_failure():
    class Opaque:
        pass

    @flow
    def opaque():
        return Opaque()

    state = opaque(return_state=True)
    assert state.is_failed() and "not JSON-serialisable" in state.message


# --- subflows ---------------------------------------------------------------------------------
def test_subflow_links_both_ways():
    @flow
    def child(x: int):
        return x + 1

    @flow
    def parent():
        return child(1)

    state = parent(return_state=True)
    assert state.result() == 2
    client = get_client()
    [p] = client.read_flow_runs(flow="parent")
    [c] = client.read_flow_runs(flow="child")
    [mirror] = client.read_task_runs(p.id)
    assert mirror.state.details.child_flow_run_id == c.id and mirror.state.name == "Completed"
    assert c.parent_task_run_id == mirror.id
    assert [r.id for r in client.read_children(p.id)] == [c.id]


def test_failed_subflow_is_mirrored_and_raises():
    @flow
    def bad_child():
        raise RuntimeError("child broke")

    @flow
    def parent():
        bad_child()

    state = parent(return_state=True)
    assert state.is_failed() and "child broke" in state.message
    [p] = get_client().read_flow_runs(flow="parent")
    [mirror] = get_client().read_task_runs(p.id)
    assert mirror.state.name == "Failed"


def test_async_subflows_run_concurrently():
    spans = []

    @flow
    async def sub(i: int):
        start = time.perf_counter()
        await asyncio.sleep(0.3)
        spans.append((start, time.perf_counter()))
        return i

    @flow
    async def parent():
        return sum(await asyncio.gather(*(sub(i) for i in range(4))))

    assert asyncio.run(parent()) == 6
    assert max(s for s, _ in spans) < min(e for _, e in spans)
    assert len(get_client().read_flow_runs(flow="sub")) == 4


# --- retries, timeouts, logs ------------------------------------------------------------------
def test_task_retries_with_awaiting_retry_between():
    attempts = []

    @task(retries=2, retry_delay_seconds=0.05)
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    @flow
    def f():
        return flaky()

    assert f() == "ok" and len(attempts) == 3
    [run] = get_client().read_flow_runs(flow="f")
    [tr] = get_client().read_task_runs(run.id)
    from engine.runtime import embedded

    states = embedded.call_sync(lambda api: api.read_task_run_states(tr.id))
    assert [s.name for s in states] == [
        "Pending", "Running", "AwaitingRetry", "Running", "AwaitingRetry", "Running", "Completed"
    ]


def test_flow_retries():
    attempts = []

    @flow(retries=1, retry_delay_seconds=0)
    def flaky_flow():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        return "ok"

    assert flaky_flow() == "ok"
    [run] = get_client().read_flow_runs(flow="flaky_flow")
    names = [s.name for s in get_client().read_flow_run_states(run.id)]
    assert names == ["Pending", "Running", "AwaitingRetry", "Running", "Completed"]
    assert run.run_count == 2


def test_timeouts_fail_with_a_timeout_message():
    @task(timeout_seconds=0.2)
    def sleepy():
        time.sleep(1)

    @flow(timeout_seconds=0.3)
    async def slow_flow():
        await asyncio.sleep(5)

    @flow
    def f():
        return sleepy.submit()

    state = f(return_state=True)
    assert state.is_failed()
    [run] = get_client().read_flow_runs(flow="f")
    [tr] = get_client().read_task_runs(run.id)
    assert "exceeded its timeout of 0.2 s" in tr.state.message
    state = asyncio.run(slow_flow(return_state=True))
    assert state.is_failed() and "exceeded its timeout of 0.3 s" in state.message


def test_run_logger_lines_are_stored_with_the_run():
    @task
    def work():
        get_run_logger().info("inside the task %s", 7)

    @flow
    def logged():
        get_run_logger().warning("starting")
        work()

    logged()
    [run] = get_client().read_flow_runs(flow="logged")
    messages = [r.message for r in get_client().read_logs(run.id)]
    assert "starting" in messages and "inside the task 7" in messages
    assert any(m.startswith("Finished in state Completed") for m in messages)


def test_run_logger_lines_reach_the_engine_while_the_run_is_still_running():
    # A flow that logs, then watches for its own line in the engine, without any task or state
    # change in between: the line must be sent while the body still runs (runtime.log_flush_seconds)
    @flow
    def watching() -> bool:
        from engine.runtime.context import flow_run_ctx

        run_id = flow_run_ctx.get().flow_run.id
        get_run_logger().info("halfway there")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "halfway there" in [r.message for r in get_client().read_logs(run_id)]:
                return True
            time.sleep(0.05)
        return False

    assert watching() is True
    [run] = get_client().read_flow_runs(flow="watching")
    messages = [r.message for r in get_client().read_logs(run.id)]
    assert messages.count("halfway there") == 1  # sent once, not again with the final state


async def test_log_lines_that_cannot_be_sent_yet_are_kept_for_the_next_try(monkeypatch):
    import uuid

    from engine.runtime import flows as flows_module
    from engine.runtime.context import FlowRunContext
    from engine.schemas import LogRecord

    sent: list[list[str]] = []
    failed, delivered = asyncio.Event(), asyncio.Event()

    async def flaky_call(fn):
        if not failed.is_set():
            failed.set()
            raise ConnectionError("broker restarting")

        class Api:
            async def write_logs(self, logs):
                sent.append([r.message for r in logs])
                delivered.set()

        return await fn(Api())

    monkeypatch.setattr(flows_module.embedded, "call", flaky_call)
    monkeypatch.setenv("FLOWRELAY_RUNTIME__LOG_FLUSH_SECONDS", "0.05")
    from engine.settings import reset_settings

    reset_settings()
    ctx = FlowRunContext(flow=None, flow_run=None)  # type: ignore[arg-type]
    run_id = uuid.uuid4()
    ctx.add_log(LogRecord(flow_run_id=run_id, message="one"))
    stop = asyncio.Event()
    sender = asyncio.create_task(flows_module._send_logs_while_running(ctx, stop))
    async with asyncio.timeout(10):
        await failed.wait()  # the first try failed: its line was given back
        ctx.add_log(LogRecord(flow_run_id=run_id, message="two"))
        await delivered.wait()
    stop.set()
    await asyncio.wait_for(sender, 5)
    reset_settings()
    # the first try failed: nothing lost, both lines went in order on the next one
    assert sent == [["one", "two"]]
    assert ctx.logs == []
