"""Flow-run rows over SQLAlchemy Core: the engine service's hot path.

A state change of a flow run is three statements on the writer's connection: read the row (``FOR
UPDATE`` on PostgreSQL), update it compare-and-set on its event counter, insert the history and
outbox rows. No ORM unit of work, identity map or flush: the statements are built once here and
their compiled forms are cached by SQLAlchemy, so a state change costs a fraction of the ORM's
bookkeeping.

The row travels as a `RunRecord`, a plain object with the table's columns as attributes: the
repository helpers written for ORM rows (`repository.enter_state`, `repository.flow_run`,
`deployments.holds_slot`, `deployments.dispatch_values`) read and write it the same way.

    run = load(conn, run_id, lock=True)
    seq = run.event_seq
    ...                                # mutate run (repository.enter_state, ...)
    save(conn, run, seq)               # UPDATE ... WHERE id = ? AND event_seq = ?
    insert_states(conn, [history]); insert_events(conn, [event_values])
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from engine.db.models import (
    DeploymentRow,
    EventRow,
    FlowRunRow,
    FlowRunStateRow,
    LogRow,
    WorkPoolRow,
)
from engine.errors import FlowrelayError

FLOW_RUNS = cast(Table, FlowRunRow.__table__)
FLOW_RUN_STATES = cast(Table, FlowRunStateRow.__table__)
EVENTS = cast(Table, EventRow.__table__)
DEPLOYMENTS = cast(Table, DeploymentRow.__table__)
LOGS = cast(Table, LogRow.__table__)
WORK_POOLS = cast(Table, WorkPoolRow.__table__)

#: Columns a state change (or a dispatch) may change.
MUTABLE = (
    "state_type", "state_name", "state_message", "state_timestamp", "state_details", "result",
    "run_count", "start_time", "end_time", "event_seq", "last_event_id", "updated",
    "dispatched_at", "deployment_version", "work_pool", "attempts",
)

_SELECT_RUN = select(FLOW_RUNS).where(FLOW_RUNS.c.id == bindparam("run_id"))
# FOR NO KEY UPDATE: serialises changes of the run, yet lets others insert rows referencing
# it (history, task runs), which take only FOR KEY SHARE on it.
_LOCK_RUN = _SELECT_RUN.with_for_update(key_share=True)
_RUN_BY_KEY = select(FLOW_RUNS).where(FLOW_RUNS.c.idempotency_key == bindparam("key"))
_UPDATE_RUN = (
    update(FLOW_RUNS)
    .where(FLOW_RUNS.c.id == bindparam("b_id"), FLOW_RUNS.c.event_seq == bindparam("b_seq"))
    .values({name: bindparam(f"b_{name}") for name in MUTABLE})
)
_INSERT_RUN = insert(FLOW_RUNS)
_INSERT_STATE = insert(FLOW_RUN_STATES)
_INSERT_EVENT = insert(EVENTS)
# Deployments are read, not locked, here: the hot path only goes on for a deployment without a
# concurrency limit, which has no slot to decide (the ORM path locks the row when there is one).
# A lock here would order deployment before run in a create but run before deployment in a
# final state: two servers' batches crossing those orders deadlock.
_DEPLOYMENT_BY_NAME = select(DEPLOYMENTS).where(
    DEPLOYMENTS.c.flow_name == bindparam("flow_name"), DEPLOYMENTS.c.name == bindparam("name")
)
_DEPLOYMENT_BY_ID = select(DEPLOYMENTS).where(DEPLOYMENTS.c.id == bindparam("dep_id"))
_DEPLOYMENT_LIMIT = select(DEPLOYMENTS.c.concurrency_limit).where(
    DEPLOYMENTS.c.id == bindparam("dep_id")
)
_POOL_LIMIT = select(WORK_POOLS.c.concurrency_limit).where(WORK_POOLS.c.name == bindparam("pool"))


class ConcurrentUpdate(FlowrelayError):
    """The run row changed between reading and writing it (the compare-and-set failed)."""


class RunRecord(SimpleNamespace):
    """A ``flow_runs`` row as attributes (see the module docstring)."""

    id: uuid.UUID
    event_seq: int


def record(mapping: Mapping[Any, Any]) -> RunRecord:
    return RunRecord(**mapping)


def load(conn: Connection, run_id: uuid.UUID, *, lock: bool = False) -> RunRecord | None:
    """The run's row (locked ``FOR UPDATE`` on PostgreSQL with `lock`), or None."""
    row = conn.execute(_LOCK_RUN if lock else _SELECT_RUN, {"run_id": run_id}).mappings().first()
    return record(row) if row is not None else None


def load_by_key(conn: Connection, key: str) -> RunRecord | None:
    row = conn.execute(_RUN_BY_KEY, {"key": key}).mappings().first()
    return record(row) if row is not None else None


def save(conn: Connection, run: RunRecord, seq_before: int) -> None:
    """Write the run's mutable columns, compare-and-set on the event counter read with it."""
    params = {f"b_{name}": getattr(run, name) for name in MUTABLE}
    params["b_id"], params["b_seq"] = run.id, seq_before
    result = conn.execute(_UPDATE_RUN, params)
    if result.rowcount != 1:
        raise ConcurrentUpdate(f"flow run {run.id} changed while its state was being written")


def insert_run(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(_INSERT_RUN, dict(values))


def insert_states(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INSERT_STATE, rows if len(rows) > 1 else rows[0])


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Outbox rows, in this order (their `position` is the publishing order)."""
    for row in rows:  # one by one: an executemany may not keep the order of the positions
        conn.execute(_INSERT_EVENT, row)


def insert_logs(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert log rows; a row whose id is already stored is skipped (a final state re-sent after
    its reply was lost carries the same logs again)."""
    if rows:
        conn.execute(_insert_log_ignoring_duplicates(conn.dialect.name), rows)


@functools.cache
def _insert_log_ignoring_duplicates(dialect: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(LOGS).on_conflict_do_nothing(index_elements=["id"])


def deployment_by_name(conn: Connection, flow_name: str, name: str) -> Any:
    """The deployment's row (attribute access), unlocked; None if unknown."""
    return conn.execute(_DEPLOYMENT_BY_NAME, {"flow_name": flow_name, "name": name}).first()


def deployment_by_id(conn: Connection, deployment_id: uuid.UUID) -> Any:
    return conn.execute(_DEPLOYMENT_BY_ID, {"dep_id": deployment_id}).first()


def deployment_limit(conn: Connection, deployment_id: uuid.UUID) -> int | None:
    """The deployment's concurrency limit (None: none, or no such deployment), unlocked."""
    limit: int | None = conn.execute(_DEPLOYMENT_LIMIT, {"dep_id": deployment_id}).scalar()
    return limit


def pool_limit(conn: Connection, pool: str | None) -> int | None:
    """The work pool's concurrency limit (None: none), unlocked."""
    if not pool:
        return None
    limit: int | None = conn.execute(_POOL_LIMIT, {"pool": pool}).scalar()
    return limit


__all__ = [
    "ConcurrentUpdate", "RunRecord", "deployment_by_id", "deployment_by_name", "deployment_limit", "pool_limit",
    "insert_events", "insert_logs", "insert_run", "insert_states", "load", "load_by_key", "record",
    "save",
]
