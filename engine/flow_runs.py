"""Creating flow runs and changing their states on SQLAlchemy Core: the engine service's hot path.

`EngineService` runs these synchronous functions on the writer's connection, inside its write
transaction (`AsyncSession.run_sync`: one hop into SQLAlchemy's greenlet for the whole change
instead of one per statement). They cover what every run goes through: creating a run (of a
deployment without a concurrency limit, or of no deployment), and a state change that needs no
deployment bookkeeping. For the rest — a deployment with a concurrency limit (slots to count or
hand over), a Crashed deployment run (retries), a deployment run back to Scheduled from a claimed
state (dispatched again), a flow seen for the first time — they return
None before writing anything, and the service takes its ORM path (`engine.deployments`), in the
same transaction.

Each returns its result and the outbox events it inserted, as `(event, routing key)` pairs, for
the service to hand to the relay once committed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection

from engine.db import repository as repo
from engine.db import runs
from engine.deployments.slots import DISPATCHABLE, dispatch_values, holds_slot, requeued
from engine.deployments.store import split_name
from engine.errors import ObjectNotFound
from engine.events import flow_run_event
from engine.orchestration import Decision, attempt_for, decide
from engine.runtime.names import generate_name
from engine.schemas import Event, FlowRun, OrchestrationResult, TaskRun
from engine.states import State, StateType, utcnow

#: `(event, routing key)` of the outbox rows a change inserted
Handed = list[tuple[Event, str]]


def stored_state(state: State, **links: uuid.UUID) -> State:
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


def history_values(state: State, **link: uuid.UUID) -> dict[str, Any]:
    """Column values of the history row of `state`."""
    return {
        "type": state.type.value,
        "name": state.name,
        "message": state.message,
        "timestamp": state.timestamp,
        "details": repo.details_json(state.details),
        "data": state.data,
        **link,
    }


def enter(run: Any, state: State) -> tuple[dict[str, Any], Event, dict[str, Any], FlowRun]:
    """Make `state` current on `run` (an ORM row or a `RunRecord`), chaining its event after the
    run's previous one: the history row's values, the event, its outbox row's values, and the
    run as it now is."""
    links = {"flow_run_id": run.id}
    if run.parent_task_run_id is not None:  # a subflow: its states say so (Prefect's state_details)
        links["parent_task_run_id"] = run.parent_task_run_id
    stored = stored_state(state, **links)
    stored.details.attempt, run.attempts = attempt_for(
        repo.current_state(run), stored, run.attempts or 0
    )
    repo.enter_state(run, stored)
    flow_run = repo.flow_run(run)
    event = flow_run_event(flow_run, stored, seq=run.event_seq + 1, follows=run.last_event_id)
    run.event_seq += 1
    run.last_event_id = event.id
    return history_values(stored, flow_run_id=run.id), event, repo.event_values(event), flow_run


def result(decision: Decision, run: FlowRun | TaskRun) -> OrchestrationResult:
    return OrchestrationResult(
        status=decision.status.value, state=run.state, reason=decision.reason, run=run
    )


def read(conn: Connection, flow_run_id: uuid.UUID) -> FlowRun:
    run = runs.load(conn, flow_run_id)
    if run is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    return repo.flow_run(run)


def propose(
    conn: Connection,
    flow_run_id: uuid.UUID,
    state: State,
    *,
    force: bool,
    logs: list[dict[str, Any]] | None = None,
) -> tuple[OrchestrationResult, Handed] | None:
    """Judge `state` for the run and, on ACCEPT, write it (compare-and-set on the run's event
    counter); write `logs` (log rows' values) whatever the answer, unless the proposal is of a
    superseded attempt (then nothing is written). None, having written nothing but the logs,
    when the change needs deployment bookkeeping."""
    run = runs.load(conn, flow_run_id, lock=True)
    if run is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    decision = decide(repo.current_state(run), state, force=force)
    if logs and not decision.superseded:
        runs.insert_logs(conn, logs)
    if not decision.write:
        return result(decision, repo.flow_run(run)), []
    seq, held, previous = run.event_seq, holds_slot(run), run.state_type
    run.updated = utcnow()
    history, event, values, flow_run = enter(run, state)
    if run.deployment_id is not None:
        if run.state_type == StateType.CRASHED.value:
            return None  # may be retried
        if requeued(previous, run.state_type, run.state_name):
            return None  # goes back to its pool
        if held and not holds_slot(run) and (
            runs.deployment_limit(conn, run.deployment_id) is not None
            or runs.pool_limit(conn, run.work_pool) is not None
        ):
            return None  # gives a slot back to a waiting run
    runs.save(conn, run, seq)
    runs.insert_states(conn, [history])
    runs.insert_events(conn, [values])
    return result(decision, flow_run), [(event, values["routing_key"])]


def create(
    conn: Connection,
    flow_ids: dict[str, uuid.UUID],
    *,
    flow_name: str | None,
    deployment: str | uuid.UUID | None,
    parameters: dict[str, Any] | None,
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
) -> tuple[FlowRun, Handed] | None:
    """Create a run of `flow_name` (None: the deployment's flow) of `deployment` (its
    ``FLOW/NAME`` or id; None: no deployment). A due deployment run is dispatched with it. None,
    having written nothing, when the ORM path must do it (see the module docstring)."""
    if idempotency_key is not None:
        existing = runs.load_by_key(conn, idempotency_key)
        if existing is not None:
            return repo.flow_run(existing), []
    dep: Any = None
    if isinstance(deployment, str):
        dep = runs.deployment_by_name(conn, *split_name(deployment))
    elif deployment is not None:
        dep = runs.deployment_by_id(conn, deployment)
    if deployment is not None and (
        dep is None or dep.concurrency_limit is not None
        or runs.pool_limit(conn, work_pool or dep.work_pool) is not None
    ):
        return None  # a slot to decide: the ORM path locks what it counts
    run_flow = flow_name or (dep.flow_name if dep is not None else "")
    flow_id = flow_ids.get(run_flow)
    if flow_id is None:
        return None
    now = utcnow()
    run = runs.RunRecord(
        id=run_id or uuid.uuid4(),
        name=name or generate_name(),
        flow_id=flow_id,
        flow_name=run_flow,
        deployment_id=dep.id if dep is not None else None,
        deployment_name=f"{dep.flow_name}/{dep.name}" if dep is not None else None,
        deployment_version=dep.version if dep is not None else None,
        work_pool=work_pool or (dep.work_pool if dep is not None else None),
        parameters={**((dep.parameters or {}) if dep is not None else {}), **(parameters or {})},
        tags=list(tags if tags is not None else ((dep.tags or []) if dep is not None else [])),
        idempotency_key=idempotency_key,
        parent_task_run_id=parent_task_run_id,
        parent_flow_run_id=parent_flow_run_id,
        expected_start_time=expected_start_time
        or (state.details.scheduled_time if state.is_scheduled() else None),
        caused_by=caused_by,
        dispatched_at=None,
        attempts=0,
        run_count=0,
        event_seq=0,
        last_event_id=None,
        state_type=None, state_name=None, state_message=None, state_timestamp=None,
        state_details=None, result=None, start_time=None, end_time=None,
        created=now,
        updated=now,
    )
    history, event, values, flow_run = enter(run, state)
    rows, handed = [values], [(event, values["routing_key"])]
    if (
        dep is not None
        and state.type is StateType.SCHEDULED
        and state.name in DISPATCHABLE
        and (state.details.scheduled_time or now) <= now
    ):
        dispatch_event, dispatch_row = dispatch_values(run, dep, now)
        rows.append(dispatch_row)
        handed.append((dispatch_event, dispatch_row["routing_key"]))
    runs.insert_run(conn, vars(run))  # a duplicate idempotency key raises IntegrityError here
    runs.insert_states(conn, [history])
    runs.insert_events(conn, rows)
    return flow_run, handed


__all__ = ["Handed", "create", "enter", "history_values", "propose", "read", "result", "stored_state"]
