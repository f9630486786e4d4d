"""The worker: consume a pool's queue, claim runs, execute them, heartbeat, drain on stop.

    worker = Worker(broker, api, pool="default", concurrency=4)
    await worker.start()
    ...
    await worker.stop()          # SIGTERM: no new claims, drain, hand back what is left

Per dispatch message (docs/protocol.md, "Work"):

1. parse it; a malformed one is rejected (dead-lettered) and counted;
2. wait for one of `concurrency` slots (the message stays unacked meanwhile, so prefetch keeps
   the broker from pushing more than the worker can start);
3. claim the run: propose ``Pending(worker_id=W)``. REJECT (claimed elsewhere, or no longer
   runnable) → ack and move on; a broker/RPC failure → propose it again (a claim by the same
   worker is idempotent), up to 3 times, then nack with requeue (try again later);
   an unknown run → dead-letter;
4. ACCEPT → ack at once (an ack is never held for a run: RabbitMQ's `consumer_timeout` would
   close the channel) and execute the run in a warm child (`mode="process"`) or in this process
   (`mode="inline"`). The flow engine proposes Running with the worker's id.

A child that dies mid-run costs that run (proposed Crashed, with the exit code) and nothing else:
the child is replaced and the worker keeps serving.

Ownership (docs/protocol.md, "Attempts and leases"). The claim opens an attempt of the run (its
number is in the answer's ``details.attempt``); every report of the run carries it, and the
engine refuses the reports of an attempt it ended. A worker holds its runs under a lease that each
answered heartbeat renews (`engine.server.heartbeats`: 80 % of the server's heartbeat timeout,
from when the heartbeat was sent). It claims nothing without a valid lease, stops every run it
still executes once the lease runs out (its children watch the deadline themselves, so they stop
even while this process is frozen), and stops at once a run the heartbeat's answer names as
revoked, or whose newer dispatch arrives (the engine ended this worker's attempt).

Stop: cancel the consumer first (no new claims; unclaimed deliveries go back to the queue), wait up
to `drain_timeout` for running runs, then hand back the rest: the child is killed and the run goes
back to ``Scheduled`` (forced, but only while it is still Pending/Running under this worker), so
another worker picks it up without spending one of the flow's retries; if that fails, it is
proposed Crashed (the server's retry rules apply). Inline runs cannot be stopped safely when their
body is a thread, so an inline run still going at the deadline is cancelled and proposed Crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.broker import Broker, Consumer, IncomingMessage, Names
from engine.broker.errors import BrokerError
from engine.broker.topology import DEFAULT_DELIVERY_LIMIT, QueueSpec, build_topology
from engine.errors import CodeError, EngineUnavailable, ObjectNotFound
from engine.logging import get_logger
from engine.ports import EngineAPI
from engine.schemas import FlowRun, OrchestrationResult
from engine.states import Crashed, Failed, Pending, Scheduled, State, StateType
from workers.child_main import EXIT_LEASE_LOST, REMOTE_API, ChildConfig
from workers.children import ChildExited, ChildPool, Finished, NoChild, StartMethod
from workers.code import CodeCache, Prepared
from workers.dispatch import Dispatch, parse_dispatch
from workers.errors import BadDispatch, WorkerConfigError, WorkerError

__all__ = ["Mode", "Worker", "WorkerStats", "declare_pool"]

Mode = Literal["process", "inline"]

#: Errors that mean "the engine could not be reached or could not act now": retried, never final.
_TRANSIENT = (BrokerError, TimeoutError, OSError, EngineUnavailable)
_REPORT_ATTEMPTS = 3
#: The lease deadline while the engine grants none (an engine API without heartbeats).
_NO_LEASE = math.inf


@dataclass
class WorkerStats:
    """What this worker has done, for logs, tests and benchmarks."""

    claimed: int = 0
    claimed_elsewhere: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    child_crashes: int = 0
    handed_back: int = 0
    #: runs stopped because their attempt was over (revoked) or the lease ran out
    stopped_superseded: int = 0
    stopped_lease_lost: int = 0
    final_states: Counter[str] = field(default_factory=Counter)
    #: time in the child from receiving a run to entering the flow engine (process mode)
    start_ms: list[float] = field(default_factory=list)


@dataclass
class _Run:
    dispatch: Dispatch
    flow_run: FlowRun | None = None
    task: asyncio.Task[None] | None = None
    #: set when the drain deadline passed: the run is being handed back
    handing_back: bool = False
    #: the attempt the claim opened (None: the engine numbers none)
    attempt: int | None = None
    #: why this worker stopped the run itself ("superseded", "lease"), if it did
    stopped: str | None = None
    #: set once the claim is settled (the run executing, or given up)
    settled: asyncio.Event = field(default_factory=asyncio.Event)


async def declare_pool(
    broker: Broker, pool: str, *, names: Names | None = None, delivery_limit: int | None = None
) -> str:
    """Declare (idempotently) the pool's queue, bound to ``dispatch.<pool>`` on the events
    exchange, with dead-lettering; return the queue name. The server declares the same."""
    names = names or Names()
    topology = build_topology(
        pools=[pool],
        delivery_limit=delivery_limit or _default_delivery_limit(),
        prefix=names.prefix,
    )
    queue = names.pool(pool)
    for exchange in topology.exchanges:
        await broker.declare_exchange(exchange.name, exchange.type, durable=exchange.durable)
    wanted: list[QueueSpec] = [q for q in topology.queues if q.name in (queue, names.dead)]
    for spec in wanted:
        await broker.declare_queue(spec)
    for binding in topology.bindings:
        if binding.queue == names.dead:
            await broker.bind(binding.queue, binding.exchange, binding.routing_key)
    await broker.bind(queue, names.events, f"dispatch.{pool}")
    return queue


def _default_delivery_limit() -> int:
    limit: int = _setting("broker", "delivery_limit", DEFAULT_DELIVERY_LIMIT)
    return limit


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Serves one work pool. See the module docstring for the protocol."""

    def __init__(
        self,
        broker: Broker,
        api: EngineAPI,
        *,
        pool: str,
        concurrency: int,
        worker_id: str | None = None,
        mode: Mode = "process",
        heartbeat_interval: float = 5.0,
        drain_timeout: float = 30.0,
        names: Names | None = None,
        child_api: str = REMOTE_API,
        start_method: StartMethod = "spawn",
        claim_timeout: float = 10.0,
        delivery_limit: int | None = None,
        outage_timeout: float = 300.0,
        code_cache_dir: str | Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if mode not in ("process", "inline"):
            raise ValueError(f"mode must be 'process' or 'inline', not {mode!r}")
        self.names = names or Names()
        self.queue = self.names.pool(pool)  # validates the pool name
        self.broker = broker
        self.api = api
        self.pool = pool
        self.concurrency = concurrency
        self.worker_id = worker_id or default_worker_id()
        self.mode: Mode = mode
        self.heartbeat_interval = heartbeat_interval
        self.drain_timeout = drain_timeout
        self.claim_timeout = claim_timeout
        #: how long a claim is retried while the engine is unreachable or its database down
        self.outage_timeout = outage_timeout
        self.stats = WorkerStats()
        self._child_api = child_api
        self._start_method: StartMethod = start_method
        self._delivery_limit = delivery_limit
        self._log = get_logger("workers.worker").bind(worker_id=self.worker_id, pool=pool)
        self._runs: dict[uuid.UUID, _Run] = {}
        self._free = concurrency
        self._slots = asyncio.Condition()
        self._handling = 0
        self._activity = asyncio.Event()
        self._consumer: Consumer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._children: ChildPool | None = None
        self._flows: dict[str, Any] = {}
        #: entrypoints being imported (inline mode), each by one thread, awaited by every run
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()
        #: the lease deadline in `time.monotonic()` seconds, shared with the children
        self._lease = multiprocessing.get_context(start_method).RawValue("d", 0.0)
        self._lease_renewed = asyncio.Event()
        self._lease_warned = False
        #: deployed code, fetched once per hash (`workers.code`)
        self.code = CodeCache(
            api, Path(code_cache_dir) if code_cache_dir else _default_cache_dir(),
            chunk_bytes=_setting("code", "fetch_chunk_kb", 512) * 1024,
            call_timeout=max(claim_timeout, 10.0), outage_timeout=outage_timeout,
        )
        self._started_at = time.time()

    # --- life cycle -------------------------------------------------------------------------
    @property
    def running(self) -> list[uuid.UUID]:
        """Runs claimed by this worker and not finished yet."""
        return list(self._runs)

    @property
    def child_pids(self) -> list[int]:
        return self._children.pids if self._children is not None else []

    @property
    def child_start_seconds(self) -> list[float]:
        """Cold-start time of each live warm child (spawn, imports, engine API opened)."""
        return self._children.start_seconds if self._children is not None else []

    async def start(self) -> None:
        """Declare the pool queue, start the warm children, then consume and heartbeat."""
        if self._started:
            return
        if self._stopping:
            raise WorkerError("this worker was stopped: build a new one to start again")
        self._started = True
        try:
            await asyncio.to_thread(self.code.sweep)
            await declare_pool(
                self.broker, self.pool, names=self.names, delivery_limit=self._delivery_limit
            )
            if self.mode == "process":
                self._check_children_can_reach_engine()
                self._children = ChildPool(
                    self.concurrency, self._child_config, start_method=self._start_method,
                    lease=self._lease,
                )
                await self._children.start()
            else:
                self._install_inline_runtime()
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"flowrelay-heartbeat-{self.worker_id}"
            )
            self._consumer = await self.broker.consume(
                self.queue, self._on_message, prefetch=self.concurrency
            )
        except BaseException:
            await self.stop()
            raise
        self._log.info(
            "worker started", queue=self.queue, concurrency=self.concurrency, mode=self.mode,
            children=self.child_pids,
        )

    async def stop(self) -> None:
        """Graceful stop (what SIGTERM does): no new claims, drain up to `drain_timeout`, hand
        back what is still running, then stop heartbeats and children. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            async with self._slots:
                self._slots.notify_all()  # deliveries waiting for a slot go back to the queue
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await consumer.cancel(grace=self.claim_timeout + 1.0)
            await self._drain()
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._heartbeat
            if self._children is not None:
                await self._children.close()
            self.code.close()
            self._stopped.set()
            self._log.info("worker stopped", stats=_summary(self.stats))

    async def run_until_stopped(self) -> None:
        """Start (if needed) and serve until `stop()` has finished."""
        await self.start()
        await self._stopped.wait()

    async def run_until_idle(self, timeout: float = 30.0, *, quiet: float = 0.1) -> WorkerStats:  # noqa: ASYNC109
        """Start (if needed) and return once no delivery is being handled and no run is running
        for `quiet` seconds in a row (for tests and scripts); TimeoutError after `timeout`."""
        await self.start()
        async with asyncio.timeout(timeout):
            while True:
                self._activity.clear()
                if self._idle():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._activity.wait(), quiet)
                    if self._idle() and not self._activity.is_set():
                        return self.stats
                else:
                    await self._activity.wait()

    def info(self) -> dict[str, Any]:
        """What this worker says about itself in each heartbeat (``flowrelay worker ls``)."""
        code = self._children.code_loaded if self._children is not None else self.code.loaded
        return {
            "concurrency": self.concurrency, "mode": self.mode, "host": socket.gethostname(),
            "pid": os.getpid(), "started": self._started_at, "code": code,
            "running": len(self._claimed_ids()),
        }

    def _claimed_ids(self) -> list[uuid.UUID]:
        return [run_id for run_id, run in self._runs.items() if run.task is not None]

    def _idle(self) -> bool:
        return self._handling == 0 and not self._runs

    def _touch(self) -> None:
        self._activity.set()

    # --- deliveries -------------------------------------------------------------------------
    async def _on_message(self, message: IncomingMessage) -> None:
        self._handling += 1
        self._touch()
        try:
            await self._handle(message)
        finally:
            self._handling -= 1
            self._touch()

    async def _handle(self, message: IncomingMessage) -> None:
        try:
            dispatch = parse_dispatch(message.body)
        except BadDispatch as exc:
            self.stats.dead_lettered += 1
            self._log.warning("dead-lettering a bad dispatch message", reason=str(exc),
                              message=repr(message))
            await message.reject()
            return
        log = self._log.bind(flow_run_id=str(dispatch.flow_run_id))
        if dispatch.work_pool not in (None, self.pool):
            log.warning("dispatch names another pool; running it anyway", work_pool=dispatch.work_pool)
        if not await self._take_slot():
            self.stats.requeued += 1
            await message.nack(requeue=True)  # stopping: another worker will take it
            return
        handed_over = reserved = False
        try:
            if not await self._wait_for_lease():
                self.stats.requeued += 1
                log.warning("no lease (no heartbeat answered): requeueing the dispatch")
                await message.nack(requeue=True)
                return
            # Decided and reserved with no await in between: two deliveries of one dispatch
            # (two relays published it) must not both pass the check.
            verdict = await self._superseded_by(dispatch, log)
            if verdict == "later":
                self.stats.requeued += 1
                log.info("this worker's claim of the run is still in flight; requeueing")
                await message.nack(requeue=True)
                return
            if verdict == "drop":
                log.info("run already claimed by this worker; dropping the duplicate delivery")
                await message.ack()
                return
            run = self._runs[dispatch.flow_run_id] = _Run(dispatch)
            reserved = True
            try:
                answer = await self._claim(dispatch.flow_run_id, log)
            except ObjectNotFound as exc:
                self.stats.dead_lettered += 1
                log.warning("dead-lettering a dispatch for an unknown flow run", reason=str(exc))
                await message.reject()
                return
            except _TRANSIENT as exc:
                self.stats.requeued += 1
                log.warning("claim failed; requeueing the dispatch", error=f"{type(exc).__name__}: {exc}")
                await message.nack(requeue=True)
                return
            if not answer.accepted:
                self.stats.claimed_elsewhere += 1
                current = answer.state.name if answer.state else None
                held = "claimed elsewhere" if current == "Pending" or current == "Running" else "not runnable"
                log.info(f"run {held}; skipping it", state=current, reason=answer.reason)
                await message.ack()
                return
            await message.ack()
            self.stats.claimed += 1
            run.flow_run = answer.run if isinstance(answer.run, FlowRun) else None
            run.attempt = answer.state.details.attempt if answer.state is not None else None
            log.info("claimed flow run", entrypoint=dispatch.entrypoint, attempt=run.attempt)
            run.task = asyncio.get_running_loop().create_task(
                self._execute(run), name=f"flowrelay-run-{dispatch.flow_run_id}"
            )
            handed_over = True
        finally:
            if not handed_over:
                if reserved:
                    del self._runs[dispatch.flow_run_id]
                await self._give_slot()
            if reserved:
                run.settled.set()

    async def _claim(self, flow_run_id: uuid.UUID, log: Any) -> OrchestrationResult:
        """Propose ``Pending(worker_id=W)``; after a transient failure (broker or database
        unavailable, no reply in time), propose it again with backoff for up to
        `outage_timeout` (the dispatch stays unacked meanwhile).

        A failure may come after the server committed the claim (killed before its reply): the
        run is then ours, and only we can learn it — a retry by the same worker is an accepted
        duplicate, whereas a requeued dispatch would reach another worker, be refused as
        "claimed elsewhere" and leave the run Pending for good."""
        deadline = time.monotonic() + self.outage_timeout
        pause = 0.5
        while True:
            try:
                async with asyncio.timeout(self.claim_timeout):
                    return await self.api.set_flow_run_state(
                        flow_run_id, Pending(worker_id=self.worker_id)
                    )
            except _TRANSIENT as exc:
                if time.monotonic() + pause > deadline or self._stopping:
                    raise
                log.warning("claim failed; proposing it again", retry_in=pause,
                            error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _superseded_by(self, dispatch: Dispatch, log: Any) -> Literal["claim", "drop", "later"]:
        """What to do with `dispatch`: claim it, unless this worker already runs the run and the
        dispatch is a duplicate ("drop"). A dispatch written after this worker's claim (its
        ``attempts`` count includes our attempt) means the engine ended our attempt and handed
        the run out again: our execution is stopped first, then the run claimed anew. While our
        own claim of the run is in flight, that is decided once it is settled ("later" if it
        takes longer than a claim may)."""
        run = self._runs.get(dispatch.flow_run_id)
        if run is not None and run.task is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.settled.wait(), self.claim_timeout)
            if not run.settled.is_set():
                return "later"
            run = self._runs.get(dispatch.flow_run_id)
        if run is None:
            return "claim"
        if dispatch.attempts is None or run.attempt is None or dispatch.attempts < run.attempt:
            return "drop"  # written before our claim: a redelivery
        if dispatch.attempt == run.attempt:
            return "drop"  # written while our attempt goes on (its in-process retry): ours to run
        log.warning("a newer dispatch of a run this worker executes: its attempt is over; "
                    "stopping it", attempt=run.attempt, dispatch_attempts=dispatch.attempts)
        self._stop_run(run, "superseded")
        task = run.task
        if task is not None:
            await asyncio.wait([task], timeout=self.claim_timeout)
        return "later" if dispatch.flow_run_id in self._runs else "claim"

    async def _wait_for_lease(self) -> bool:
        """Wait (up to `claim_timeout`) until this worker holds a valid lease."""
        deadline = time.monotonic() + self.claim_timeout
        while not self._lease_valid():
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                return False
            self._lease_renewed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_renewed.wait(), min(left, 1.0))
        return True

    def _lease_valid(self) -> bool:
        return bool(time.monotonic() < self._lease.value)

    def _stop_run(self, run: _Run, why: str) -> None:
        """Stop executing `run` now (its child killed, or its inline task cancelled): `why` is
        "superseded" (the engine ended its attempt) or "lease" (the lease ran out)."""
        if run.stopped is not None or run.task is None or run.task.done():
            return
        run.stopped = why
        if why == "superseded":
            self.stats.stopped_superseded += 1
        else:
            self.stats.stopped_lease_lost += 1
        if self._children is not None:
            self._children.terminate(run.dispatch.flow_run_id)
        else:
            run.task.cancel()

    async def _take_slot(self) -> bool:
        async with self._slots:
            await self._slots.wait_for(lambda: self._free > 0 or self._stopping)
            if self._stopping:
                return False
            self._free -= 1
            return True

    async def _give_slot(self) -> None:
        async with self._slots:
            self._free += 1
            self._slots.notify()

    # --- execution --------------------------------------------------------------------------
    async def _execute(self, run: _Run) -> None:
        flow_run_id = run.dispatch.flow_run_id
        log = self._log.bind(flow_run_id=str(flow_run_id))
        try:
            if self.mode == "process":
                await self._execute_in_child(run, log)
            else:
                await self._execute_inline(run, log)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one run's trouble never stops the worker
            log.exception("executing the flow run failed")
        finally:
            self._runs.pop(flow_run_id, None)
            await self._give_slot()
            self._touch()

    async def _prepare_code(self, run: _Run, log: Any) -> Prepared | None:
        """The run's code made ready (fetched once per hash); None once the run was failed
        because it cannot be (no such bundle, another package version installed)."""
        try:
            return await self.code.prepare(run.dispatch.code)
        except (CodeError, ObjectNotFound, *_TRANSIENT) as exc:
            self.stats.final_states["Failed"] += 1
            log.error("the run's code is not available", error=f"{type(exc).__name__}: {exc}",
                      code=run.dispatch.code)
            await self._report(run, Failed(message=f"could not start the flow run: {exc}"), log)
            return None

    async def _execute_in_child(self, run: _Run, log: Any) -> None:
        assert self._children is not None
        prepared = await self._prepare_code(run, log)
        if prepared is None:
            return
        run_json = run.flow_run.model_dump_json() if run.flow_run is not None else None
        outcome = await self._children.run(
            run.dispatch.flow_run_id, run.dispatch.entrypoint, run_json, code=prepared.key,
            root=str(prepared.root) if prepared.root is not None else None,
        )
        if isinstance(outcome, Finished):
            self.stats.final_states[outcome.state_name] += 1
            self.stats.start_ms.append(outcome.start_ms)
            log.info("flow run finished", state=outcome.state_name, child_pid=outcome.pid,
                     start_ms=outcome.start_ms)
        elif isinstance(outcome, ChildExited) and run.handing_back:
            await self._hand_back(run, log)
        elif isinstance(outcome, ChildExited) and run.stopped == "superseded":
            log.warning("stopped a run whose attempt the engine ended", attempt=run.attempt)
        elif isinstance(outcome, ChildExited) and (
            run.stopped == "lease" or outcome.exitcode == EXIT_LEASE_LOST
        ):
            self.stats.final_states["Crashed"] += 1
            await self._lease_lost(run, log)
        elif isinstance(outcome, ChildExited):
            self.stats.child_crashes += 1
            self.stats.final_states["Crashed"] += 1
            log.error("child process died during the run", detail=outcome.describe())
            await self._report(run, Crashed(message=f"flow run crashed: {outcome.describe()}"), log)
        elif isinstance(outcome, NoChild):
            self.stats.final_states["Crashed"] += 1
            await self._report(run, Crashed(message=f"flow run not started: {outcome.reason}"), log)

    async def _execute_inline(self, run: _Run, log: Any) -> None:
        from engine.entrypoints import load_flow
        from engine.runtime import embedded

        prepared = await self._prepare_code(run, log)
        if prepared is None:
            return
        entrypoint = run.dispatch.entrypoint
        if prepared.root is not None:
            # A bundle: its file, imported under a name of its own per version. Inline runs share
            # this process, so a module the flow imports from its project stays the version first
            # imported (process mode gives each version its own children; see README).
            entrypoint = str(prepared.root / entrypoint)
            if str(prepared.root) not in sys.path:
                sys.path.append(str(prepared.root))
        # This task's context only: other inline workers, and plain flow calls, are not ours.
        embedded.set_worker_identity(
            self.worker_id, {"work_pool": self.pool, "code": prepared.key}, context_only=True
        )
        try:
            flow = self._flows.get(entrypoint)
            if flow is None:
                # One load per entrypoint, shared: two runs importing one module at once in two
                # threads would see it half-imported ("has no attribute"). Shielded: a run
                # cancelled while waiting does not cancel the others' load.
                loading = self._loading.get(entrypoint)
                if loading is None:
                    loading = self._loading[entrypoint] = asyncio.ensure_future(
                        asyncio.to_thread(load_flow, entrypoint)
                    )
                    loading.add_done_callback(lambda _: self._loading.pop(entrypoint, None))
                flow = self._flows[entrypoint] = await asyncio.shield(loading)
            flow_run = run.flow_run or await self.api.read_flow_run(run.dispatch.flow_run_id)
        except Exception as exc:  # noqa: BLE001 - EntrypointError, or the engine unreachable
            self.stats.final_states["Failed"] += 1
            await self._report(run, Failed(message=f"could not start the flow run: {exc}"), log)
            return
        try:
            state = await flow.run_existing(flow_run)
        except asyncio.CancelledError:
            if run.stopped == "superseded":
                log.warning("stopped a run whose attempt the engine ended", attempt=run.attempt)
                return
            if run.stopped == "lease":
                await self._lease_lost(run, log)
                return
            if not run.handing_back:
                raise
            # Our own cancel at the drain deadline. A sync body keeps running in its thread, so
            # the run cannot go back to Scheduled without risking two executions at once.
            self.stats.final_states["Crashed"] += 1
            message = (f"worker {self.worker_id} stopped before the run finished "
                       "(an inline run cannot be handed back safely)")
            await self._report(run, Crashed(message=message), log)
            return
        self.stats.final_states[state.name] += 1
        log.info("flow run finished", state=state.name)

    async def _drain(self) -> None:
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if not tasks:
            return
        self._log.info("draining", runs=len(tasks), drain_timeout=self.drain_timeout)
        _, late = await asyncio.wait(tasks, timeout=self.drain_timeout)
        if not late:
            return
        for run in list(self._runs.values()):
            if run.task not in late:
                continue
            run.handing_back = True
            if self._children is not None:
                self._children.terminate(run.dispatch.flow_run_id)
            else:
                run.task.cancel()
        _, stuck = await asyncio.wait(late, timeout=self.claim_timeout * _REPORT_ATTEMPTS + 5.0)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=1.0)

    async def _lease_lost(self, run: _Run, log: Any) -> None:
        """The run was stopped because this worker's lease ran out (heartbeats unanswered: the
        broker restarting, the server paused or this worker frozen). A run that never started
        (still Pending in our attempt: its Running report was on its way) goes back to its pool
        without using a retry; one that ran is proposed Crashed (the flow's retries apply). Both
        are refused if the engine has meanwhile ended the attempt."""
        message = (f"worker {self.worker_id} stopped the run: its lease ran out (no heartbeat "
                   "answered in time)")
        log.warning(message, attempt=run.attempt)
        try:
            async with asyncio.timeout(self.claim_timeout):
                current = (await self.api.read_flow_run(run.dispatch.flow_run_id)).state
        except Exception:  # noqa: BLE001 - the engine still unreachable: report Crashed below
            current = None
        if (current is not None and current.type is StateType.PENDING
                and run.attempt is not None and current.details.attempt == run.attempt):
            state = Scheduled(message=f"{message}; it never started: scheduled again (no retry used)",
                              handed_back_by=self.worker_id, attempt=run.attempt)
            if await self._report_id(run.dispatch.flow_run_id, state, force=True):
                return
        await self._report(run, Crashed(message=message), log)

    async def _hand_back(self, run: _Run, log: Any) -> None:
        """The child is dead: put the run back to Scheduled if it is still ours, else Crashed."""
        flow_run_id = run.dispatch.flow_run_id
        message = f"handed back: worker {self.worker_id} stopped before the run finished"
        try:
            async with asyncio.timeout(self.claim_timeout):
                current = (await self.api.read_flow_run(flow_run_id)).state
            if current is None or current.is_final() or current.type is StateType.SCHEDULED:
                log.info("run left as it is", state=current.name if current else None)
                return
            if (
                current.type in (StateType.PENDING, StateType.RUNNING)
                and current.details.worker_id == self.worker_id
            ):
                async with asyncio.timeout(self.claim_timeout):
                    answer = await self.api.set_flow_run_state(
                        flow_run_id,
                        Scheduled(message=message, handed_back_by=self.worker_id, attempt=run.attempt),
                        force=True,
                    )
                if answer.accepted:
                    self.stats.handed_back += 1
                    log.info("handed the run back", state="Scheduled")
                    return
        except Exception as exc:  # noqa: BLE001 - fall back to Crashed below
            log.warning("handing the run back failed", error=f"{type(exc).__name__}: {exc}")
        self.stats.final_states["Crashed"] += 1
        await self._report(run, Crashed(message=f"{message}; handing it back failed"), log)

    async def _report(self, run: _Run, state: State, log: Any) -> None:
        state.details.attempt = run.attempt  # refused if the engine ended this attempt
        if not await self._report_id(run.dispatch.flow_run_id, state):
            log.error("could not report the run's state", state=state.name)

    async def _report_id(self, flow_run_id: uuid.UUID, state: State, *, force: bool = False) -> bool:
        """Propose `state` (unforced unless said: a run already final stays final), retried a
        few times."""
        for attempt in range(_REPORT_ATTEMPTS):
            try:
                async with asyncio.timeout(self.claim_timeout):
                    await self.api.set_flow_run_state(flow_run_id, state, force=force)
                return True
            except _TRANSIENT:
                await asyncio.sleep(0.5 * (attempt + 1))
        return False

    # --- heartbeats -------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        beat = getattr(self.api, "heartbeat", None)
        if beat is None:
            self._log.debug("the engine API has no heartbeat: not sending any (no lease)")
            self._grant(_NO_LEASE)
            return
        while True:
            sent = time.monotonic()
            attempts = {
                str(run_id): run.attempt for run_id, run in self._runs.items()
                if run.task is not None and run.attempt is not None
            }
            try:
                async with asyncio.timeout(max(self.heartbeat_interval, 1.0)):
                    reply = await beat(self.worker_id, self.pool, self._claimed_ids(), attempts,
                                       info=self.info())
            except Exception as exc:  # noqa: BLE001 - a missed beat is logged, never fatal
                left = self._lease.value - time.monotonic()
                self._log.warning("heartbeat failed", error=f"{type(exc).__name__}: {exc}",
                                  lease_left=round(max(left, 0.0), 2))
            else:
                self._renewed(sent, reply, attempts)
            self._enforce_lease()
            # Wake for the next beat, or when the lease runs out if that comes first.
            left = self._lease.value - time.monotonic()
            await asyncio.sleep(max(0.05, min(self.heartbeat_interval, left + 0.01)))

    def _renewed(self, sent: float, reply: Any, attempts: dict[str, int]) -> None:
        """A heartbeat sent at `sent`, naming the runs' `attempts`, was answered with `reply`:
        renew the lease, stop the runs it revokes (still in the attempt that was named: a run
        finished and claimed again meanwhile is another attempt)."""
        reply = reply if isinstance(reply, dict) else {}
        lease = reply.get("lease_seconds")
        if isinstance(lease, int | float) and not isinstance(lease, bool) and lease > 0:
            if lease <= self.heartbeat_interval and not self._lease_warned:
                self._lease_warned = True
                self._log.warning(
                    "the lease is not longer than the heartbeat interval: runs will be stopped "
                    "between beats (lower worker.heartbeat_interval_seconds or raise "
                    "server.heartbeat_timeout_seconds)",
                    lease_seconds=lease, heartbeat_interval=self.heartbeat_interval,
                )
            current = self._lease.value
            self._grant(sent + lease if current == _NO_LEASE else max(current, sent + lease))
        else:
            self._grant(_NO_LEASE)  # an engine that grants no lease: nothing to watch
        for raw in reply.get("revoked") or ():
            try:
                run = self._runs.get(uuid.UUID(str(raw)))
            except ValueError:
                continue
            if run is not None and run.stopped is None and run.attempt == attempts.get(str(raw)):
                self._log.warning("the engine ended this run's attempt: stopping it",
                                  flow_run_id=str(raw), attempt=run.attempt)
                self._stop_run(run, "superseded")

    def _grant(self, deadline: float) -> None:
        self._lease.value = deadline
        self._lease_renewed.set()

    def _enforce_lease(self) -> None:
        """Stop every inline run still executing once the lease has run out (children watch
        the lease themselves, and stop only a run whose body is still executing: one whose body
        is done and whose final state is on its way must be let through, not repeated)."""
        if self._lease_valid() or self._children is not None:
            return
        for run in list(self._runs.values()):
            if run.task is not None and run.stopped is None:
                self._log.error("the lease ran out (no heartbeat answered): stopping the run",
                                flow_run_id=str(run.dispatch.flow_run_id), attempt=run.attempt)
                self._stop_run(run, "lease")

    # --- modes ------------------------------------------------------------------------------
    def _child_config(self, index: int) -> ChildConfig:
        return ChildConfig(
            worker_id=self.worker_id, pool=self.pool, api_factory=self._child_api,
            prefix=self.names.prefix, index=index, extra_details={"work_pool": self.pool},
        )

    def _check_children_can_reach_engine(self) -> None:
        if self._child_api != REMOTE_API:
            return
        from engine.settings import get_settings

        url = get_settings().broker.url
        if not url.lower().startswith(("amqp://", "amqps://")):
            raise WorkerConfigError(
                f"process mode needs RabbitMQ: child processes reach the engine over broker.url, "
                f"which is {url.split('://')[0]}:// (only visible inside one process). Set "
                "broker.url to amqp://..., or use mode='inline' (what `flowrelay dev` does)"
            )

    def _install_inline_runtime(self) -> None:
        from engine.runtime import embedded
        from workers.inline import LoopBridge

        if embedded.engine_loop().is_current:
            return  # embedded mode (`flowrelay dev`): the runtime already uses this loop's engine
        bridge: Any = LoopBridge(self.api, asyncio.get_running_loop())
        embedded.install_api(bridge)


def _setting(section: str, name: str, default: Any) -> Any:
    try:
        from engine.settings import get_settings

        return getattr(getattr(get_settings(), section), name)
    except Exception:  # noqa: BLE001 - a bad config is reported elsewhere; keep the default
        return default


def _default_cache_dir() -> Path:
    """`code.cache_dir`, else ``<home>/code``."""
    try:
        from engine.settings import get_settings

        settings = get_settings()
        return Path(settings.code.cache_dir or settings.home / "code").expanduser()
    except Exception:  # noqa: BLE001 - a bad config is reported elsewhere; keep the default
        return Path("~/.flowrelay/code").expanduser()


def _summary(stats: WorkerStats) -> dict[str, Any]:
    return {
        "claimed": stats.claimed, "claimed_elsewhere": stats.claimed_elsewhere,
        "dead_lettered": stats.dead_lettered, "requeued": stats.requeued,
        "child_crashes": stats.child_crashes, "handed_back": stats.handed_back,
        "stopped_superseded": stats.stopped_superseded, "stopped_lease_lost": stats.stopped_lease_lost,
        "final_states": dict(stats.final_states),
    }
