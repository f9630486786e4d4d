"""The automations' tables: definitions, durable trigger state, firings (engine/db/models.py).

Plain functions over an `AsyncSession`; the automations service runs the writes inside the engine
service's write transaction (`EngineService.write`), so a firing, its trigger state and its
`automation.triggered` outbox event commit together.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Iterable, Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from automations.errors import AutomationNotFound
from automations.models import Automation
from engine.db import repository as repo
from engine.db.models import AutomationFiringRow, AutomationRow, AutomationStateRow, EventRow
from engine.schemas import Event
from engine.states import utcnow

__all__ = [
    "COUNTERS",
    "apply_state",
    "bump_counters",
    "delete_automation",
    "events_between",
    "finish_firing",
    "insert_firing",
    "load_automations",
    "load_state",
    "pending_firings",
    "read_automation_row",
    "recent_firings",
    "set_enabled",
    "upsert_automations",
]

COUNTERS = ("matched", "fired", "expired", "failed", "errors")


def _definition(automation: Automation) -> dict[str, Any]:
    data: dict[str, Any] = automation.model_dump(mode="json", exclude_defaults=False)
    return data


async def load_automations(session: AsyncSession) -> list[AutomationRow]:
    return list(await session.scalars(select(AutomationRow).order_by(AutomationRow.name)))


async def read_automation_row(session: AsyncSession, name: str) -> AutomationRow:
    row = await session.get(AutomationRow, name)
    if row is None:
        names = [n for n in await session.scalars(select(AutomationRow.name))]
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AutomationNotFound(f"automation {name!r} not found{hint}")
    return row


async def upsert_automations(
    session: AsyncSession, automations: Iterable[tuple[Automation, str]]
) -> list[tuple[AutomationRow, bool]]:
    """Insert or replace each automation; (row, changed) — `changed` when the definition is new
    or different. `enabled` follows the definition."""
    out: list[tuple[AutomationRow, bool]] = []
    now = utcnow()
    for automation, source in automations:
        definition = _definition(automation)
        row = await session.get(AutomationRow, automation.name)
        if row is None:
            row = AutomationRow(
                name=automation.name, definition=definition, source=source,
                enabled=automation.enabled, version=1, counters={}, created=now, updated=now,
            )
            session.add(row)
            out.append((row, True))
            continue
        changed = row.definition != definition
        if changed:  # (the evaluator decides whether its trigger state must be reset)
            row.definition = definition
            row.version += 1
            row.enabled = automation.enabled
            row.updated = now
        row.source = source
        out.append((row, changed))
    await session.flush()
    return out


async def set_enabled(session: AsyncSession, name: str, enabled: bool) -> AutomationRow:
    row = await read_automation_row(session, name)
    row.enabled = enabled
    row.updated = utcnow()
    return row


async def delete_automation(session: AsyncSession, name: str) -> None:
    await read_automation_row(session, name)
    await session.execute(delete(AutomationStateRow).where(AutomationStateRow.automation == name))
    await session.execute(delete(AutomationRow).where(AutomationRow.name == name))


async def load_state(
    session: AsyncSession, names: Collection[str] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored trigger state rows (only those of automations `names`, if given)."""
    query = select(AutomationStateRow)
    if names is not None:
        query = query.where(AutomationStateRow.automation.in_(list(names)))
    rows = await session.scalars(query)
    return {(row.automation, row.key): row.state for row in rows}


async def apply_state(
    session: AsyncSession, changes: Mapping[tuple[str, str], dict[str, Any] | None]
) -> None:
    """Write the evaluator's state changes: a dict replaces the row, None deletes it. A row of
    an automation deleted meanwhile is dropped. At most two statements (upserts, deletes) and no
    reads: this runs in the write transaction of every firing, on the path from an event to the
    run it launches."""
    now = utcnow()
    upserts = [
        {"automation": name, "key": key, "state": state, "updated": now}
        for (name, key), state in changes.items() if state is not None
    ]
    deletes = [{"automation": name, "key": key} for (name, key), state in changes.items() if state is None]
    statements = _statements(session.get_bind().dialect.name)
    if upserts:
        await session.execute(statements.upsert_state, upserts)
    if deletes:
        await session.execute(statements.delete_state, deletes)


