"""Seed 004 — Prefect's "Flows" concept page, every example with `from engine import ...`, on the
embedded engine (in-process, SQLite), as `python my_flow.py` would run it.

Translations (smallest change):
- `from prefect import flow, task` → `from engine import flow, task`;
  `from prefect.orion.schemas.states import Completed, Failed` → `from engine.states import ...`.
- "Return a manual state": the seed calls `always_succeeds_task()` and then `y.result()`. That is
  the Prefect 2 beta, where calling a task returned a future; in Prefect 2.0 GA and in flowrelay,
  calling a task returns its value (or its `Failed` state), so the example uses `.submit()` to get
  a future with `.result()`. The seed's literal code fails the flow with
  `AttributeError: 'str' object has no attribute 'result'` (asserted below, so a change is seen).
- "Return a future": the seed's `y = always_succeeds_task(); return y` is checked both as written
  (y is the value) and with `.submit()` (y is a future), the case the seed means.
- "Other collection types are not checked": true for flowrelay's final-state rule, but a dict of
  futures is not a storable (JSON) result, so that run fails for its result (asserted).
- "AnyIO task groups": anyio is not a flowrelay dependency; `asyncio.gather` (also in the seed) is
  tested.
- "When creating flow runs from the Orion API, parameter names must be specified" and "a flow run
  for a deployment with invalid parameters goes Pending → Failed without Running" are deployment
  behaviours: tests/seeds/test_seed_004_distributed.py checks them on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from pydantic import BaseModel

from engine import flow, task
from engine.client import get_client
from engine.states import Completed, Failed, StateType


# --- @flow, names ------------------------------------------------------------------------------
@flow
def my_flow():
    return


@flow(name="My Flow")
def my_named_flow():
    return


def test_flow_decorator_and_name() -> None:
    assert my_flow(return_state=True).is_completed()
    assert my_named_flow(return_state=True).is_completed()
    assert my_flow.name == "my_flow" and my_named_flow.name == "My Flow"
    client = get_client()
    assert [r.flow_name for r in client.read_flow_runs(flow="my_flow")] == ["my_flow"]
    assert [r.flow_name for r in client.read_flow_runs(flow="My Flow")] == ["My Flow"]


# --- parameters ----------------------------------------------------------------------------------
class Model(BaseModel):
    a: int
    b: float
    c: str


seen: list[object] = []


@flow
def model_validator(model: Model):
    print(model)
    seen.append(model)


@flow
def what_day_is_it(date: datetime = None):  # type: ignore[assignment] - the seed's own hint
    if date is None:
        date = datetime.utcnow()
    print(f"It was {date.strftime('%A')} on {date.isoformat()}")
    return f"It was {date.strftime('%A')} on {date.isoformat()}"


@flow
def add(x: int, y: int = 2) -> int:
    return x + y


def test_positional_and_keyword_arguments_become_stored_parameters() -> None:
    assert add(1) == 3 and add(1, 5) == 6 and add(x=1, y=7) == 8
    runs = get_client().read_flow_runs(flow="add")
    assert sorted((r.parameters["x"], r.parameters["y"]) for r in runs) == [(1, 2), (1, 5), (1, 7)]


def test_pydantic_model_hint_coerces_a_dict() -> None:
    seen.clear()
    assert model_validator({"a": "1", "b": "2.5", "c": "x"}, return_state=True).is_completed()
    assert seen == [Model(a=1, b=2.5, c="x")]


def test_datetime_hint_coerces_an_iso_string() -> None:
    assert what_day_is_it("2021-01-01T02:00:19.180906") == "It was Friday on 2021-01-01T02:00:19.180906"


def test_default_none_with_a_non_optional_hint_is_accepted() -> None:
    # `date: datetime = None` (Prefect reads it as optional): the default, or an explicit None,
    # is not a validation error; it failed the run before (fixed in engine/runtime/parameters.py).
    assert what_day_is_it().startswith("It was ")
    assert what_day_is_it(None).startswith("It was ")


def test_invalid_parameters_create_a_failed_run_and_the_body_never_runs() -> None:
    seen.clear()
    state = model_validator({"a": "not a number", "b": 1, "c": "x"}, return_state=True)
    assert state.is_failed() and "model.a" in state.message
    assert seen == []
    [run] = get_client().read_flow_runs(flow="model_validator")
    assert run.state.name == "Failed" and "Running" not in [
        s.name for s in get_client().read_flow_run_states(run.id)
    ]


# --- final state determination ---------------------------------------------------------------
@flow
def always_fail_flow():
    raise ValueError("This flow immediately fails")


@task
def always_fails_task():
    raise ValueError("I am bad task")


@task
def always_succeeds_task():
    return "foo"


@flow
def always_fails_flow():
    always_fails_task()
    always_succeeds_task()


@flow
def returns_the_succeeding_task():
    x = always_fails_task()  # noqa: F841 - as in the seed
    y = always_succeeds_task()
    return y


@flow
def returns_the_succeeding_future():
    x = always_fails_task.submit()  # noqa: F841 - as in the seed
    y = always_succeeds_task.submit()
    return y


@flow
def always_succeeds_flow():
    return "bar"


@flow
def returns_states_and_futures():
    x = always_fails_task()
    y = always_succeeds_task()
    z = always_succeeds_flow()
    return x, y, z


@flow
def returns_futures_in_a_list():
    return [always_fails_task.submit(), always_succeeds_task.submit()]


@flow
def returns_futures_in_a_dict():
    return {"x": always_fails_task.submit()}


@flow
def manual_state_as_written():
    x = always_fails_task()  # noqa: F841
    y = always_succeeds_task()
    if y.result() == "foo":
        return Completed(message="I am happy with this result")
    else:
        return Failed(message="How did this happen!?")


@flow
def manual_state_flow():
    x = always_fails_task.submit()  # noqa: F841
    y = always_succeeds_task.submit()
    if y.result() == "foo":
        return Completed(message="I am happy with this result")
    else:
        return Failed(message="How did this happen!?")


@flow
def returns_an_object():
    always_fails_task()
    return "foo"


def test_raise_an_exception() -> None:
    state = always_fail_flow(return_state=True)
    assert state.is_failed() and "This flow immediately fails" in state.message


def test_return_none_follows_the_task_runs() -> None:
    state = always_fails_flow(return_state=True)
    assert state.is_failed()
    [run] = get_client().read_flow_runs(flow="always_fails_flow")
    tasks = {t.name: t.state.name for t in get_client().read_task_runs(run.id)}
    assert sorted(tasks.values()) == ["Completed", "Failed"]


def test_return_a_future_or_its_value() -> None:
    assert returns_the_succeeding_task(return_state=True).is_completed()
    state = returns_the_succeeding_future(return_state=True)
    assert state.is_completed() and state.result() == "foo"


def test_return_multiple_states_or_futures() -> None:
    assert returns_states_and_futures(return_state=True).is_failed()
    assert returns_futures_in_a_list(return_state=True).is_failed()


def test_states_in_other_collections_are_not_checked() -> None:
    # The seed's note: only a set, list or tuple is looked into; a dict holding a failed future is
    # "any other object". In Prefect it completes; flowrelay stores results as JSON (README), so
    # the run fails — for its result, not for the failed task inside the dict.
    state = returns_futures_in_a_dict(return_state=True)
    assert state.type is StateType.FAILED and "not JSON-serialisable" in state.message
    assert "I am bad task" not in state.message


def test_return_a_manual_state() -> None:
    state = manual_state_flow(return_state=True)
    assert state.is_completed() and state.message == "I am happy with this result"
    written = manual_state_as_written(return_state=True)
    assert written.is_failed() and "'str' object has no attribute 'result'" in written.message


def test_return_an_object() -> None:
    state = returns_an_object(return_state=True)
    assert state.is_completed() and state.result() == "foo"


# --- subflows ------------------------------------------------------------------------------------
@task
def produce() -> int:
    return 21


@flow
def doubled(v: int) -> int:
    return v * 2


@flow
def parent_passes_a_future() -> int:
    return doubled(produce.submit())


@flow
async def slow_child(i: int) -> float:
    await asyncio.sleep(0.3)
    return time.monotonic()


@flow
async def parallel_parent() -> list[float]:
    return list(await asyncio.gather(*(slow_child(i) for i in range(3))))


def test_subflow_is_a_full_run_linked_both_ways_and_resolves_futures() -> None:
    assert parent_passes_a_future() == 42
    client = get_client()
    [parent] = client.read_flow_runs(flow="parent_passes_a_future")
    [child] = client.read_flow_runs(flow="doubled")
    assert child.parameters == {"v": 21} and child.result == 42  # the future became data
    assert child.parent_flow_run_id == parent.id
    mirror = {t.id: t for t in client.read_task_runs(parent.id)}[child.parent_task_run_id]
    assert mirror.child_flow_run_id == child.id and mirror.state.name == "Completed"
    assert mirror.state.details.child_flow_run_id == child.id
    assert child.state.details.parent_task_run_id == child.parent_task_run_id


def test_async_subflows_run_concurrently_with_gather() -> None:
    started = time.monotonic()
    ends = asyncio.run(parallel_parent())
    # Three 0.3 s children overlap: each ended before the time all three would take in a row.
    assert all(end - started < 0.9 for end in ends)
    [parent] = get_client().read_flow_runs(flow="parallel_parent")
    assert len(get_client().read_children(parent.id)) == 3
