"""Fire times of cron and interval schedules: pure functions of the schedule and a moment.

Cron expressions are matched on the schedule zone's *wall clock* (croniter on naive local
times), then each wall time is mapped to one UTC instant:

- a wall time that does not exist (the hour skipped when clocks spring forward) fires at the
  first valid instant after the gap: ``30 2 * * *`` in America/New_York on 2026-03-08 fires at
  03:00 EDT. Several slots falling into one gap fire once, at that instant;
- a wall time that happens twice (clocks fall back) fires once, at its first occurrence:
  ``30 1 * * *`` in America/New_York on 2026-11-01 fires at 01:30 EDT, not again at 01:30 EST.

Intervals are exact elapsed time: slots are ``anchor + k * interval`` for every integer k (a
naive anchor is read in the schedule's zone; no anchor means 2000-01-01 00:00 in that zone), so
a 2-hour interval fires every 7,200 seconds whatever the clocks do. Use cron for "every day at
09:30 local time".

A slot is identified by its UTC instant: the same schedule gives the same instants in every
process, which makes them usable in idempotency keys.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_ANCHOR",
    "Timing",
    "fire_times",
    "fire_times_between",
    "local_to_utc",
    "next_fire_times",
]

#: Wall time that anchors an interval without an ``anchor_date``.
DEFAULT_ANCHOR = dt.datetime(2000, 1, 1)
_UTC = dt.UTC
#: A cron expression that matches nothing within this many years is treated as never firing.
_CRON_SEARCH_YEARS = 5


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: a cron expression, or an interval in seconds with its anchor, in
    a time zone. Build it from a stored schedule with `Timing.of`."""

    timezone: str = "UTC"
    cron: str | None = None
    interval: float | None = None
    anchor: dt.datetime | None = None
    zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", zoneinfo.ZoneInfo(self.timezone))
        if (self.cron is None) == (self.interval is None):
            raise ValueError("a schedule has exactly one of cron or interval")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("an interval must be more than 0 seconds")

    @classmethod
    def of(cls, schedule: dict[str, Any]) -> Timing:
        """The timing of a stored schedule (`engine.scheduler.specs.normalise`)."""
        anchor = schedule.get("anchor_date")
        return cls(
            timezone=str(schedule.get("timezone") or "UTC"),
            cron=schedule.get("cron"),
            interval=float(schedule["interval"]) if "interval" in schedule else None,
            anchor=dt.datetime.fromisoformat(anchor) if isinstance(anchor, str) else anchor,
        )

    def anchor_utc(self) -> dt.datetime:
        anchor = self.anchor or DEFAULT_ANCHOR
        if anchor.tzinfo is None:
            return local_to_utc(anchor, self.zone)
        return anchor.astimezone(_UTC)


def local_to_utc(wall: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The UTC instant of naive wall time `wall` in `zone`: its first occurrence if it happens
    twice, the end of the gap if it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(_UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(_UTC)
    if first == second:
        return first
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return min(first, second)  # happens twice: the first occurrence
    # Does not exist: the transition lies between the two readings. The first instant whose
    # wall time is at or after `wall` is the transition (binary search to the microsecond).
    lo, hi = min(first, second), max(first, second)
    while hi - lo > dt.timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()}: expected an aware date-time (with a UTC offset)")
    return moment.astimezone(_UTC)


def fire_times(timing: Timing, after: dt.datetime) -> Iterator[dt.datetime]:
    """The schedule's fire times strictly after `after` (aware), in UTC, soonest first."""
    after = _utc(after)
    if timing.interval is not None:
        yield from _interval_times(timing, after)
    else:
        yield from _cron_times(timing, after)


def next_fire_times(timing: Timing, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` fire times strictly after `after`, in UTC."""
    return list(_cached_next(timing, _utc(after), count))


@functools.lru_cache(maxsize=4096)
def _cached_next(timing: Timing, after: dt.datetime, count: int) -> tuple[dt.datetime, ...]:
    # Many deployments share a schedule ("0 * * * *"): computed once per moment.
    times: list[dt.datetime] = []
    for moment in fire_times(timing, after):
        if len(times) >= count:
            break
        times.append(moment)
    return tuple(times)


def fire_times_between(
    timing: Timing, start: dt.datetime, end: dt.datetime, *, limit: int | None = None
) -> list[dt.datetime]:
    """Fire times in ``(start, end]``, soonest first; with `limit`, only the last `limit`."""
    start, end = _utc(start), _utc(end)
    if timing.interval is not None and limit is not None:
        # Jump straight to the last `limit` slots: an outage of a year of 2-second slots
        # must not enumerate them all.
        step = dt.timedelta(seconds=timing.interval)
        start = max(start, end - step * (limit + 1))
    times: list[dt.datetime] = []
    for moment in fire_times(timing, start):
        if moment > end:
            break
        times.append(moment)
        if limit is not None and len(times) > limit:
            del times[0]
    return times


def _interval_times(timing: Timing, after: dt.datetime) -> Iterator[dt.datetime]:
    assert timing.interval is not None
    step_us = round(timing.interval * 1_000_000)
    anchor = timing.anchor_utc()
    elapsed_us = _micros(after - anchor)
    k = elapsed_us // step_us + 1  # floor division: also right before the anchor
    while True:
        yield anchor + dt.timedelta(microseconds=k * step_us)
        k += 1


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _cron_times(timing: Timing, after: dt.datetime) -> Iterator[dt.datetime]:
    from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]

    assert timing.cron is not None
    zone = timing.zone
    # Every slot after `after` has a wall time after `after`'s own (an ambiguous wall time
    # maps to its first occurrence, a skipped one forward), so the walk starts there.
    wall = after.astimezone(zone).replace(tzinfo=None)
    it = croniter(timing.cron, wall, max_years_between_matches=_CRON_SEARCH_YEARS)
    last: dt.datetime | None = None
    while True:
        try:
            local = it.get_next(dt.datetime)
        except CroniterBadDateError:
            return  # such as "0 0 30 2 *": never fires
        moment = local_to_utc(local, zone)
        if moment <= after or moment == last:
            continue  # before `after` (ambiguous hour) or a second slot in the same gap
        last = moment
        yield moment
