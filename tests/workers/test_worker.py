"""The worker over the in-memory broker and a real engine service (SQLite), in both modes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine.broker import Names
from engine.broker.errors import BrokerUnavailable
from engine.errors import EngineUnavailable
from engine.states import StateType
from workers import Worker, WorkerConfigError

MODES = ["inline", "process"]
POOL = "default"


async def states_of(service, run_id) -> list[str]:
    return [s.name for s in await service.read_flow_run_states(run_id)]


@pytest.mark.parametrize("mode", MODES)
async def test_dispatched_run_is_claimed_runs_and_completes_with_logs(
    mode, flows, service, dispatch, make_worker
):
    # Given a worker and a dispatched deployment run
    worker = make_worker(mode)
    run_id = await dispatch(f"{flows}:append", tag="a")

    # When the worker has nothing left to do
    stats = await worker.run_until_idle(timeout=60)

    # Then the run went Scheduled -> Pending -> Running -> Completed under this worker
    run = await service.read_flow_run(run_id)
    assert run.state.name == "Completed", run.state
    assert await states_of(service, run_id) == ["Scheduled", "Pending", "Running", "Completed"]
    history = await service.read_flow_run_states(run_id)
    pending, running = history[1], history[2]
    assert pending.details.worker_id == worker.worker_id
    assert running.details.worker_id == worker.worker_id
    assert running.details.model_extra["flow_retries"] == 0
    assert running.details.model_extra["work_pool"] == POOL
    # ... executed here (inline) or in a child process (process mode)
    assert (run.result == os.getpid()) is (mode == "inline")
    logs = [record.message for record in await service.read_logs(run_id)]
    assert "appended a" in logs
    assert stats.claimed == 1 and stats.final_states["Completed"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_second_claim_by_another_worker_is_rejected_acked_and_the_run_executes_once(
    mode, flows, service, broker, dispatch, make_worker, tmp_path: Path
):
    # Given two workers on one pool, and the same dispatch delivered twice
    first, second = make_worker(mode), make_worker(mode)
    await first.start()
    await second.start()
    run_id = await dispatch(f"{flows}:append", tag="once")
    await dispatch(f"{flows}:append", run_id=run_id)

    await asyncio.gather(first.run_until_idle(timeout=60), second.run_until_idle(timeout=60))

    # Then the flow body ran once, and both deliveries were settled (nothing left, nothing dead)
    assert (tmp_path / "runs.log").read_text().splitlines() == [
        f"once {(await service.read_flow_run(run_id)).result}"
    ]
    assert first.stats.claimed + second.stats.claimed == 1
    assert first.stats.claimed_elsewhere + second.stats.claimed_elsewhere == 1
    assert await broker.purge(Names().pool(POOL)) == 0
    assert await broker.purge(Names().dead) == 0
    assert (await service.read_flow_run(run_id)).state.name == "Completed"
    # ... and the Running state names the worker that claimed it (two workers, one process)
    claimer = first if first.stats.claimed else second
    [running] = [s for s in await service.read_flow_run_states(run_id) if s.name == "Running"]
    assert running.details.worker_id == claimer.worker_id


async def test_bad_dispatch_messages_are_dead_lettered_and_the_worker_keeps_serving(
    flows, service, broker, dispatch, make_worker
):
    import uuid

    worker = make_worker("inline")
    await worker.start()
    names = Names()
    for body in (b"not json", b"[]", b'{"payload": {"flow_run_id": "x", "entrypoint": "a:b"}}',
                 b'{"payload": {"flow_run_id": "%s"}}' % str(uuid.uuid4()).encode(),
                 b'{"payload": {"flow_run_id": "%s", "entrypoint": "a:b", "attempts": "two"}}'
                 % str(uuid.uuid4()).encode()):
        await broker.publish(names.events, f"dispatch.{POOL}", body)
    unknown = await dispatch(f"{flows}:append", run_id=uuid.uuid4())  # no such run
    good = await dispatch(f"{flows}:append", tag="after")

    stats = await worker.run_until_idle(timeout=30)

    assert stats.dead_lettered == 6
    assert await broker.purge(names.dead) == 6
    assert unknown != good
    assert (await service.read_flow_run(good)).state.name == "Completed"


@pytest.mark.parametrize(
    ("error", "failures", "outage_timeout", "requeued"),
    [
        (BrokerUnavailable("connection lost"), 1, 300.0, 0),
        (BrokerUnavailable("connection lost"), 4, 300.0, 0),
        # the database refusing connections is an outage to wait out, like the broker's
        (EngineUnavailable("set_flow_run_state: the database is unavailable"), 4, 300.0, 0),
        # past the user's bound (runtime.report_timeout_seconds) the dispatch is requeued
        (BrokerUnavailable("connection lost"), 3, 1.0, 1),
    ],
)
async def test_a_transient_claim_failure_is_proposed_again_then_requeued(
    flows, service, dispatch, make_worker, error, failures, outage_timeout, requeued
):
    class Flaky:
        """The service, with claims lost on the way (as if the broker dropped)."""

        def __init__(self) -> None:
            self.failures = failures

        def __getattr__(self, name):
            return getattr(service, name)

        async def set_flow_run_state(self, flow_run_id, state, **options):
            if state.is_pending() and self.failures:
                self.failures -= 1
                raise error
            return await service.set_flow_run_state(flow_run_id, state, **options)

    worker = make_worker("inline", api=Flaky(), outage_timeout=outage_timeout)
    run_id = await dispatch(f"{flows}:append", tag="x")

    stats = await worker.run_until_idle(timeout=60)

    # proposed again with backoff by the same worker, and only past the bound requeued
    assert stats.requeued == requeued and stats.claimed == 1 and stats.dead_lettered == 0
    assert (await service.read_flow_run(run_id)).state.name == "Completed"


async def test_a_claim_committed_but_unanswered_is_kept_by_its_worker(
    flows, service, dispatch, make_worker, tmp_path
):
    """Regression (tests/faults/test_server_kill.py): the server committed the claim and died
    before replying. The worker proposes it again (an accepted duplicate) and runs the run; a
    requeued dispatch would have reached another worker, been refused, and left it Pending."""

    class LostReply:
        def __init__(self) -> None:
            self.lost = 1

        def __getattr__(self, name):
            return getattr(service, name)

        async def set_flow_run_state(self, flow_run_id, state, **options):
            result = await service.set_flow_run_state(flow_run_id, state, **options)
            if state.is_pending() and self.lost:
                self.lost -= 1
                raise TimeoutError("no reply")
            return result

    worker = make_worker("inline", api=LostReply())
    run_id = await dispatch(f"{flows}:append", tag="x")

    stats = await worker.run_until_idle(timeout=30)

    assert stats.claimed == 1 and stats.requeued == 0 and stats.claimed_elsewhere == 0
    assert (await service.read_flow_run(run_id)).state.name == "Completed"
    assert len((tmp_path / "runs.log").read_text().splitlines()) == 1  # executed once


async def test_heartbeats_name_the_running_runs(flows, service, dispatch, make_worker):
    beats: list[tuple[str, str, list]] = []

    class WithHeartbeat:
        def __getattr__(self, name):
            return getattr(service, name)

        async def heartbeat(self, worker_id, pool, flow_run_ids, attempts=None, info=None):
            beats.append((worker_id, pool, list(flow_run_ids)))
            return {"lease_seconds": 30.0, "revoked": []}

    worker = make_worker("inline", api=WithHeartbeat(), heartbeat_interval=0.05)
    run_id = await dispatch(f"{flows}:async_nap", seconds=0.5)
    await worker.run_until_idle(timeout=30)

    assert beats and all(b[:2] == (worker.worker_id, POOL) for b in beats)
    assert any(run_id in b[2] for b in beats)
    assert beats[-1][2] == [] or run_id in beats[-1][2]


async def test_process_mode_needs_a_broker_children_can_reach(broker, service):
    worker = Worker(broker, service, pool=POOL, concurrency=1, mode="process")
    with pytest.raises(WorkerConfigError, match="process mode needs RabbitMQ"):
        await worker.start()


# --- warm children ----------------------------------------------------------------------------
async def test_warm_child_is_reused_and_imports_the_flow_once(
    flows, service, dispatch, make_worker, tmp_path: Path
):
    worker = make_worker("process")
    await worker.start()
    [pid] = worker.child_pids
    first = await dispatch(f"{flows}:append", tag="1")
    await worker.run_until_idle(timeout=60)
    second = await dispatch(f"{flows}:append", tag="2")
    await worker.run_until_idle(timeout=60)

    assert (await service.read_flow_run(first)).result == pid
    assert (await service.read_flow_run(second)).result == pid
    assert (tmp_path / "imports.log").read_text().splitlines() == [str(pid)]
    # Starting a run in a warm child: receive it, find the loaded flow, enter the flow engine.
    cold, warm = worker.stats.start_ms
    [spawn] = worker.child_start_seconds
    print(f"\nchild start cost: cold child (spawn + imports + engine API) {spawn * 1000:.0f} ms; "
          f"run in a warm child: first (imports the flow) {cold:.2f} ms, then {warm:.2f} ms")
    assert warm < 50


async def test_a_run_that_kills_its_child_is_crashed_and_the_worker_keeps_serving(
    flows, service, dispatch, make_worker
):
    worker = make_worker("process")
    await worker.start()
    [old_pid] = worker.child_pids
    dead = await dispatch(f"{flows}:die")
    await worker.run_until_idle(timeout=60)

    run = await service.read_flow_run(dead)
    assert run.state.type is StateType.CRASHED
    assert "exited with code 1" in run.state.message
    running = (await service.read_flow_run_states(dead))[2]
    assert running.details.model_extra["flow_retries"] == 2
    assert running.details.model_extra["retry_delay_seconds"] == [1, 5]

    after = await dispatch(f"{flows}:append", tag="next")
    await worker.run_until_idle(timeout=60)
    run = await service.read_flow_run(after)
    assert run.state.name == "Completed"
    assert run.result != old_pid and worker.child_pids == [run.result]
    assert worker.stats.child_crashes == 1


async def test_sigkill_of_a_child_is_reported_with_the_signal(flows, service, dispatch, make_worker):
    import signal

    worker = make_worker("process")
    await worker.start()
    [pid] = worker.child_pids
    run_id = await dispatch(f"{flows}:nap", seconds=30)
    for _ in range(200):
        if (await service.read_flow_run(run_id)).state.name == "Running":
            break
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    await worker.run_until_idle(timeout=60)

    run = await service.read_flow_run(run_id)
    assert run.state.name == "Crashed" and "SIGKILL" in run.state.message


# --- stopping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_stop_lets_running_runs_finish(mode, flows, service, dispatch, make_worker):
    worker = make_worker(mode, drain_timeout=30)
    await worker.start()
    run_id = await dispatch(f"{flows}:async_nap", seconds=0.5)
    await _until_state(service, run_id, "Running")

    await worker.stop()

    assert (await service.read_flow_run(run_id)).state.name == "Completed"


async def test_stop_hands_back_a_process_run_still_going_at_the_deadline(
    flows, service, dispatch, make_worker
):
    worker = make_worker("process", drain_timeout=0.3)
    await worker.start()
    [pid] = worker.child_pids
    run_id = await dispatch(f"{flows}:nap", seconds=60)
    await _until_state(service, run_id, "Running")

    await worker.stop()

    run = await service.read_flow_run(run_id)
    assert run.state.name == "Scheduled" and "handed back" in run.state.message
    assert worker.stats.handed_back == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone: the run cannot execute twice at once


async def test_stop_crashes_an_inline_run_still_going_at_the_deadline(
    flows, service, dispatch, make_worker
):
    worker = make_worker("inline", drain_timeout=0.3)
    await worker.start()
    run_id = await dispatch(f"{flows}:async_nap", seconds=60)
    await _until_state(service, run_id, "Running")

    await worker.stop()

    run = await service.read_flow_run(run_id)
    assert run.state.name == "Crashed" and "cannot be handed back" in run.state.message


async def test_stop_returns_unclaimed_deliveries_to_the_queue(
    flows, service, broker, dispatch, make_worker
):
    # Given a busy worker (concurrency 1) holding a second delivery that waits for a slot
    worker = make_worker("inline", drain_timeout=10)
    await worker.start()
    busy = await dispatch(f"{flows}:async_nap", seconds=0.3)
    waiting = await dispatch(f"{flows}:append", tag="later")
    await _until_state(service, busy, "Running")

    await worker.stop()

    # Then the running run finished, the waiting one was never claimed and is back in the queue
    assert (await service.read_flow_run(busy)).state.name == "Completed"
    assert (await service.read_flow_run(waiting)).state.name == "Scheduled"
    assert await broker.purge(Names().pool(POOL)) == 1


async def _until_state(service, run_id, name: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await service.read_flow_run(run_id)).state.name != name:  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.02)
