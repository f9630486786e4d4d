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
  several servers on one database stay consistent;
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

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import event as sa_event
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from engine import deployments
from engine.db import repository as repo
from engine.db.engine import create_db_engine, migrate, read_only
from engine.db.group_commit import GroupCommit, after_commit
from engine.db.models import (
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
from engine.errors import (
    InvalidTransition,
    ObjectNotFound,
    ParameterValidationError,
    ResultNotSerializable,
    ResultTooLarge,
)
from engine.events import flow_run_event, task_run_event
from engine.orchestration import Decision, Status, decide
from engine.runtime.names import generate_name
from engine.schemas import (
    Deployment,
    DeploymentSpec,
    Event,
    FlowRun,
    FlowRunFilter,
    LogRecord,
    OrchestrationResult,
    TaskRun,
)
from engine.states import Pending, Scheduled, State, utcnow

T = TypeVar("T")

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
        after_commit(session, lambda: hand_over(rows))  # type: ignore[arg-type]


class EngineService:
    """`EngineAPI` over a SQLAlchemy async engine (SQLite or PostgreSQL)."""

    def __init__(
        self, url: str, *, result_max_bytes: int = 1_000_000, busy_timeout_ms: int = 5000
    ) -> None:
        self.url = url
        self.result_max_bytes = result_max_bytes
        self._busy_timeout_ms = busy_timeout_ms
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_sessions: async_sessionmaker[AsyncSession] | None = None
        self._writer: GroupCommit | None = None
        self._commit_listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[OutboxEvents], None]] = []
        #: flow name → id, of flow rows known to be committed (flows are never deleted)
        self._flow_ids: dict[str, uuid.UUID] = {}

    # --- life cycle -------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, url: str, *, result_max_bytes: int = 1_000_000, busy_timeout_ms: int = 5000
    ) -> EngineService:
        """Create, connect and migrate a service."""
        service = cls(url, result_max_bytes=result_max_bytes, busy_timeout_ms=busy_timeout_ms)
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
            engine, expire_on_commit=False, sync_session_class=_WriteSession,
            info={_HAND_OVER: self._hand_over_rows},
        )
        self._read_sessions = async_sessionmaker(read_only(engine), expire_on_commit=False)
        self._writer = GroupCommit(self._sessions, on_commit=self._committed)
        await self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.stop()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            self._sessions = self._read_sessions = None
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

    def _hand_over_rows(self, rows: list[EventRow]) -> None:
        if self._event_listeners:
            self._hand_over([(repo.event(row), row.routing_key) for row in rows])

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
    ) -> FlowRun:
        """Create a flow run (Pending unless `state` is given); with an `idempotency_key` already
        used, return that run unchanged."""
        state = state or Pending()
        _raise_if_aborted(decide(None, state), f"new run of flow {flow_name!r}")
        _check_json(parameters or {}, ParameterValidationError, "flow run parameters")
        self._check_result(state)

        async def find_deployment(session: AsyncSession) -> DeploymentRow | None:
            if deployment_id is None:
                return None
            deployment = await deployments.lock(session, deployment_id)
            if deployment is None:
                raise ObjectNotFound(f"deployment {deployment_id} not found")
            return deployment

        return await self._create_flow_run(
            flow_name, find_deployment, parameters, name=name, state=state, tags=tags,
            idempotency_key=idempotency_key, parent_task_run_id=parent_task_run_id,
            parent_flow_run_id=parent_flow_run_id, work_pool=work_pool,
            expected_start_time=expected_start_time, caused_by=caused_by,
        )

    async def _create_flow_run(
        self,
        flow_name: str | None,
        find_deployment: Callable[[AsyncSession], Awaitable[DeploymentRow | None]],
        parameters: dict[str, Any] | None,
        *,
        state: State,
        idempotency_key: str | None,
        name: str | None = None,
        tags: list[str] | None = None,
        parent_task_run_id: uuid.UUID | None = None,
        parent_flow_run_id: uuid.UUID | None = None,
        work_pool: str | None = None,
        expected_start_time: dt.datetime | None = None,
        caused_by: dict[str, Any] | None = None,
    ) -> FlowRun:
        """Create a run of `flow_name` (None: the deployment's flow), of the deployment that
        `find_deployment(session)` locks, if any, in one write transaction."""
        if idempotency_key is not None:
            existing = await self._flow_run_by_key(idempotency_key)
            if existing is not None:
                return existing

        async def create(session: AsyncSession) -> FlowRun:
            nonlocal state
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
                id=uuid.uuid4(),
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
            if idempotency_key is None:
                raise
            existing = await self._flow_run_by_key(idempotency_key)
            if existing is None:
                raise
            return existing

    async def set_flow_run_state(
        self, flow_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> OrchestrationResult:
        """Propose `state` for the run; on ACCEPT it becomes the current state, with its history
        row and outbox event, in one transaction."""
        self._check_result(state)

        async def propose(session: AsyncSession) -> OrchestrationResult:
            row = await session.scalar(
                select(FlowRunRow).where(FlowRunRow.id == flow_run_id).with_for_update()
            )
            if row is None:
                raise ObjectNotFound(f"flow run {flow_run_id} not found")
            decision = decide(repo.current_state(row), state, force=force)
            if decision.write:
                row.updated = utcnow()
                held_slot = deployments.holds_slot(row)
                session.add_all(self._enter_flow_run_state(row, state))
                # Deployment runs: crash retries, and a freed slot goes to a waiting run.
                await deployments.on_state_entered(
                    session,
                    row,
                    held_slot=held_slot,
                    enter=self._enter_flow_run_state,
                    now=row.updated,
                )
            return _result(decision, repo.flow_run(row))

        return await self._transact(propose)

    async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun:
        async with self._read() as session:
            row = await session.get(FlowRunRow, flow_run_id)
            if row is None:
                raise ObjectNotFound(f"flow run {flow_run_id} not found")
            return repo.flow_run(row)

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
    ) -> FlowRun:
        """A run of the latest version of deployment ``FLOW/DEPLOYMENT``, Scheduled at
        `scheduled_time` (default now) and dispatched to its pool when due; the same
        `idempotency_key` always returns the same run."""
        state = Scheduled(scheduled_time=scheduled_time or utcnow())
        _check_json(parameters or {}, ParameterValidationError, "flow run parameters")

        async def find_deployment(session: AsyncSession) -> DeploymentRow:
            return await deployments.find(session, name, lock=True)

        return await self._create_flow_run(
            None, find_deployment, parameters, name=flow_run_name, state=state, tags=tags,
            idempotency_key=idempotency_key, parent_task_run_id=parent_task_run_id,
            parent_flow_run_id=parent_flow_run_id, caused_by=caused_by,
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

    async def due_runs(self) -> list[tuple[uuid.UUID, dt.datetime]]:
        """Undispatched deployment runs waiting for their start time, with that time."""
        async with self._read() as session:
            return await deployments.due_runs(session)

    async def forget_dispatches(self) -> int:
        """Mark every dispatched-but-unclaimed deployment run undispatched again (the embedded
        in-memory broker loses its queues with the process: those runs must be dispatched anew)."""
        return await self._transact(deployments.forget_dispatches)

    async def runs_held_by(self, worker_id: str) -> list[FlowRun]:
        """Pending/Running runs claimed by `worker_id` (to crash them when it is lost)."""
        async with self._read() as session:
            return await deployments.runs_held_by(session, worker_id)

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
            existing = await self._task_run_by_id(id)
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
                select(TaskRunRow).where(TaskRunRow.id == task_run_id).with_for_update()
            )
            if row is None:
                raise ObjectNotFound(f"task run {task_run_id} not found")
            decision = decide(repo.current_state(row), state, force=force)
            if decision.write:
                flow_row = await session.get(FlowRunRow, row.flow_run_id)
                assert flow_row is not None  # guaranteed by the foreign key
                row.updated = utcnow()
                session.add_all(self._enter_task_run_state(row, state, flow_row))
            return _result(decision, repo.task_run(row))

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
        if not logs:
            return
        rows = [repo.log_row(rec) for rec in logs]

        async def insert_logs(session: AsyncSession) -> None:
            await session.execute(insert(LogRow), rows)

        await self._transact(insert_logs, events=False)

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

    async def unsent_events(self, limit: int = 100) -> list[tuple[Event, str]]:
        """Committed events not yet marked sent, in outbox order, with their routing keys."""
        query = (
            select(EventRow)
            .where(EventRow.sent_at.is_(None))
            .order_by(EventRow.position)
            .limit(limit)
        )
        async with self._read() as session:
            return [(repo.event(row), row.routing_key) for row in await session.scalars(query)]

    async def mark_sent(self, event_ids: Sequence[uuid.UUID]) -> None:
        """Record that the broker confirmed these events."""
        if not event_ids:
            return
        stmt = (
            update(EventRow)
            .where(EventRow.id.in_(list(event_ids)), EventRow.sent_at.is_(None))
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
        stored = _stored_state(state, flow_run_id=row.id)
        repo.enter_state(row, stored)
        event = flow_run_event(
            repo.flow_run(row), stored, seq=row.event_seq + 1, follows=row.last_event_id
        )
        return [_history_row(FlowRunStateRow, stored, flow_run_id=row.id), _event_row(row, event)]

    def _enter_task_run_state(
        self, row: TaskRunRow, state: State, flow_row: FlowRunRow
    ) -> list[Base]:
        stored = _stored_state(state, flow_run_id=row.flow_run_id, task_run_id=row.id)
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
        return [_history_row(TaskRunStateRow, stored, task_run_id=row.id), _event_row(row, event)]

    def _check_result(self, state: State) -> None:
        if state.data is None:
            return
        size = _check_json(state.data, ResultNotSerializable, f"{state.name} state data")
        if size > self.result_max_bytes:
            raise ResultTooLarge(
                f"result of {size} bytes is over the limit of {self.result_max_bytes} bytes "
                "(raise results.max_bytes, or return a reference such as a file path)"
            )


def _check_json(value: Any, error: type[Exception], what: str) -> int:
    """Size in bytes of `value` as JSON; `error` if it is not JSON-serialisable."""
    try:
        return len(json.dumps(value).encode())
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be JSON-serialisable: {exc}") from exc


def _stored_state(state: State, **links: uuid.UUID) -> State:
    """A copy of `state` as stored: details linked to its run."""
    details = state.details.model_copy(update=links)
    return State(
        type=state.type,
        name=state.name,
        message=state.message,
        timestamp=state.timestamp,
        details=details,
        data=state.data,
    )


def _event_row(row: FlowRunRow | TaskRunRow, event: Event) -> EventRow:
    """The outbox row for `event`, chained after the run's previous event."""
    row.event_seq += 1
    row.last_event_id = event.id
    return EventRow(**repo.event_values(event))


def _history_row(
    cls: type[FlowRunStateRow] | type[TaskRunStateRow], state: State, **link: uuid.UUID
) -> FlowRunStateRow | TaskRunStateRow:
    return cls(
        type=state.type.value,
        name=state.name,
        message=state.message,
        timestamp=state.timestamp,
        details=repo.details_json(state.details),
        data=state.data,
        **link,
    )


def _raise_if_aborted(decision: Decision, what: str) -> None:
    if decision.status is Status.ABORT:
        raise InvalidTransition(f"{what}: {decision.reason}")


def _result(decision: Decision, run: FlowRun | TaskRun) -> OrchestrationResult:
    return OrchestrationResult(
        status=decision.status.value, state=run.state, reason=decision.reason, run=run
    )


__all__ = ["EngineService", "OutboxEvents"]
