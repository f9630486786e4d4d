"""Fenced attempts: `attempt_for` numbers them, `decide` refuses the reports of a superseded one.

Pure tables first, then through the engine service on SQLite and PostgreSQL (`db_url`)."""

from __future__ import annotations

import pytest

from engine.orchestration import SUPERSEDED, Status, attempt_for, decide
from engine.states import STATE_NAMES, State


def state(name: str, *, worker: str | None = None, attempt: int | None = None) -> State:
    return State(
        type=STATE_NAMES[name], name=name, details={"worker_id": worker, "attempt": attempt}
    )


# (current, proposed, claims so far) -> (attempt stored with it, claims after it)
NUMBERING = [
    (state("Scheduled"), state("Pending", worker="w1"), 0, (1, 1)),
    (state("AwaitingRetry"), state("Pending", worker="w2"), 3, (4, 4)),
    (state("Pending", worker="w1", attempt=1), state("Running", worker="w1", attempt=1), 1, (1, 1)),
    (state("Running", attempt=2), state("Completed", attempt=2), 2, (2, 2)),
    (state("Running", attempt=2), state("AwaitingRetry", attempt=2), 2, (2, 2)),
    # The engine's own states: Cancelling and Paused stay in the attempt, ending ones do not.
    (state("Running", attempt=2), state("Cancelling"), 2, (2, 2)),
    (state("Running", attempt=2), state("Paused"), 2, (2, 2)),
    (state("Running", attempt=2), state("Crashed"), 2, (None, 2)),
    (state("Running", attempt=2), state("Cancelled"), 2, (None, 2)),
    (state("Pending", attempt=2), state("Scheduled"), 2, (None, 2)),
    (state("Crashed"), state("AwaitingRetry"), 2, (None, 2)),
    # A run nobody claimed (a plain flow call) has no attempt.
    (None, state("Pending"), 0, (None, 0)),
    (state("Pending"), state("Running"), 0, (None, 0)),
]


@pytest.mark.parametrize(("current", "proposed", "claims", "expected"), NUMBERING)
def test_attempt_numbering(current: State | None, proposed: State, claims: int, expected: tuple) -> None:
    assert attempt_for(current, proposed, claims) == expected


FENCING = [
    # current, proposed, force, status
    (state("Pending", worker="w1", attempt=1), state("Running", worker="w1", attempt=1), False, "A"),
    (state("Running", worker="w1", attempt=1), state("Completed", attempt=1), False, "A"),
    (state("Completed", attempt=1), state("Completed", attempt=1), False, "="),
    # the engine ended attempt 1 (worker lost): its late reports are refused
    (state("Crashed"), state("Completed", attempt=1), False, "S"),
    (state("AwaitingRetry"), state("Running", worker="w1", attempt=1), False, "S"),
    (state("Scheduled"), state("Running", worker="w1", attempt=1), False, "S"),
    # a newer claim opened attempt 2
    (state("Pending", worker="w2", attempt=2), state("Running", worker="w1", attempt=1), False, "S"),
    (state("Running", worker="w2", attempt=2), state("Completed", attempt=1), False, "S"),
    (state("Running", worker="w2", attempt=2), state("Crashed", attempt=1), False, "S"),
    # fencing holds against force (a stopping worker's hand-back is forced)
    (state("Running", worker="w2", attempt=2), state("Scheduled", attempt=1), True, "S"),
    (state("Running", worker="w1", attempt=1), state("Scheduled", attempt=1), True, "A"),
    # the engine's Cancelling keeps the attempt: the worker's Cancelled is taken
    (state("Cancelling", attempt=1), state("Cancelled", attempt=1), False, "A"),
    # proposals without a token are judged as before
    (state("Running", worker="w1", attempt=1), state("Crashed"), False, "A"),
]


@pytest.mark.parametrize(("current", "proposed", "force", "cell"), FENCING)
def test_fencing(current: State, proposed: State, force: bool, cell: str) -> None:
    decision = decide(current, proposed, force=force)

    if cell == "S":
        assert decision.status is Status.REJECT
        assert decision.superseded
        assert decision.reason is not None and decision.reason.startswith(SUPERSEDED)
        assert f"attempt {proposed.details.attempt} " in decision.reason
    else:
        assert decision.status is Status.ACCEPT, decision.reason
        assert decision.duplicate is (cell == "=")
        assert not decision.superseded


def test_superseded_reason_says_who_ended_it() -> None:
    ended = State(type=STATE_NAMES["Crashed"], name="Crashed", message="worker 'w1' sent no heartbeat")
    by_newer = state("Running", worker="w2", attempt=2)

    assert "the engine ended it: the run is Crashed (worker 'w1' sent no heartbeat)" in (
        decide(ended, state("Completed", attempt=1)).reason or ""
    )
    assert "the run is in attempt 2 (Running)" in (decide(by_newer, state("Completed", attempt=1)).reason or "")