class _Statements:
    """Core statements of the hot path, built once per dialect (building one costs more than
    running it), run with parameters."""

    def __init__(self, dialect: str) -> None:
        state = cast(Table, AutomationStateRow.__table__)
        automations = cast(Table, AutomationRow.__table__)
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # INSERT ... SELECT ... WHERE the automation exists ON CONFLICT DO UPDATE (SQLite needs
        # the WHERE to parse an upsert from a SELECT).
        row = select(
            bindparam("automation", type_=state.c.automation.type), bindparam("key", type_=state.c.key.type),
            bindparam("state", type_=state.c.state.type), bindparam("updated", type_=state.c.updated.type),
        ).where(exists().where(automations.c.name == bindparam("automation")))
        upsert = insert(state).from_select(["automation", "key", "state", "updated"], row)
        self.upsert_state = upsert.on_conflict_do_update(
            index_elements=["automation", "key"],
            set_={"state": upsert.excluded.state, "updated": upsert.excluded.updated},
        )
        self.delete_state = delete(state).where(
            state.c.automation == bindparam("automation"), state.c.key == bindparam("key")
        )
        self.read_counters = select(automations.c.name, automations.c.counters).where(
            automations.c.name.in_(bindparam("names", expanding=True))
        )
        self.write_counters = (
            update(automations).where(automations.c.name == bindparam("automation"))
            .values(counters=bindparam("counters"))
        )
        self.insert_firing = insert(cast(Table, AutomationFiringRow.__table__)).on_conflict_do_nothing(index_elements=["id"])


@functools.cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


async def bump_counters(session: AsyncSession, deltas: Mapping[str, Mapping[str, int]]) -> None:
    """Add `deltas` ({automation: {counter: n}}) to the stored counters (of the automations that
    still exist). Reads and writes the counters column only, not the whole definition."""
    wanted = {name: delta for name, delta in deltas.items() if any(delta.values())}
    if not wanted:
        return
    statements = _statements(session.get_bind().dialect.name)
    updates = []
    for name, stored in await session.execute(statements.read_counters, {"names": list(wanted)}):
        counters = dict(stored or {})
        for key, n in wanted[name].items():
            if n:
                counters[key] = int(counters.get(key, 0)) + n
        updates.append({"automation": name, "counters": counters})
    if updates:
        await session.execute(statements.write_counters, updates)


async def insert_firing(
    session: AsyncSession,
    *,
    firing_id: str,
    automation: str,
    kind: str,
    at: dt.datetime,
    bucket: str,
    correlation: str | None,
    event_ids: list[str],
    context: dict[str, Any],
    events: Iterable[Event] = (),
) -> bool:
    """Record a firing (and its outbox events) unless it was recorded before; True if new."""
    result = await session.execute(_statements(session.get_bind().dialect.name).insert_firing, {
        "id": firing_id, "automation": automation, "kind": kind, "at": at, "bucket": bucket,
        "correlation": correlation, "event_ids": event_ids, "context": context, "status": "pending",
        "results": [], "updated": utcnow(),
    })
    if getattr(result, "rowcount", 1) == 0:
        return False
    for event in events:
        session.add(EventRow(**repo.event_values(event)))
    return True


async def finish_firing(
    session: AsyncSession,
    firing_id: str,
    *,
    status: str,
    results: list[dict[str, Any]],
    events: Iterable[Event] = (),
) -> None:
    await session.execute(
        update(AutomationFiringRow)
        .where(AutomationFiringRow.id == firing_id)
        .values(status=status, results=results, updated=utcnow())
    )
    for event in events:
        session.add(EventRow(**repo.event_values(event)))


async def pending_firings(session: AsyncSession) -> list[AutomationFiringRow]:
    query = (
        select(AutomationFiringRow)
        .where(AutomationFiringRow.status == "pending")
        .order_by(AutomationFiringRow.at)
    )
    return list(await session.scalars(query))


async def recent_firings(session: AsyncSession, name: str, limit: int = 10) -> list[AutomationFiringRow]:
    query = (
        select(AutomationFiringRow)
        .where(AutomationFiringRow.automation == name)
        .order_by(AutomationFiringRow.at.desc())
        .limit(limit)
    )
    return list(await session.scalars(query))


async def events_between(
    session: AsyncSession,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int = 100_000,
) -> list[Event]:
    """Stored events that occurred in [since, until), oldest first."""
    query = select(EventRow).order_by(EventRow.occurred, EventRow.position).limit(limit)
    if since is not None:
        query = query.where(EventRow.occurred >= since)
    if until is not None:
        query = query.where(EventRow.occurred < until)
    return [repo.event(row) for row in await session.scalars(query)]
