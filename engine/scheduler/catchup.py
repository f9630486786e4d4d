"""What to do, at start, with the slots a schedule missed while no scheduler ran: pure, the
clock passed in.

A slot is *missed* when its time is more than the grace (``server.late_after_seconds``) in the
past and its run never reached a pool: it has no run (the outage was longer than the runs made
ahead), or its run is still pending. Slots within the grace are simply due and run as usual.

- ``skip``: no missed slot runs; their pending runs are cancelled;
- ``all``: every missed slot runs (the last `limit`, if more were missed);
- ``latest`` (default): only the most recent missed slot runs; the others are cancelled.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from engine.scheduler.specs import Catchup
from engine.scheduler.timing import Timing, fire_times_between

__all__ = ["CATCHUP_LIMIT", "CatchupPlan", "plan_catchup"]

#: At most this many missed slots of one schedule are run by ``catchup: all``.
CATCHUP_LIMIT = 100


@dataclass
class CatchupPlan:
    #: Missed slots without a run, to create now (they run at once, as Late).
    create: list[dt.datetime] = field(default_factory=list)
    #: Pending runs of missed slots to cancel, with their slots.
    cancel: list[tuple[uuid.UUID, dt.datetime]] = field(default_factory=list)
    #: Every missed slot, soonest first (for the log).
    missed: list[dt.datetime] = field(default_factory=list)


def plan_catchup(
    timing: Timing,
    policy: Catchup,
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    since: dt.datetime,
    pending: dict[dt.datetime, uuid.UUID],
    limit: int = CATCHUP_LIMIT,
) -> CatchupPlan:
    """The plan for one schedule. `since`: the latest slot that has (or had) a run (a schedule
    that never made one misses nothing); `pending`: its pending runs by slot."""
    cutoff = now - grace
    never_made = fire_times_between(timing, since, cutoff, limit=limit) if since < cutoff else []
    overdue = {slot: run for slot, run in pending.items() if slot <= cutoff}
    missed = sorted(set(never_made) | set(overdue))
    plan = CatchupPlan(missed=missed)
    if not missed:
        return plan
    if policy == "all":
        plan.create = [slot for slot in missed if slot not in overdue][-limit:]
        return plan
    keep = missed[-1] if policy == "latest" else None
    if keep is not None and keep not in overdue:
        plan.create = [keep]
    plan.cancel = sorted(
        ((run, slot) for slot, run in overdue.items() if slot != keep), key=lambda item: item[1]
    )
    return plan
