"""The engine service: runs, states, logs and events over the database (`engine.ports.EngineAPI`).

Every write call is one unit of work in a database transaction. A state change, its history row
and its outbox event are committed together, so nothing is published that was not committed and
nothing committed is lost. Writes go through group commit (`engine.db.group_commit`): concurrent
calls share one transaction, each in a savepoint of its own, and every caller gets its result
only after the COMMIT.

Concurrency:
- one writer task per service runs the writes, one after another, so they never wait on each
  other's locks inside the process;
- PostgreSQL: the run row is locked (``SELECT ... FOR UPDATE``) while a proposal is judged, so
  several servers on one database stay consistent. Their group-commit transactions carry works
  in whatever order they came, so they can still deadlock: the loser's work is run again, whole,
  in a fresh transaction (`engine.db.group_commit.RetryPolicy`, settings
  ``database.conflict_retries`` / ``conflict_backoff_ms``);
- SQLite: write transactions begin with ``BEGIN IMMEDIATE`` (see `engine.db.engine`), which
  serialises writers across processes.
- Idempotency keys and caller-chosen task-run ids rely on UNIQUE constraints: the loser of a race
  gets an IntegrityError, and re-reads the winner's row.

    svc = await EngineService.open("sqlite+aiosqlite:///flowrelay.db")
    run = await svc.create_flow_run("etl", {"day": "2026-11-22"})
    result = await svc.set_flow_run_state(run.id, Running(worker_id="w1"))
    await svc.close()
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog
from sqlalchemy import event as sa_event
from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from engine import deployments
from engine import flow_runs as core
from engine.code import store as code_store
from engine.db import pools, workers
from engine.db import repository as repo
from engine.db import runs as core_runs
from engine.db.engine import create_db_engine, migrate, read_only
from engine.db.group_commit import GroupCommit, RetryPolicy, after_commit, is_unavailable
from engine.db.models import (
    WRITER_OPTION,
    Base,
    DeploymentRow,
    EventRow,
    FlowRow,
    FlowRunRow,
    FlowRunStateRow,
    LogRow,
    TaskRunRow,
    TaskRunStateRow,
)
from engine.db.servers import new_server_id
from engine.deployments.bulk import DueDispatch, dispatch_due
from engine.errors import (
    CodeError,
    ConfigError,
    InvalidTransition,
    ObjectNotFound,
    ParameterValidationError,
    ResultNotSerializable,
    ResultTooLarge,
)
from engine.events import task_run_event
from engine.orchestration import Decision, Status, decide
from engine.runtime.names import generate_name
from engine.schemas import (
    CodeChunk,
    Deployment,
    DeploymentSpec,
    Event,
    FlowRun,
    FlowRunFilter,
    LogRecord,
    OrchestrationResult,
    TaskRun,
    WorkerInfo,
    WorkPool,
    check_pool_name,
)
from engine.states import Crashed, Pending, Scheduled, State, StateType, utcnow

T = TypeVar("T")

log = structlog.get_logger("flowrelay.service")

#: `(event, routing key)` pairs of committed outbox rows, as handed to event listeners
OutboxEvents = list[tuple[Event, str]]
_HAND_OVER = "flowrelay_hand_over"


class _WriteSession(Session):
    """The writer's session: its committed outbox rows are handed to the event listeners."""


@sa_event.listens_for(_WriteSession, "after_flush")
def _collect_outbox_rows(session: Session, flush_context: object) -> None:
    # `session.new` still lists what this flush inserted. Handed over only once committed (and
    # never if the work's savepoint or the transaction is rolled back): see `after_commit`.
    hand_over = session.info.get(_HAND_OVER)
    if hand_over is None:
        return
    rows = [obj for obj in session.new if isinstance(obj, EventRow)]
    if rows:
        after_commit(session, lambda: hand_over(rows))


