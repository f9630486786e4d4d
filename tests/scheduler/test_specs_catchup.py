"""Schedules as written and stored; catch-up plans after an outage (pure, clock passed in)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from engine.scheduler.catchup import plan_catchup
from engine.scheduler.specs import normalise, schedule_id
from engine.scheduler.timing import Timing
from engine.schemas import DeploymentSpec, normalise_schedule

UTC = dt.UTC


# --- specs -------------------------------------------------------------------------------------
def test_the_issue_forms_validate() -> None:
    cron = normalise({"cron": "30 9 * * 1-5", "timezone": "America/New_York", "active": True,
                      "parameters": {"full": True}, "catchup": "all"})
    assert cron == {"cron": "30 9 * * 1-5", "timezone": "America/New_York", "active": True,
                    "parameters": {"full": True}, "catchup": "all"}
    interval = normalise({"interval": "2h", "anchor": "2026-01-01T00:00:00Z"})
    assert interval == {"interval": 7200.0, "anchor_date": "2026-01-01T00:00:00+00:00",
                        "timezone": "UTC", "active": True}


@pytest.mark.parametrize(
    "stored",
    [
        {"cron": "0 2 * * *", "timezone": "Europe/Paris", "active": True},
        {"interval": 7200.0, "timezone": "UTC", "active": True},
        {"interval": 60.0, "timezone": "UTC", "active": False, "anchor_date": "2026-01-01T00:00:00"},
    ],
)
def test_stored_forms_of_earlier_versions_load_unchanged(stored: dict) -> None:
    assert normalise(stored) == stored
    assert normalise_schedule(stored) == stored


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"cron": "0 2 * * *", "catchup": "some"}, "schedules[0]: catchup: 'some' is not a policy (expected skip, all or latest)"),
        ({"interval": "2x"}, "schedules[0]: interval '2x': expected seconds or a duration"),
        ({"interval": "2h", "anchor": "yesterday"}, "schedules[0]: anchor 'yesterday' is not an ISO date-time"),
        ({"cron": "0 2 * * *", "anchor": "2026-01-01"}, "schedules[0]: an anchor only applies to an interval"),
        ({"cron": "61 * * * *"}, "schedules[0]: cron '61 * * * *' is not a valid cron expression"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not a known time zone"),
        ({"cron": "0 2 * * *", "parameters": [1]}, "schedules[0]: parameters: expected a mapping"),
        ({"cron": "0 2 * * *", "active": "yes"}, "schedules[0]: active: expected true or false"),
        ({"cron": "0 2 * * *", "every": "day"}, "schedules[0]: unknown key 'every'"),
        ({"cron": "0 2 * * *", "interval": 5}, "give exactly one of 'cron' or 'interval'"),
        ({"interval": 5, "anchor": "2026-01-01", "anchor_date": "2026-01-01"}, "not both"),
        ({"cron": "0 2 * * *", "id": "no spaces"}, "schedules[0]: id: 'no spaces'"),
    ],
)
def test_bad_schedules_say_what_and_where(item: dict, message: str) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError) as info:
        DeploymentSpec(name="d", flow_name="f", entrypoint="f.py:f", schedules=[item])
    assert message in str(info.value)


def test_two_identical_schedules_are_refused() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=r"schedules\[1\]: same id"):
        DeploymentSpec(name="d", flow_name="f", entrypoint="f.py:f",
                       schedules=[{"cron": "0 2 * * *"}, {"cron": "0 2 * * *"}])
    # Different parameters make different schedules.
    DeploymentSpec(name="d", flow_name="f", entrypoint="f.py:f", schedules=[
        {"cron": "0 2 * * *", "parameters": {"region": "eu"}},
        {"cron": "0 2 * * *", "parameters": {"region": "us"}},
    ])


def test_schedule_id_ignores_active_and_catchup() -> None:
    base = normalise({"cron": "0 2 * * *"})
    assert schedule_id(base) == schedule_id(normalise({"cron": "0 2 * * *", "active": False, "catchup": "all"}))
    assert schedule_id(base) != schedule_id(normalise({"cron": "0 3 * * *"}))
    assert schedule_id(normalise({"cron": "0 2 * * *", "id": "nightly"})) == "nightly"
    assert len(schedule_id(base)) == 8


# --- catch-up after a 3-hour outage --------------------------------------------------------------
HOURLY = Timing(cron="0 * * * *")
DOWN = dt.datetime(2026, 5, 4, 9, 10, tzinfo=UTC)  # the scheduler stopped; runs made to 10:00
NOW = dt.datetime(2026, 5, 4, 12, 10, tzinfo=UTC)  # it starts again, 3 hours later
GRACE = dt.timedelta(seconds=15)
# Runs made ahead before the outage (10:00, 11:00, 12:00): never dispatched.
PENDING = {dt.datetime(2026, 5, 4, h, tzinfo=UTC): uuid.UUID(int=h) for h in (10, 11, 12)}


def at(hour: int) -> dt.datetime:
    return dt.datetime(2026, 5, 4, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "create", "cancel"),
    [
        ("skip", [], [10, 11, 12]),
        ("latest", [], [10, 11]),
        ("all", [], []),
    ],
)
def test_catchup_with_runs_made_ahead(policy, create, cancel) -> None:
    plan = plan_catchup(HOURLY, policy, now=NOW, grace=GRACE, since=at(12), pending=PENDING)
    assert plan.missed == [at(10), at(11), at(12)]
    assert plan.create == [at(h) for h in create]
    assert plan.cancel == [(uuid.UUID(int=h), at(h)) for h in cancel]


@pytest.mark.parametrize(
    ("policy", "create"),
    [("skip", []), ("latest", [12]), ("all", [10, 11, 12])],
)
def test_catchup_of_slots_that_never_got_a_run(policy, create) -> None:
    # The last run was for 09:00: 10:00, 11:00 and 12:00 were never made.
    plan = plan_catchup(HOURLY, policy, now=NOW, grace=GRACE, since=at(9), pending={})
    assert plan.missed == [at(10), at(11), at(12)]
    assert plan.create == [at(h) for h in create]
    assert plan.cancel == []


def test_a_slot_within_the_grace_is_due_not_missed() -> None:
    plan = plan_catchup(HOURLY, "skip", now=at(12) + dt.timedelta(seconds=5), grace=GRACE,
                        since=at(12), pending={at(12): uuid.UUID(int=12)})
    assert plan.missed == [] and plan.cancel == []


def test_catchup_all_is_capped() -> None:
    every_2s = Timing(interval=2)
    plan = plan_catchup(every_2s, "all", now=NOW, grace=GRACE, since=NOW - dt.timedelta(days=30),
                        pending={}, limit=100)
    assert len(plan.create) == 100
    assert plan.create[-1] <= NOW - GRACE
