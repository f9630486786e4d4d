"""Fire times: tables of (schedule, after) → the next instants, across DST changes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from engine.scheduler.timing import Timing, fire_times_between, local_to_utc, next_fire_times

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zone, fold=fold).astimezone(UTC)


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        # Weekdays 09:30 New York across the spring-forward weekend (2026-03-08): 14:30 UTC on
        # Friday (EST), 13:30 UTC from Monday (EDT).
        ("30 9 * * 1-5", NY, utc(2026, 3, 5, 15), [
            local(NY, 2026, 3, 6, 9, 30), local(NY, 2026, 3, 9, 9, 30), local(NY, 2026, 3, 10, 9, 30),
        ]),
        ("30 9 * * 1-5", NY, utc(2026, 3, 5, 15), [
            utc(2026, 3, 6, 14, 30), utc(2026, 3, 9, 13, 30), utc(2026, 3, 10, 13, 30),
        ]),
        # ... and across fall-back (2026-11-01): 13:30 UTC on Friday, 14:30 UTC on Monday.
        ("30 9 * * 1-5", NY, utc(2026, 10, 29, 14), [
            utc(2026, 10, 30, 13, 30), utc(2026, 11, 2, 14, 30),
        ]),
        # Spring forward, New York: 02:30 does not exist on 2026-03-08; it runs once, at 03:00 EDT.
        ("30 2 * * *", NY, utc(2026, 3, 7, 12), [
            local(NY, 2026, 3, 8, 3, 0), local(NY, 2026, 3, 9, 2, 30),
        ]),
        # Fall back, New York: 01:30 happens twice on 2026-11-01; it runs once, the first time.
        ("30 1 * * *", NY, utc(2026, 10, 31, 12), [
            utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30),
        ]),
        # Spring forward, Berlin (2026-03-29, 02:00 → 03:00): 02:30 runs once, at 03:00 CEST.
        ("30 2 * * *", BERLIN, utc(2026, 3, 28, 12), [
            utc(2026, 3, 29, 1, 0), local(BERLIN, 2026, 3, 30, 2, 30),
        ]),
        # Fall back, Berlin (2026-10-25, 03:00 → 02:00): 02:30 runs once, at 02:30 CEST.
        ("30 2 * * *", BERLIN, utc(2026, 10, 24, 12), [
            utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30),
        ]),
        # Several slots inside the skipped hour run once, together with the 03:00 slot.
        ("*/20 2,3 * * *", BERLIN, utc(2026, 3, 28, 23), [
            utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 20), utc(2026, 3, 29, 1, 40),
            local(BERLIN, 2026, 3, 30, 2, 0),
        ]),
        # An hourly job on the wall clock: the repeated hour does not run twice.
        ("30 * * * *", NY, utc(2026, 11, 1, 4, 45), [
            utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 8, 30),
        ]),
        # `after` inside the second pass of the repeated hour: the first pass is behind it.
        ("30 1 * * *", NY, local(NY, 2026, 11, 1, 1, 0, fold=1), [utc(2026, 11, 2, 6, 30)]),
        ("0 0 1 1 *", ZoneInfo("UTC"), utc(2026, 6, 1), [utc(2027, 1, 1), utc(2028, 1, 1)]),
    ],
)
def test_cron_fire_times(cron: str, zone: ZoneInfo, after: dt.datetime, expected: list[dt.datetime]) -> None:
    timing = Timing(cron=cron, timezone=str(zone))
    assert next_fire_times(timing, after, len(expected)) == expected


def test_fire_times_are_strictly_after_and_increasing() -> None:
    timing = Timing(cron="*/30 * * * *", timezone="Europe/Berlin")
    start = utc(2026, 10, 24, 20)
    times = fire_times_between(timing, start, start + dt.timedelta(days=2))
    assert times == sorted(set(times)) and times[0] > start
    # Two days of half-hours, less the repeated hour's second pass (2 slots).
    assert len(times) == 96 - 2


def test_a_cron_that_never_fires_gives_no_times() -> None:
    assert next_fire_times(Timing(cron="0 0 30 2 *"), utc(2026, 1, 1), 3) == []


@pytest.mark.parametrize(
    ("interval", "anchor", "after", "expected"),
    [
        # Slots are anchor + k * interval, on either side of the anchor.
        (7200, dt.datetime(2026, 1, 1, tzinfo=UTC), utc(2026, 1, 1, 3), [utc(2026, 1, 1, 4), utc(2026, 1, 1, 6)]),
        (7200, dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC), utc(2025, 12, 31, 21), [
            utc(2025, 12, 31, 22, 30), utc(2026, 1, 1, 0, 30),
        ]),
        # Exactly on a slot: the next one.
        (3600, dt.datetime(2026, 1, 1, tzinfo=UTC), utc(2026, 1, 1, 5), [utc(2026, 1, 1, 6)]),
        # A naive anchor is read in the schedule's zone: 10:15 Berlin = 09:15 UTC in winter.
        (86400, dt.datetime(2026, 1, 1, 10, 15), utc(2026, 1, 1), [utc(2026, 1, 1, 9, 15)]),
        # Elapsed time, not wall time: across Berlin's spring-forward a day is 24 h.
        (86400, dt.datetime(2026, 3, 28, 10, 15), utc(2026, 3, 28, 12), [utc(2026, 3, 29, 9, 15)]),
        # No anchor: 2000-01-01 00:00 in the zone, so 15-minute slots fall on quarter hours.
        (900, None, utc(2026, 5, 5, 12, 7, 1), [utc(2026, 5, 5, 12, 15), utc(2026, 5, 5, 12, 30)]),
        (2.5, dt.datetime(2026, 1, 1, tzinfo=UTC), utc(2026, 1, 1, 0, 0, 4), [
            utc(2026, 1, 1, 0, 0, 5), dt.datetime(2026, 1, 1, 0, 0, 7, 500000, tzinfo=UTC),
        ]),
    ],
)
def test_interval_fire_times(
    interval: float, anchor: dt.datetime | None, after: dt.datetime, expected: list[dt.datetime]
) -> None:
    timing = Timing(interval=interval, anchor=anchor, timezone="Europe/Berlin")
    assert next_fire_times(timing, after, len(expected)) == expected


def test_timing_of_stored_schedules() -> None:
    timing = Timing.of({"interval": 7200.0, "anchor_date": "2026-01-01T00:00:00+00:00", "timezone": "UTC"})
    assert next_fire_times(timing, utc(2026, 1, 1, 1), 1) == [utc(2026, 1, 1, 2)]
    legacy = Timing.of({"cron": "0 2 * * *", "timezone": "Europe/Paris", "active": True})
    assert next_fire_times(legacy, utc(2026, 1, 1), 1) == [utc(2026, 1, 1, 1)]


def test_fire_times_between_keeps_the_last_ones_when_limited() -> None:
    timing = Timing(interval=2)
    start = utc(2026, 1, 1)
    times = fire_times_between(timing, start, start + dt.timedelta(days=365), limit=3)
    assert times == [start + dt.timedelta(days=365, seconds=-4), start + dt.timedelta(days=365, seconds=-2),
                     start + dt.timedelta(days=365)]


@pytest.mark.parametrize(
    ("wall", "zone", "expected"),
    [
        (dt.datetime(2026, 3, 8, 2, 30), NY, utc(2026, 3, 8, 7)),  # skipped: end of the gap
        (dt.datetime(2026, 11, 1, 1, 30), NY, utc(2026, 11, 1, 5, 30)),  # twice: the first
        (dt.datetime(2026, 7, 1, 12, 0), BERLIN, utc(2026, 7, 1, 10)),
    ],
)
def test_local_to_utc(wall: dt.datetime, zone: ZoneInfo, expected: dt.datetime) -> None:
    assert local_to_utc(wall, zone) == expected


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire_times(Timing(cron="* * * * *"), dt.datetime(2026, 1, 1), 1)