class EngineService:
    """`EngineAPI` over a SQLAlchemy async engine (SQLite or PostgreSQL)."""

    def __init__(
        self,
        url: str,
        *,
        result_max_bytes: int = 1_000_000,
        busy_timeout_ms: int = 5000,
        conflict_retry: RetryPolicy | None = None,
        parameters_max_bytes: int = 1_000_000,
        unavailable_timeout: float = 300.0,
        server_id: str | None = None,
        code_bundle_dir: str = "",
        max_bundle_bytes: int = 50_000_000,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        self.url = url
        #: where bundles are kept ("" = in the database) and the largest accepted (`engine.code`)
        self.code_bundle_dir = code_bundle_dir
        self.max_bundle_bytes = max_bundle_bytes
        #: a worker not heard for this long is not live (`read_work_pools`, `read_workers`)
        self.heartbeat_timeout = heartbeat_timeout
        #: who writes through this service: its outbox rows carry it (`engine.server.leases`)
        self.server_id = server_id or new_server_id()
        self.result_max_bytes = result_max_bytes
        self.parameters_max_bytes = parameters_max_bytes
        self._busy_timeout_ms = busy_timeout_ms
        self._conflict_retry = conflict_retry or RetryPolicy()
        self._unavailable_timeout = unavailable_timeout
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_engine: AsyncEngine | None = None
        self._writer: GroupCommit | None = None
        self._commit_listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[OutboxEvents], None]] = []
        self._log_listeners: list[Callable[[Sequence[LogRecord]], None]] = []
        #: flow name → id, of flow rows known to be committed (flows are never deleted)
        self._flow_ids: dict[str, uuid.UUID] = {}

    # --- life cycle -------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        url: str,
        *,
        result_max_bytes: int = 1_000_000,
        busy_timeout_ms: int = 5000,
        conflict_retry: RetryPolicy | None = None,
    ) -> EngineService:
        """Create, connect and migrate a service."""
        service = cls(
            url, result_max_bytes=result_max_bytes, busy_timeout_ms=busy_timeout_ms,
            conflict_retry=conflict_retry,
        )
        await service.start()
        return service

    async def start(self) -> None:
        """Create the database engine and bring the schema to the latest migration."""
        if self._engine is not None:
            return
        engine = create_db_engine(self.url, busy_timeout_ms=self._busy_timeout_ms)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessions = async_sessionmaker(
            engine.execution_options(**{WRITER_OPTION: self.server_id}),
            expire_on_commit=False, sync_session_class=_WriteSession,
            info={_HAND_OVER: self._hand_over_rows},
        )
        self._read_engine = read_only(engine)
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self._writer = GroupCommit(
            self._sessions, on_commit=self._committed, retry=self._conflict_retry,
            outage_timeout=self._unavailable_timeout,
        )
        await self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.stop()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            self._sessions = self._read_sessions = self._read_engine = None
            await engine.dispose()

    async def __aenter__(self) -> EngineService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("EngineService is not started: call `await service.start()`")
        return self._engine

    async def _transact(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, events: bool = True
    ) -> T:
        """`work(session)` in a write transaction (shared with concurrent writes, in a savepoint
        of its own); returns its result once committed, or raises its error (rolled back).
        `events=False`: the work writes no outbox event, so its commit does not wake the relay."""
        if self._writer is None:
            raise RuntimeError("EngineService is not started: call `await service.start()`")
        return await self._writer.run(work, notify=events)

    async def write(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, events: bool = True
    ) -> T:
        """Run `work(session)` in the service's write transaction (group commit) — for the
        server's other components that keep their own tables in the same database (automations).
        Outbox `EventRow`s added by `work` are published like the service's own."""
        return await self._transact(work, events=events)

    @contextlib.asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A read-only snapshot session (never takes SQLite's write lock)."""
        async with self._read() as session:
            yield session

    @property
    def commits(self) -> tuple[int, int]:
        """(write transactions committed, works they carried) by this service so far."""
        writer = self._writer
        return (writer.batches, writer.works) if writer is not None else (0, 0)

    @property
    def unavailable_for(self) -> float | None:
        """Seconds the database has been unavailable to this service's writes (None: it
        serves). The heartbeat monitor judges nobody meanwhile."""
        return self._writer.outage_seconds if self._writer is not None else None

    def _committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every commit that may carry outbox events (the outbox relay
        wakes on it)."""
        self._commit_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[OutboxEvents], None]) -> None:
        """Call `listener(events)` with the outbox rows of every commit of this service, once
        committed (the outbox relay publishes them without reading them back). Rows committed by
        other processes, or by statements that bypass the ORM, are not handed over: they stay in
        the outbox for `unsent_events`."""
        self._event_listeners.append(listener)

    def add_log_listener(self, listener: Callable[[Sequence[LogRecord]], None]) -> None:
        """Call `listener(records)` with the log lines of every `write_logs` (and the last lines
        sent with a final state) of this service, once committed: the HTTP API's live stream
        tells its clients that a run has new lines. Called on the service's loop; it must not
        block. A listener that raises is logged and skipped: the lines are stored either way."""
        self._log_listeners.append(listener)

    def _logs_stored(self, records: Sequence[LogRecord]) -> None:
        for listener in self._log_listeners:
            try:
                listener(records)
            except Exception:  # noqa: BLE001 - the caller's lines are committed: never fail it
                log.exception("log listener failed", lines=len(records))

    def _hand_over_rows(self, rows: list[EventRow]) -> None:
        if self._event_listeners:
            self._hand_over([(repo.event(row), row.routing_key) for row in rows])

    def _hand_over_after_commit(self, session: AsyncSession | Session, events: OutboxEvents) -> None:
        if events and self._event_listeners:
            after_commit(session, lambda: self._hand_over(events))

    def _hand_over(self, events: OutboxEvents) -> None:
        for listener in self._event_listeners:
            listener(events)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        """One read-only snapshot transaction (never takes SQLite's write lock)."""
        if self._read_sessions is None:
            raise RuntimeError("EngineService is not started: call `await service.start()`")
        async with self._read_sessions() as session:
            yield session

    # --- flow runs --------------------------------------------------------------------------
    async def create_flow_run(
        self,
        flow_name: str,
        parameters: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        state: State | None = None,
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        deployment_id: uuid.UUID | None = None,
        work_pool: str | None = None,
        expected_start_time: dt.datetime | None = None,
        caused_by: dict[str, Any] | None = None,
        id: uuid.UUID | None = None,
    ) -> FlowRun:
        """Create a flow run (Pending unless `state` is given); with an `idempotency_key` already
        used, or an `id` already used (a request sent again after its reply was lost), return
        that run unchanged."""
        state = state or Pending()
        _raise_if_aborted(decide(None, state), f"new run of flow {flow_name!r}")
        self._check_parameters(parameters)
        self._check_result(state)

        async def find_deployment(session: AsyncSession) -> DeploymentRow | None:
            if deployment_id is None:
                return None
            deployment = await deployments.lock(session, deployment_id)
            if deployment is None:
                raise ObjectNotFound(f"deployment {deployment_id} not found")
            return deployment

        return await self._create_flow_run(
            flow_name, find_deployment, parameters, deployment_key=deployment_id, name=name,
            state=state, tags=tags,
            idempotency_key=idempotency_key, parent_task_run_id=parent_task_run_id,
            parent_flow_run_id=parent_flow_run_id, work_pool=work_pool,
            expected_start_time=expected_start_time, caused_by=caused_by, run_id=id,
        )

    async def _create_flow_run(
        self,
        flow_name: str | None,
        find_deployment: Callable[[AsyncSession], Awaitable[DeploymentRow | None]],
        parameters: dict[str, Any] | None,
        *,
        deployment_key: str | uuid.UUID | None,
        state: State,
        idempotency_key: str | None,
        name: str | None = None,
        tags: list[str] | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        work_pool: str | None = None,
        expected_start_time: dt.datetime | None = None,
        caused_by: dict[str, Any] | None = None,
        run_id: uuid.UUID | None = None,
    ) -> FlowRun:
        """Create a run of `flow_name` (None: the deployment's flow), of the deployment that
        `find_deployment(session)` locks, if any, in one write transaction. `run_id`: the id the
        caller chose; a run with it already is that request's, sent again (its insert fails on
        the primary key and the run is read back: the first request pays nothing for it)."""
        if idempotency_key is not None:
            existing = await _unless_unavailable(self._flow_run_by_key(idempotency_key))
            if existing is not None:
                return existing

        async def create(session: AsyncSession) -> FlowRun:
            nonlocal state
            fast = await session.run_sync(
                _on_connection, core.create, self._flow_ids, flow_name=flow_name,
                deployment=deployment_key, parameters=parameters, state=state,
                idempotency_key=idempotency_key, name=name, tags=tags,
                parent_task_run_id=parent_task_run_id, parent_flow_run_id=parent_flow_run_id,
                work_pool=work_pool, expected_start_time=expected_start_time, caused_by=caused_by,
                run_id=run_id,
            )
            if fast is not None:
                run, handed = fast
                self._hand_over_after_commit(session, handed)
                return run
            if idempotency_key is not None:
                row = await session.scalar(
                    select(FlowRunRow).where(FlowRunRow.idempotency_key == idempotency_key)
                )
                if row is not None:
                    return repo.flow_run(row)
            deployment = await find_deployment(session)
            run_flow = flow_name or (deployment.flow_name if deployment else "")
            flow_id = await self._ensure_flow(session, run_flow)
            dispatch_now = False
            now = utcnow()
            if deployment is not None:
                # A due run is dispatched with it, or waits for a concurrency slot.
                state, dispatch_now = await deployments.plan_new_run(
                    session, deployment, state, now
                )
            row = FlowRunRow(
                id=run_id or uuid.uuid4(),
                name=name or generate_name(),
                flow_id=flow_id,
                flow_name=run_flow,
                deployment_id=deployment.id if deployment else None,
                deployment_name=f"{deployment.flow_name}/{deployment.name}"
                if deployment
                else None,
                deployment_version=deployment.version if deployment else None,
                work_pool=work_pool or (deployment.work_pool if deployment else None),
                parameters={
                    **(deployment.parameters if deployment else {}),
                    **(parameters or {}),
                },
                tags=list(tags if tags is not None else (deployment.tags if deployment else [])),
                idempotency_key=idempotency_key,
                parent_task_run_id=parent_task_run_id,
                parent_flow_run_id=parent_flow_run_id,
                expected_start_time=expected_start_time
                or (state.details.scheduled_time if state.is_scheduled() else None),
                caused_by=caused_by,
                run_count=0,
                event_seq=0,
                created=now,
                updated=now,
            )
            dependents = self._enter_flow_run_state(row, state)
            if dispatch_now:
                assert deployment is not None
                dependents.append(deployments.dispatch(row, deployment, now))
            session.add(row)
            await session.flush()  # surfaces a duplicate idempotency key here
            session.add_all(dependents)
            return repo.flow_run(row)

        try:
            return await self._transact(create)
        except IntegrityError:
            if idempotency_key is None and run_id is None:
                raise
            existing = None
            if idempotency_key is not None:
                existing = await self._flow_run_by_key(idempotency_key)
            if existing is None and run_id is not None:
                existing = await self._flow_run_by_id(run_id)
            if existing is None:
                raise
            return existing

    async def set_flow_run_state(
        self,
        flow_run_id: uuid.UUID,
        state: State,
        *,
        force: bool = False,
        logs: list[LogRecord] | None = None,
    ) -> OrchestrationResult:
        """Propose `state` for the run; on ACCEPT it becomes the current state, with its history
        row and outbox event, in one transaction. `logs` (the run's last lines, sent with its
        final state) are written in that transaction whatever the answer."""
        self._check_result(state)
        log_rows = [repo.log_row(record) for record in logs or ()]
        answer = await self._transact(
            lambda session: self._propose(session, flow_run_id, state, force=force, logs=log_rows)
        )
        if logs and self._log_listeners:
            self._logs_stored(logs)
        return answer

    async def _propose(
        self,
        session: AsyncSession,
        flow_run_id: uuid.UUID,
        state: State,
        *,
        force: bool = False,
        logs: list[dict[str, Any]] | None = None,
    ) -> OrchestrationResult:
        """`set_flow_run_state`'s work, in the caller's write transaction."""
        fast = await session.run_sync(
            _on_connection, core.propose, flow_run_id, state, force=force, logs=logs
        )
        if fast is not None:
            answer, handed = fast
            self._hand_over_after_commit(session, handed)
            return answer
        # Deployment bookkeeping (slots, retries, redispatch): the ORM path, nothing written yet.
        row = await session.scalar(
            select(FlowRunRow).where(FlowRunRow.id == flow_run_id).with_for_update(key_share=True)
        )
        if row is None:
            raise ObjectNotFound(f"flow run {flow_run_id} not found")
        current = repo.current_state(row)
        decision = decide(current, state, force=force)
        if decision.write:
            row.updated = utcnow()
            held_slot = deployments.holds_slot(row)
            session.add_all(self._enter_flow_run_state(row, state))
            # Deployment runs: crash retries, back to the pool, a freed slot to a waiting run.
            await deployments.on_state_entered(
                session,
                row,
                held_slot=held_slot,
                previous_type=current.type if current is not None else None,
                enter=self._enter_flow_run_state,
                now=row.updated,
            )
        return core.result(decision, repo.flow_run(row))

    async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun:
        if self._read_engine is None:
            raise RuntimeError("EngineService is not started: call `await service.start()`")
        async with self._read_engine.connect() as conn:
            return await conn.run_sync(core.read, flow_run_id)

    async def read_flow_runs(self, flt: FlowRunFilter | None = None) -> list[FlowRun]:
        """Runs matching `flt`, newest first."""
        flt = flt or FlowRunFilter()
        query = select(FlowRunRow)
        if flt.ids is not None:
            query = query.where(FlowRunRow.id.in_(flt.ids))
        if flt.flow_name is not None:
            query = query.where(FlowRunRow.flow_name == flt.flow_name)
        if flt.deployment_name is not None:
            query = query.where(FlowRunRow.deployment_name == flt.deployment_name)
        if flt.state_names is not None:
            query = query.where(FlowRunRow.state_name.in_(flt.state_names))
        if flt.state_types is not None:
            query = query.where(FlowRunRow.state_type.in_([t.value for t in flt.state_types]))
        if flt.parent_flow_run_id is not None:
            query = query.where(FlowRunRow.parent_flow_run_id == flt.parent_flow_run_id)
        query = query.order_by(FlowRunRow.created.desc(), FlowRunRow.id.desc())
        query = query.limit(flt.limit).offset(flt.offset)
        async with self._read() as session:
            return [repo.flow_run(row) for row in await session.scalars(query)]

    async def read_children(self, flow_run_id: uuid.UUID) -> list[FlowRun]:
        """Runs whose parent flow run is `flow_run_id`, oldest first."""
        query = (
            select(FlowRunRow)
            .where(FlowRunRow.parent_flow_run_id == flow_run_id)
            .order_by(FlowRunRow.created, FlowRunRow.id)
        )
        async with self._read() as session:
            return [repo.flow_run(row) for row in await session.scalars(query)]

    async def read_flow_run_states(self, flow_run_id: uuid.UUID) -> list[State]:
        """The run's state history, oldest first."""
        query = (
            select(FlowRunStateRow)
            .where(FlowRunStateRow.flow_run_id == flow_run_id)
            .order_by(FlowRunStateRow.id)
        )
        async with self._read() as session:
            return [repo.history_state(row) for row in await session.scalars(query)]

    # --- code bundles (engine/code) ---------------------------------------------------------
    async def has_code_bundle(self, hash: str) -> bool:
        """Whether bundle `hash` is stored (a deploy uploads only what is missing)."""
        async with self._read() as session:
            return await code_store.exists(session, hash)

    async def store_code_bundle(self, hash: str, data: str) -> int:
        """Store a bundle (base64 `data`) under its hash, once verified; its size in bytes."""
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise CodeError(f"bundle {hash}: the data is not base64 ({exc})") from None
        return await self._transact(
            lambda session: code_store.store(
                session, hash, raw, directory=self.code_bundle_dir, max_bytes=self.max_bundle_bytes
            ),
            events=False,
        )

    async def read_code_bundle(self, hash: str, offset: int = 0, limit: int = 512 * 1024) -> CodeChunk:
        """Up to `limit` bytes of bundle `hash` from `offset` (a worker fetches it in chunks)."""
        if offset < 0 or not 0 < limit <= 16 * 1024 * 1024:
            raise CodeError(f"read_code_bundle: offset {offset} / limit {limit} out of range")
        async with self._read() as session:
            size, chunk = await code_store.read_chunk(
                session, hash, offset, limit, directory=self.code_bundle_dir
            )
        return CodeChunk(hash=hash, size=size, offset=offset,
                         data=base64.b64encode(chunk).decode("ascii"))

    # --- work pools and workers (engine/db/pools.py) ------------------------------------------
    async def read_work_pools(self) -> list[WorkPool]:
        """Every known pool: its limit, workers and open runs."""
        async with self._read() as session:
            return await pools.read_pools(session, utcnow(), self.heartbeat_timeout)

    async def read_work_pool(self, name: str) -> WorkPool:
        """One pool (a pool nobody has used yet reads as empty)."""
        async with self._read() as session:
            (pool,) = await pools.read_pools(session, utcnow(), self.heartbeat_timeout, [name])
        return pool

    async def set_work_pool_concurrency(self, name: str, limit: int | None) -> WorkPool:
        """Set (None: clear) how many runs of pool `name` may hold a slot at once (dispatched,
        Pending, Running); over it, due runs wait ``AwaitingConcurrencySlot`` without polling.
        A raised or cleared limit hands the free slots to the oldest waiting runs at once."""
        if limit is not None and limit < 1:
            raise ConfigError(f"work pool {name!r}: a concurrency limit is at least 1, not {limit}")
        check_pool_name(name)

        async def change(session: AsyncSession) -> None:
            now = utcnow()
            await pools.set_limit(session, name, limit, now)
            await deployments.release_pool_slots(session, name, enter=self._enter_flow_run_state, now=now)

        await self._transact(change)
        return await self.read_work_pool(name)

    async def read_workers(self) -> list[WorkerInfo]:
        """Workers with a recorded heartbeat (live or not yet judged lost)."""
        async with self._read() as session:
            return await pools.read_workers(session, utcnow(), self.heartbeat_timeout)

    # --- deployments (engine/deployments.py) ------------------------------------------------
    async def register_deployment(self, spec: DeploymentSpec) -> Deployment:
        """Create the deployment, or update it as its next version."""
        (registered,) = await self.register_deployments([spec])
        return registered

    async def register_deployments(self, specs: list[DeploymentSpec]) -> list[Deployment]:
        """Register several deployments in one transaction: all or none."""

        async def register(session: AsyncSession) -> list[Deployment]:
            registered = []
            for spec in specs:
                flow_id = await self._ensure_flow(session, spec.flow_name)
                registered.append(
                    await deployments.register(
                        session,
                        spec,
                        flow_id=flow_id,
                        enter=self._enter_flow_run_state,
                        now=utcnow(),
                    )
                )
            return registered

        return await self._transact(register)

    async def read_deployment(self, name: str) -> Deployment:
        """The deployment ``FLOW/DEPLOYMENT``."""
        async with self._read() as session:
            return deployments.deployment(await deployments.find(session, name))

    async def read_deployments(self) -> list[Deployment]:
        async with self._read() as session:
            return await deployments.read_all(session)

    async def set_deployment_paused(self, name: str, paused: bool) -> Deployment:
        return await self._transact(
            lambda session: deployments.set_paused(session, name, paused, now=utcnow())
        )

    async def create_deployment_run(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        scheduled_time: dt.datetime | None = None,
        flow_run_name: str | None = None,
        tags: list[str] | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        caused_by: dict[str, Any] | None = None,
        id: uuid.UUID | None = None,
    ) -> FlowRun:
        """A run of the latest version of deployment ``FLOW/DEPLOYMENT``, Scheduled at
        `scheduled_time` (default now) and dispatched to its pool when due; the same
        `idempotency_key` (or `id`: see `create_flow_run`) always returns the same run."""
        state = Scheduled(scheduled_time=scheduled_time or utcnow())
        self._check_parameters(parameters)

        async def find_deployment(session: AsyncSession) -> DeploymentRow:
            return await deployments.find(session, name, lock=True)

        return await self._create_flow_run(
            None, find_deployment, parameters, deployment_key=name, name=flow_run_name,
            state=state, tags=tags,
            idempotency_key=idempotency_key, parent_task_run_id=parent_task_run_id,
            parent_flow_run_id=parent_flow_run_id, caused_by=caused_by, run_id=id,
        )

    async def dispatch_run(self, flow_run_id: uuid.UUID) -> bool:
        """Dispatch an undispatched Scheduled/Late/AwaitingRetry deployment run now (the server's
        timer calls it when the run is due); over the concurrency limit it goes
        AwaitingConcurrencySlot. Idempotent: True only for the call that dispatched it."""
        return await self._transact(
            lambda session: deployments.dispatch_run(
                session, flow_run_id, enter=self._enter_flow_run_state, now=utcnow()
            )
        )

    async def dispatch_due(
        self, run_ids: Sequence[uuid.UUID], *, at: Mapping[uuid.UUID, dt.datetime] | None = None
    ) -> DueDispatch:
        """Dispatch the undispatched Scheduled/Late/AwaitingRetry deployment runs among `run_ids`
        (the server's timer calls it with the runs now due) in one transaction: runs of
        deployments with a concurrency limit one by one as `dispatch_run` does, the others in
        bulk (`engine.deployments.bulk`); `at` stages runs ahead of their time (handed over at
        it). Idempotent; its `busy` runs were locked by another transaction and were not looked
        at."""

        async def dispatch(session: AsyncSession) -> DueDispatch:
            done = await dispatch_due(
                session, run_ids, utcnow(), enter=self._enter_flow_run_state, at=at
            )
            self._hand_over_after_commit(session, done.events)  # Core rows: not seen by the ORM
            return done

        return await self._transact(dispatch)

    async def due_runs(self) -> list[tuple[uuid.UUID, dt.datetime]]:
        """Undispatched deployment runs waiting for their start time, with that time."""
        async with self._read() as session:
            return await deployments.due_runs(session)

    async def forget_dispatches(
        self, run_ids: Sequence[uuid.UUID] | None = None, *, before: dt.datetime | None = None
    ) -> int:
        """Mark dispatched-but-unclaimed deployment runs (all, or `run_ids`, dispatched before
        `before`) undispatched again, for the timer to dispatch anew: the embedded in-memory
        broker loses its queues with the process; a dispatch message can be lost
        (`Server.redispatch_lost`). Claims are compare-and-set: a run is never claimed twice."""
        ids = list(run_ids) if run_ids is not None else None
        return await self._transact(
            lambda session: deployments.forget_dispatches(session, ids, before)
        )

    async def waiting_for_claim(self, before: dt.datetime) -> list[tuple[uuid.UUID, str]]:
        """Deployment runs dispatched before `before` and still unclaimed, with their pool."""
        async with self._read() as session:
            return await deployments.waiting_for_claim(session, before)

    async def runs_held_by(self, worker_id: str) -> list[FlowRun]:
        """Pending/Running runs claimed by `worker_id` (to crash them when it is lost)."""
        async with self._read() as session:
            return await deployments.runs_held_by(session, worker_id)

    # --- workers (engine/db/workers.py, engine/server/heartbeats.py) ---------------------------
    async def record_heartbeat(
        self,
        worker_id: str,
        pool: str,
        flow_run_ids: list[str] | None = None,
        *,
        at: dt.datetime | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Record that `worker_id`, holding `flow_run_ids`, was heard now, or `at` (shared by
        every server on the database), with what it says about itself (`info`)."""
        now = at or utcnow()
        ids = [str(i) for i in flow_run_ids or ()]
        await self._transact(
            lambda session: workers.record(session, worker_id, pool, now, ids, info), events=False
        )

    async def superseded_attempts(self, attempts: Mapping[uuid.UUID, int]) -> list[uuid.UUID]:
        """Which of these `run id -> attempt` pairs (a worker's running attempts) are over: the
        engine ended the attempt or a newer claim opened another. The worker stops them."""
        async with self._read() as session:
            return await workers.superseded(session, dict(attempts))

    async def release_orphaned_claims(self, claimed_before: dt.datetime) -> list[FlowRun]:
        """The deployment runs Pending or Running since before `claimed_before` that their live
        worker does not hold (see `engine.db.workers.orphaned_claims`): a Pending one goes back
        to Scheduled (dispatched again, no retry used), a Running one is proposed Crashed (the
        deployment's crash retries apply). Returns them as they now are."""

        async def release(session: AsyncSession) -> list[FlowRun]:
            released = []
            for run_id, worker_id in await workers.orphaned_claims(session, claimed_before):
                _, current = await _locked_run(session, run_id)
                if current is None or current.type not in (StateType.PENDING, StateType.RUNNING):
                    continue
                if current.details.worker_id != worker_id or current.timestamp >= claimed_before:
                    continue  # claimed again since the query
                state: State
                if current.type is StateType.PENDING:
                    state = Scheduled(
                        message=f"worker {worker_id!r} does not hold this run it claimed (its "
                        "heartbeats do not list it): scheduled again (no retry used)",
                        lost_worker_id=worker_id,
                    )
                    answer = await self._propose(session, run_id, state, force=True)
                else:
                    state = Crashed(
                        message=f"worker {worker_id!r} is alive but no longer holds this run (its "
                        "heartbeats do not list it): its run is presumed lost",
                        lost_worker_id=worker_id,
                    )
                    answer = await self._propose(session, run_id, state)
                await session.flush()
                session.expunge_all()
                if isinstance(answer.run, FlowRun):
                    released.append(answer.run)
            return released

        return await self._transact(release)

    async def silent_workers(self, before: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """Workers no server has heard since `before`, with their last heartbeat."""
        async with self._read() as session:
            return await workers.silent(session, before)

    async def adopt_held_workers(self) -> int:
        """Give workers holding runs but never heard (by this database) a heartbeat now."""
        now = utcnow()
        return await self._transact(lambda session: workers.adopt_holders(session, now), events=False)

    async def reap_lost_worker(
        self, worker_id: str, before: dt.datetime, reason: str, *, silent_for_seconds: float = 0.0
    ) -> list[FlowRun] | None:
        """If no server heard `worker_id` since `before`, in one transaction: forget it, put back
        to Scheduled (dispatched again, no retry used) its deployment runs still Pending — claimed
        but never started — and propose Crashed for its other runs (the deployment's crash
        retries apply), with `reason` in their messages, and emit ``worker.lost``. None if the
        worker was heard meanwhile (or another server reaped it); else the runs it held, as they
        now are."""

        async def reap(session: AsyncSession) -> list[FlowRun] | None:
            if not await workers.take_if_silent(session, worker_id, before):
                return None
            handled = []
            for run_id in await workers.held_runs(session, worker_id):
                row, current = await _locked_run(session, run_id)
                if row is None or current is None or current.details.worker_id != worker_id:
                    continue  # changed since the query
                if current.type is StateType.PENDING and row.deployment_id is not None:
                    # Forced (Pending -> Scheduled is no worker's transition), under the row lock.
                    state = Scheduled(
                        message=f"{reason}; it never started: scheduled again (no retry used)",
                        lost_worker_id=worker_id,
                    )
                    answer = await self._propose(session, run_id, state, force=True)
                elif current.type in (StateType.PENDING, StateType.RUNNING):
                    answer = await self._propose(
                        session, run_id, Crashed(message=f"{reason}; its run is presumed lost")
                    )
                else:
                    continue
                await session.flush()
                session.expunge_all()  # the Core path may have changed rows the ORM holds
                if isinstance(answer.run, FlowRun):
                    handled.append(answer.run)
            if handled:
                event = Event(
                    event="worker.lost", resource={"id": f"worker/{worker_id}"},
                    payload={"runs": [str(r.id) for r in handled], "reason": reason,
                             "silent_for_seconds": silent_for_seconds},
                )
                session.add(EventRow(**repo.event_values(event)))
            return handled

        return await self._transact(reap)

    # --- task runs --------------------------------------------------------------------------
    async def create_task_run(
        self,
        flow_run_id: uuid.UUID,
        name: str,
        task_key: str,
        *,
        dynamic_key: str = "0",
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        state: State | None = None,
        id: uuid.UUID | None = None,
    ) -> TaskRun:
        """Create a task run of `flow_run_id`; with an `id` that exists, return it unchanged.

        Task parameters are informational (the values stay in the flow's process): values that
        are not JSON are stored as their ``repr``.
        """
        state = state or Pending()
        _raise_if_aborted(decide(None, state), f"new task run {name!r}")
        self._check_result(state)
        if id is not None:
            existing = await _unless_unavailable(self._task_run_by_id(id))
            if existing is not None:
                return existing

        async def create(session: AsyncSession) -> TaskRun:
            if id is not None:
                found = await session.get(TaskRunRow, id)
                if found is not None:
                    return repo.task_run(found)
            flow_row = await session.get(FlowRunRow, flow_run_id)
            if flow_row is None:
                raise ObjectNotFound(f"flow run {flow_run_id} not found")
            now = utcnow()
            row = TaskRunRow(
                id=id or uuid.uuid4(),
                flow_run_id=flow_run_id,
                name=name,
                task_key=task_key,
                dynamic_key=dynamic_key,
                parameters=json.loads(json.dumps(parameters or {}, default=repr)),
                tags=list(tags or []),
                run_count=0,
                event_seq=0,
                created=now,
                updated=now,
            )
            dependents = self._enter_task_run_state(row, state, flow_row)
            session.add(row)
            await session.flush()  # surfaces a duplicate id here
            session.add_all(dependents)
            return repo.task_run(row)

        try:
            return await self._transact(create)
        except IntegrityError:
            if id is None:
                raise
            existing = await self._task_run_by_id(id)
            if existing is None:
                raise
            return existing

    async def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> OrchestrationResult:
        self._check_result(state)

        async def propose(session: AsyncSession) -> OrchestrationResult:
            row = await session.scalar(
                select(TaskRunRow).where(TaskRunRow.id == task_run_id).with_for_update(key_share=True)
            )
            if row is None:
                raise ObjectNotFound(f"task run {task_run_id} not found")
            decision = decide(repo.current_state(row), state, force=force)
            if decision.write:
                flow_row = await session.get(FlowRunRow, row.flow_run_id)
                assert flow_row is not None  # guaranteed by the foreign key
                row.updated = utcnow()
                session.add_all(self._enter_task_run_state(row, state, flow_row))
            return core.result(decision, repo.task_run(row))

        return await self._transact(propose)

    async def read_task_runs(self, flow_run_id: uuid.UUID) -> list[TaskRun]:
        query = (
            select(TaskRunRow)
            .where(TaskRunRow.flow_run_id == flow_run_id)
            .order_by(TaskRunRow.created, TaskRunRow.id)
        )
        async with self._read() as session:
            return [repo.task_run(row) for row in await session.scalars(query)]

    async def read_task_run_states(self, task_run_id: uuid.UUID) -> list[State]:
        query = (
            select(TaskRunStateRow)
            .where(TaskRunStateRow.task_run_id == task_run_id)
            .order_by(TaskRunStateRow.id)
        )
        async with self._read() as session:
            return [repo.history_state(row) for row in await session.scalars(query)]

    # --- logs and events --------------------------------------------------------------------
    async def write_logs(self, logs: list[LogRecord]) -> None:
        """Store log lines. Lines that carry the attempt of a run's execution are stored only
        while that attempt is the run's current one (a superseded attempt's lines are refused,
        as its states are)."""
        if not logs:
            return

        async def insert_logs(session: AsyncSession) -> list[LogRecord]:
            kept = logs
            fenced = {rec.flow_run_id: rec.attempt for rec in logs
                      if rec.attempt is not None and rec.flow_run_id is not None}
            if fenced:
                over = set(await workers.superseded(session, fenced))
                kept = [rec for rec in logs if rec.attempt is None or rec.flow_run_id not in over]
                if over:
                    log.warning("refused log lines of a superseded attempt",
                                flow_run_ids=[str(r) for r in over], lines=len(logs) - len(kept))
            if kept:
                await session.execute(insert(LogRow), [repo.log_row(rec) for rec in kept])
            return kept

        stored = await self._transact(insert_logs, events=False)
        if stored and self._log_listeners:
            self._logs_stored(stored)

    async def read_logs(self, flow_run_id: uuid.UUID, limit: int = 1000) -> list[LogRecord]:
        """The run's logs (its tasks' included), oldest first."""
        query = (
            select(LogRow)
            .where(LogRow.flow_run_id == flow_run_id)
            .order_by(LogRow.timestamp)
            .limit(limit)
        )
        async with self._read() as session:
            return [repo.log_record(row) for row in await session.scalars(query)]

    async def emit_event(self, event: Event) -> None:
        """Put a custom event in the outbox. Emitting the same event id twice stores it once."""
        values = repo.event_values(event)
        stmt = repo.insert_ignoring_conflicts(self.engine.dialect.name, EventRow, ["id"])
        stmt = stmt.values(**values)
        handed = [(event, str(values["routing_key"]))]

        async def insert_event(session: AsyncSession) -> None:
            result = await session.execute(stmt)
            if getattr(result, "rowcount", 1) != 0:  # 0: stored before (handed over then)
                after_commit(session, lambda: self._hand_over(handed))

        await self._transact(insert_event)

    async def read_events(self, resource_id: str | None = None, limit: int = 200) -> list[Event]:
        """Events from the outbox, oldest first (optionally only those of one resource, such as
        ``flow-run/<uuid>``)."""
        query = select(EventRow).order_by(EventRow.position).limit(limit)
        if resource_id is not None:
            query = query.where(EventRow.resource_id == resource_id)
        async with self._read() as session:
            return [repo.event(row) for row in await session.scalars(query)]

    async def unsent_events(
        self,
        limit: int | None = 100,
        *,
        until: dt.datetime | None = None,
        after: dt.datetime | None = None,
        writer: str | None = None,
    ) -> list[tuple[Event, str]]:
        """Committed events not yet marked sent, in outbox order, with their routing keys.
        `until`: without the work dispatches that occur after it; `after`: only the work
        dispatches that occur after it (staged ahead of their time: `engine.server.relay`);
        `writer`: only those of that server (its own and those it adopted)."""
        query = select(EventRow).where(EventRow.sent_at.is_(None)).order_by(EventRow.position)
        if writer is not None:
            query = query.where(EventRow.writer == writer)
        dispatch = EventRow.routing_key.startswith("dispatch.")  # engine.server.relay.DISPATCH_PREFIX
        if until is not None:
            query = query.where(or_(EventRow.occurred <= until, ~dispatch))
        if after is not None:
            query = query.where(EventRow.occurred > after, dispatch)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as session:
            return [(repo.event(row), row.routing_key) for row in await session.scalars(query)]

    async def mark_sent(self, event_ids: Sequence[uuid.UUID]) -> None:
        """Record that the broker confirmed these events."""
        if not event_ids:
            return
        stmt = (  # Core: no session objects to synchronise
            update(core_runs.EVENTS)
            .where(core_runs.EVENTS.c.id.in_(list(event_ids)), core_runs.EVENTS.c.sent_at.is_(None))
            .values(sent_at=utcnow())
        )

        async def mark(session: AsyncSession) -> None:
            await session.execute(stmt)

        await self._transact(mark, events=False)

    # --- internals --------------------------------------------------------------------------
    async def _flow_run_by_key(self, key: str) -> FlowRun | None:
        async with self._read() as session:
            row = await session.scalar(select(FlowRunRow).where(FlowRunRow.idempotency_key == key))
            return repo.flow_run(row) if row is not None else None

    async def _flow_run_by_id(self, run_id: uuid.UUID) -> FlowRun | None:
        async with self._read() as session:
            row = await session.get(FlowRunRow, run_id)
            return repo.flow_run(row) if row is not None else None

    async def _task_run_by_id(self, task_run_id: uuid.UUID) -> TaskRun | None:
        async with self._read() as session:
            row = await session.get(TaskRunRow, task_run_id)
            return repo.task_run(row) if row is not None else None

    async def _ensure_flow(self, session: AsyncSession, flow_name: str) -> uuid.UUID:
        """The id of flow `flow_name`, created if new (race-safe: ON CONFLICT DO NOTHING).
        Remembered once committed: flows are never deleted."""
        flow_id = self._flow_ids.get(flow_name)
        if flow_id is not None:
            return flow_id
        stmt = repo.insert_ignoring_conflicts(self.engine.dialect.name, FlowRow, ["name"])
        await session.execute(stmt.values(id=uuid.uuid4(), name=flow_name, created=utcnow()))
        flow_id = await session.scalar(select(FlowRow.id).where(FlowRow.name == flow_name))
        assert flow_id is not None
        after_commit(session, lambda: self._flow_ids.update({flow_name: flow_id}))
        return flow_id

    def _enter_flow_run_state(self, row: FlowRunRow, state: State) -> list[Base]:
        """Make `state` current on `row`; returns the history and outbox rows to insert (after
        `row` itself, which they reference)."""
        history, _, values, _ = core.enter(row, state)
        return [FlowRunStateRow(**history), EventRow(**values)]

    def _enter_task_run_state(
        self, row: TaskRunRow, state: State, flow_row: FlowRunRow
    ) -> list[Base]:
        stored = core.stored_state(state, flow_run_id=row.flow_run_id, task_run_id=row.id)
        repo.enter_state(row, stored)
        if stored.details.child_flow_run_id is not None:
            row.child_flow_run_id = stored.details.child_flow_run_id
        event = task_run_event(
            repo.task_run(row),
            stored,
            flow_name=flow_row.flow_name,
            flow_run_name=flow_row.name,
            seq=row.event_seq + 1,
            follows=row.last_event_id,
        )
        row.event_seq += 1
        row.last_event_id = event.id
        return [
            TaskRunStateRow(**core.history_values(stored, task_run_id=row.id)),
            EventRow(**repo.event_values(event)),
        ]

    def _check_result(self, state: State) -> None:
        if state.data is None:
            return
        size = _check_json(state.data, ResultNotSerializable, f"{state.name} state data")
        if size > self.result_max_bytes:
            raise ResultTooLarge(
                f"result of {size} bytes is over the limit of {self.result_max_bytes} bytes "
                "(raise results.max_bytes, or return a reference such as a file path)"
            )

    def _check_parameters(self, parameters: dict[str, Any] | None) -> None:
        size = _check_json(parameters or {}, ParameterValidationError, "flow run parameters")
        if size > self.parameters_max_bytes:
            raise ParameterValidationError(
                f"flow run parameters are {size:,} bytes as JSON, over the limit of "
                f"{self.parameters_max_bytes:,} bytes (parameters.max_bytes): pass a reference "
                "(a file path, a URL, an id) instead of the data"
            )


async def _unless_unavailable(read: Awaitable[T | None]) -> T | None:
    """A read that only spares a write some work (the write checks again in its transaction):
    None when the database is unavailable, so the write waits the outage out instead of the
    caller failing at once."""
    try:
        return await read
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        return None


def _on_connection(session: Session, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(connection, ...)` on the session's connection (in its transaction)."""
    return fn(session.connection(), *args, **kwargs)


def _check_json(value: Any, error: type[Exception], what: str) -> int:
    """Size in bytes of `value` as JSON; `error` if it is not JSON-serialisable."""
    try:
        return len(json.dumps(value).encode())
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be JSON-serialisable: {exc}") from exc


def _raise_if_aborted(decision: Decision, what: str) -> None:
    if decision.status is Status.ABORT:
        raise InvalidTransition(f"{what}: {decision.reason}")


async def _locked_run(session: AsyncSession, run_id: uuid.UUID) -> tuple[FlowRunRow | None, State | None]:
    """The run's row, locked and read afresh (another server may have changed it since a query
    found it), and its current state."""
    row = await session.scalar(
        select(FlowRunRow)
        .where(FlowRunRow.id == run_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return row, repo.current_state(row) if row is not None else None


__all__ = ["EngineService", "OutboxEvents"]

