"""A worker holds its runs under fenced attempts and a lease (docs/protocol.md, "Attempts and
leases"): it stops a run whose attempt the engine ended, stops every run once its lease runs out
(the children on their own, even while the worker process is frozen), and claims nothing
without a lease. Heartbeats are answered by the real `HeartbeatMonitor` over the real service."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from engine.broker import Names
from engine.server.heartbeats import HeartbeatMonitor
from engine.states import Crashed, Scheduled, StateType
from workers import encode_dispatch

POOL = "default"


class Engine:
    """The service, with heartbeats answered by a real monitor (or refused while `down`)."""

    def __init__(self, service: Any, *, timeout: float = 30.0) -> None:
        self.service = service
        self.monitor = HeartbeatMonitor(service, timeout=timeout)
        self.down = False
        self.beats = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    async def heartbeat(self, worker_id, pool, flow_run_ids, attempts=None, info=None):
        if self.down:
            raise ConnectionError("the server does not answer")
        self.beats += 1
        return await self.monitor.beat(
            worker_id, pool, flow_run_ids, {uuid.UUID(k): v for k, v in (attempts or {}).items()}
        )


async def until(predicate, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the database, as a user would
            await asyncio.sleep(0.05)


async def state_of(service, run_id) -> str | None:
    run = await service.read_flow_run(run_id)
    return run.state.name if run.state else None


async def test_a_run_whose_attempt_the_engine_ended_is_stopped(flows, service, dispatch, make_worker):
    # Given a worker running a long run (attempt 1)
    engine = Engine(service)
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1)
    run_id = await dispatch(f"{flows}:async_nap", seconds=60)
    await worker.start()
    await until(lambda: _is(service, run_id, "Running"))

    # When the engine ends that attempt (as when it judged the worker lost)
    await service.set_flow_run_state(run_id, Crashed(message="judged lost"))

    # Then the next heartbeat's answer revokes it and the worker stops it, reporting nothing
    stats = await worker.run_until_idle(timeout=30)
    assert stats.stopped_superseded == 1
    history = [s.name for s in await service.read_flow_run_states(run_id)]
    assert history == ["Scheduled", "Pending", "Running", "Crashed"]


async def test_a_newer_dispatch_of_a_running_run_stops_the_old_attempt_and_claims_anew(
    flows, service, dispatch, broker, make_worker
):
    """Regression (issue 11): a retry's dispatch that reached the worker still running the old
    attempt was dropped as "already claimed by this worker", and the run stayed AwaitingRetry."""
    # Given a worker running attempt 1 of a run
    engine = Engine(service)
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1, concurrency=2)
    run_id = await dispatch(f"{flows}:async_nap", seconds=60)
    await worker.start()
    await until(lambda: _is(service, run_id, "Running"))

    # When the engine hands the run out again (attempt 1 over) and its new dispatch arrives
    await service.set_flow_run_state(run_id, Scheduled(message="handed out again"), force=True)
    await broker.publish(Names().events, f"dispatch.{POOL}",
                         encode_dispatch(run_id, f"{flows}:async_nap", work_pool=POOL, attempts=1))

    # Then the old execution is stopped and the run claimed again: attempt 2 runs
    await until(lambda: _attempt_running(service, run_id, 2))
    assert worker.stats.stopped_superseded == 1 and worker.stats.claimed == 2
    # And a stale redelivery of the first dispatch (attempts=0) is dropped as a duplicate
    await broker.publish(Names().events, f"dispatch.{POOL}",
                         encode_dispatch(run_id, f"{flows}:async_nap", work_pool=POOL, attempts=0))
    await asyncio.sleep(0.5)
    assert worker.stats.claimed == 2 and worker.stats.stopped_superseded == 1


async def test_a_child_stops_its_run_when_the_lease_runs_out_even_if_the_worker_is_frozen(
    flows, service, dispatch, make_worker, tmp_path: Path
):
    # Given a process-mode worker with a short lease (timeout 2 s: lease 1.6 s) running a run
    # whose body takes 8 s, then writes to runs.log
    engine = Engine(service, timeout=2.0)
    worker = make_worker("process", api=engine, heartbeat_interval=0.2)
    await worker.start()
    run_id = await dispatch(f"{flows}:append", tag="late", hold=8)
    await until(lambda: _is(service, run_id, "Running"))

    # When the server stops answering heartbeats and the worker process itself freezes (its
    # event loop blocked: it can neither beat nor stop its children)
    engine.down = True
    time.sleep(4)  # noqa: ASYNC251 - on purpose: the frozen worker

    # Then the child stopped the run on its own; once thawed the worker reports it Crashed
    # within attempt 1 (the engine had not ended it), saying why
    await until(lambda: _final(service, run_id))
    run = await service.read_flow_run(run_id)
    assert run.state.type is StateType.CRASHED and run.state.details.attempt == 1
    assert "lease ran out" in (run.state.message or "")
    await asyncio.sleep(5)  # past the body's end: it never finished
    assert not (tmp_path / "runs.log").exists()


async def test_no_claim_without_a_lease(flows, service, dispatch, make_worker):
    # Given a worker whose heartbeats the server does not answer
    engine = Engine(service)
    engine.down = True
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1, claim_timeout=0.5)
    run_id = await dispatch(f"{flows}:append", tag="x")

    # When a dispatch arrives, it is requeued, not claimed
    await worker.start()
    await until(lambda: _requeued(worker))
    assert await state_of(service, run_id) == "Scheduled"

    # And once the server answers, the worker claims and runs it
    engine.down = False
    await until(lambda: _is(service, run_id, "Completed"))


async def _is(service, run_id, name: str) -> bool:
    return await state_of(service, run_id) == name


async def _final(service, run_id) -> bool:
    run = await service.read_flow_run(run_id)
    return run.state is not None and run.state.is_final()


async def _attempt_running(service, run_id, attempt: int) -> bool:
    run = await service.read_flow_run(run_id)
    return run.state.name == "Running" and run.state.details.attempt == attempt


async def _requeued(worker) -> bool:
    return worker.stats.requeued > 0


async def test_a_dispatch_arriving_during_this_workers_claim_is_decided_once_it_settles(
    flows, service, dispatch, broker, make_worker
):
    """Regression (issue 11, a run stranded at Scheduled -> Pending -> Scheduled on a loaded
    machine): the claim committed but its answer was slow; meanwhile the engine handed the run
    out again, and its new dispatch reached this same worker, which dropped it as "already
    claimed by this worker". Nobody ever ran it."""

    answer_now = asyncio.Event()

    class SlowClaim(Engine):
        async def set_flow_run_state(self, flow_run_id, state, **options):
            answer = await self.service.set_flow_run_state(flow_run_id, state, **options)
            if state.is_pending() and answer.state.details.attempt == 1:
                await answer_now.wait()  # committed; the answer is late
            return answer

    engine = SlowClaim(service)
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1, concurrency=2)
    run_id = await dispatch(f"{flows}:append", tag="once")
    await worker.start()
    await until(lambda: _is(service, run_id, "Pending"))

    # When the engine hands the run out again while the worker's claim answer is on its way
    await service.set_flow_run_state(run_id, Scheduled(message="claim presumed lost"), force=True)
    await broker.publish(Names().events, f"dispatch.{POOL}",
                         encode_dispatch(run_id, f"{flows}:append", work_pool=POOL, attempts=1))
    await asyncio.sleep(0.5)  # the new dispatch is waiting for the claim to settle
    answer_now.set()

    # Then the run is claimed again and completes in attempt 2
    await until(lambda: _final(service, run_id))
    history = [(s.name, s.message, s.details.attempt) for s in await service.read_flow_run_states(run_id)]
    assert await state_of(service, run_id) == "Completed", history
    run = await service.read_flow_run(run_id)
    assert run.attempts == 2 and run.state.details.attempt == 2
    assert [s.name for s in await service.read_flow_run_states(run_id)].count("Completed") == 1