# --- through the engine service (SQLite and PostgreSQL) ------------------------------------------
from engine.schemas import DeploymentSpec  # noqa: E402
from engine.service import EngineService  # noqa: E402
from engine.states import Completed, Crashed, Pending, Running  # noqa: E402


async def claimed_run(service: EngineService, worker: str = "w1") -> tuple[object, int]:
    await service.register_deployment(
        DeploymentSpec(name="nightly", flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="p")
    )
    run = await service.create_deployment_run("etl/nightly")
    answer = await service.set_flow_run_state(run.id, Pending(worker_id=worker))
    assert answer.accepted and answer.state is not None
    token = answer.state.details.attempt
    assert token is not None
    return run, token


async def test_a_claim_opens_an_attempt_its_reports_carry(service: EngineService) -> None:
    run, token = await claimed_run(service)

    running = await service.set_flow_run_state(run.id, Running(worker_id="w1", attempt=token))
    done = await service.set_flow_run_state(run.id, Completed(attempt=token))
    again = await service.set_flow_run_state(run.id, Completed(attempt=token))  # reply lost: re-sent

    assert token == 1
    assert running.accepted and done.accepted and again.accepted
    read = await service.read_flow_run(run.id)
    assert read.attempts == 1 and read.state is not None and read.state.details.attempt == 1
    assert [s.details.attempt for s in await service.read_flow_run_states(run.id)] == [None, 1, 1, 1]


async def test_a_superseded_attempt_is_refused_and_writes_nothing(service: EngineService) -> None:
    # Given attempt 1 running, ended by the engine (its worker judged lost), the run claimed again
    run, first = await claimed_run(service)
    await service.set_flow_run_state(run.id, Running(worker_id="w1", attempt=first))
    await service.set_flow_run_state(run.id, Crashed(message="worker 'w1' lost"))
    await service.set_flow_run_state(run.id, Pending(worker_id="w2"), force=True)
    second = (await service.read_flow_run(run.id)).state.details.attempt  # type: ignore[union-attr]
    states_before = await service.read_flow_run_states(run.id)

    # When the first attempt's late reports arrive
    late_final = await service.set_flow_run_state(run.id, Completed(attempt=first))
    late_back = await service.set_flow_run_state(run.id, Pending(worker_id="w1", attempt=first), force=True)

    # Then both are refused as superseded, nothing is written, attempt 2 goes on
    assert second == 2
    for answer in (late_final, late_back):
        assert answer.status == "REJECT"
        assert answer.reason is not None and answer.reason.startswith("superseded: attempt 1")
    assert await service.read_flow_run_states(run.id) == states_before
    assert (await service.set_flow_run_state(run.id, Running(worker_id="w2", attempt=2))).accepted


# --- every request has an identity ----------------------------------------------------------------
async def test_a_create_sent_again_with_its_id_returns_the_first_run(service: EngineService) -> None:
    """A create whose reply was lost (broker restarting, no reply in time) is sent again by its
    caller with the same run id: it returns the run the first request made, never a second."""
    import uuid

    await service.register_deployment(
        DeploymentSpec(name="nightly", flow_name="etl", entrypoint="flows/etl.py:etl", work_pool="p")
    )
    run_id = uuid.uuid4()

    first = await service.create_deployment_run("etl/nightly", {"day": "mon"}, id=run_id)
    again = await service.create_deployment_run("etl/nightly", {"day": "mon"}, id=run_id)
    plain = await service.create_flow_run("local", id=(local_id := uuid.uuid4()))
    plain_again = await service.create_flow_run("local", id=local_id)

    assert first.id == again.id == run_id and again.created == first.created
    assert plain.id == plain_again.id == local_id
    runs = await service.read_flow_runs()
    assert sorted(str(r.id) for r in runs) == sorted([str(run_id), str(local_id)])


async def test_log_lines_of_a_superseded_attempt_are_refused(service: EngineService) -> None:
    from engine.schemas import LogRecord

    run, first = await claimed_run(service)
    await service.set_flow_run_state(run.id, Running(worker_id="w1", attempt=first))
    await service.write_logs([LogRecord(flow_run_id=run.id, message="from attempt 1", attempt=first)])

    # the engine ends attempt 1; its late lines (alone, or with its late final state) are refused
    await service.set_flow_run_state(run.id, Crashed(message="worker 'w1' lost"))
    await service.write_logs([LogRecord(flow_run_id=run.id, message="late line", attempt=first),
                              LogRecord(flow_run_id=run.id, message="the engine's own line")])
    late = await service.set_flow_run_state(
        run.id, Completed(attempt=first),
        logs=[LogRecord(flow_run_id=run.id, message="late final line", attempt=first)],
    )

    assert late.status == "REJECT"
    assert [r.message for r in await service.read_logs(run.id)] == [
        "from attempt 1", "the engine's own line"]
