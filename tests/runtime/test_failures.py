"""Failures carry their traceback (`engine.runtime.failures`): a failed flow's state has
``details.error`` with the user's frames (the engine's trimmed), its logs an ERROR line as
Prefect writes it, and a failed task run keeps its own — through the public API, embedded."""

from __future__ import annotations

from engine import flow, task
from engine.client import get_client
from engine.runtime.failures import MAX_TRACEBACK_CHARS, describe, format_error


def _check(batch: str) -> None:
    raise ValueError(f"bad batch {batch}")


def test_a_failed_flow_carries_its_traceback_in_its_state_and_logs() -> None:
    @flow(name="tb-direct")
    def direct(batch: str = "b-1") -> None:
        _check(batch)

    state = direct(return_state=True)

    error = state.details.error
    assert error is not None and error["type"] == "ValueError" and error["message"] == "bad batch b-1"
    text = error["traceback"]
    assert text.startswith("Traceback (most recent call last):")
    assert "test_failures.py" in text and "in direct" in text and "in _check" in text
    assert text.endswith("ValueError: bad batch b-1")
    assert "engine/runtime" not in text and "asyncio" not in text and "concurrent" not in text
    client = get_client()
    (run,) = [r for r in client.read_flow_runs(limit=50) if r.flow_name == "tb-direct"]
    assert run.state is not None and run.state.details.error == error  # stored with the run
    logs = client.read_logs(run.id)
    (line,) = [r for r in logs if r.level == 40]
    assert line.message == f"Encountered exception during execution:\n{text}"


def test_a_failed_task_keeps_its_own_traceback_and_the_flow_gets_it_too() -> None:
    @task
    def load(batch: str) -> None:
        _check(batch)

    @flow(name="tb-task")
    def through_task(batch: str = "b-2") -> None:
        load(batch)

    state = through_task(return_state=True)

    assert state.details.error is not None and "in load" in state.details.error["traceback"]
    client = get_client()
    (run,) = [r for r in client.read_flow_runs(limit=50) if r.flow_name == "tb-task"]
    (task_run,) = client.read_task_runs(run.id)
    assert task_run.state is not None and task_run.state.details.error is not None
    assert "in _check" in task_run.state.details.error["traceback"]
    messages = [r.message for r in client.read_logs(run.id) if r.level == 40]
    assert any(m.startswith("Task run 'load-0' - Encountered exception during execution:") for m in messages)


def test_a_deep_traceback_is_cut_in_the_middle_and_an_engine_error_keeps_its_frames() -> None:
    def ping(n: int) -> None:  # two functions in turn: Python does not fold the frames
        if n == 0:
            raise RuntimeError("bottom")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    try:
        ping(300)
    except RuntimeError as exc:
        error = describe(exc)
    assert len(error["traceback"]) <= MAX_TRACEBACK_CHARS + 100
    assert "characters of the traceback left out" in error["traceback"]
    assert error["traceback"].endswith("RuntimeError: bottom")

    from engine.entrypoints import load_object

    try:
        load_object("no-colon-here")
    except Exception as exc:  # noqa: BLE001 - the engine refusing the caller's input
        trimmed, whole = describe(exc), describe(exc, trim=False)
    assert "engine/entrypoints.py" not in trimmed["traceback"]  # the caller's line, not ours
    assert "test_failures.py" in trimmed["traceback"]
    assert "engine/entrypoints.py" in whole["traceback"]  # an engine bug keeps everything
    assert format_error(trimmed) == trimmed["traceback"]
    assert format_error({"type": "X", "message": "m"}) == "X: m" and format_error(None) is None