async def test_the_dispatch_of_an_in_process_retry_does_not_stop_it(
    flows, service, dispatch, broker, make_worker
):
    """Regression: a flow retrying in-process goes AwaitingRetry (its attempt goes on), which
    the engine also sends to the pool. Reaching the worker running that retry, it must not be
    taken for the end of the attempt (the run was stopped, then Crashed as orphaned)."""
    engine = Engine(service)
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1, concurrency=2)
    run_id = await dispatch(f"{flows}:async_nap", seconds=60)
    await worker.start()
    await until(lambda: _is(service, run_id, "Running"))

    # When the dispatch written during the attempt's own retry arrives (attempt 1 still open)
    await broker.publish(Names().events, f"dispatch.{POOL}", encode_dispatch(
        run_id, f"{flows}:async_nap", work_pool=POOL, attempts=1, attempt=1))
    await asyncio.sleep(1.0)

    # Then it is dropped: attempt 1 goes on
    assert worker.stats.stopped_superseded == 0 and worker.stats.claimed == 1
    assert await state_of(service, run_id) == "Running"


async def test_two_deliveries_of_one_dispatch_at_once_run_it_once(
    flows, service, dispatch, broker, make_worker
):
    """Regression (found by the two-servers fault test under load: two relays published one
    dispatch row): both deliveries waited for the worker's lease, then both passed the
    duplicate check and the body ran twice (one claim, accepted twice as the same worker's)."""
    engine = Engine(service)
    worker = make_worker("inline", api=engine, heartbeat_interval=0.1, concurrency=2)
    run_id = await dispatch(f"{flows}:async_nap", seconds=0.5)
    await broker.publish(Names().events, f"dispatch.{POOL}",
                         encode_dispatch(run_id, f"{flows}:async_nap", work_pool=POOL, attempts=0))

    stats = await worker.run_until_idle(timeout=30)

    assert stats.claimed == 1
    history = [s.name for s in await service.read_flow_run_states(run_id)]
    assert history == ["Scheduled", "Pending", "Running", "Completed"]
