"""`flowrelay deployment schedule ls|pause|resume` and `flowrelay deployment next`, in process,
in embedded mode (each test has its own FLOWRELAY_HOME, so its own SQLite database)."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("restore_process_state")

DEPLOYMENTS = """
    deployments:
      - name: nightly
        flow_name: etl
        entrypoint: flows.py:etl
        work_pool: pool-a
        schedules:
          - cron: "30 9 * * 1-5"
            timezone: America/New_York
            id: weekdays
          - interval: 2h
            anchor: "2026-01-01T00:00:00Z"
            parameters: {full: true}
            catchup: all
"""


@pytest.fixture
def deployed(cli: Any, write: Any) -> None:
    write("flows.py", """
        from engine import flow

        @flow(name="etl")
        def etl(full: bool = False) -> bool:
            return full
    """)
    write("d.yaml", DEPLOYMENTS)
    assert cli("deploy", "--file", "d.yaml").code == 0


def _schedule_runs(cli: Any, scheduled: int) -> list[dict]:
    """The runs made by schedules, once `scheduled` of them are Scheduled (the embedded server's
    scheduler makes them from the deployment's events, in the background)."""
    for _ in range(200):
        runs = cli("flow-run", "ls", "--json").json()
        mine = [run for run in runs if (run.get("caused_by") or {}).get("schedule")]
        if sum(run["state"]["name"] == "Scheduled" for run in mine) == scheduled:
            return mine
        time.sleep(0.05)
    raise AssertionError(f"expected {scheduled} Scheduled runs, got {mine}")


def test_schedule_ls(cli: Any, deployed: None) -> None:
    rows = cli("deployment", "schedule", "ls", "etl/nightly", "--json").json()
    assert [(row["position"], row["active"], row["catchup"]) for row in rows] == [
        (1, True, "latest"), (2, True, "all"),
    ]
    assert rows[0]["id"] == "weekdays" and len(rows[1]["id"]) == 8
    assert rows[1]["schedule"]["parameters"] == {"full": True}
    assert all(row["next"] for row in rows)
    human = cli("deployment", "schedule", "ls", "etl/nightly")
    assert human.code == 0
    assert "weekdays" in human.out and "cron 30 9 * * 1-5" in human.out
    assert "every 2h from 2026-01-01T00:00:00+00:00" in human.out


def test_next_prints_local_and_utc_times_across_dst(cli: Any, deployed: None) -> None:
    cli("deployment", "schedule", "pause", "etl/nightly", "2")
    result = cli("deployment", "next", "etl/nightly", "--count", "3", "--after", "2026-03-05T15:00:00Z", "--json")
    assert result.code == 0, result.err
    assert result.json() == [
        {"local": "2026-03-06T09:30:00-05:00", "utc": "2026-03-06T14:30:00Z"},
        {"local": "2026-03-09T09:30:00-04:00", "utc": "2026-03-09T13:30:00Z"},
        {"local": "2026-03-10T09:30:00-04:00", "utc": "2026-03-10T13:30:00Z"},
    ]
    human = cli("deployment", "next", "etl/nightly", "-n", "1", "--after", "2026-03-05T15:00:00")
    assert "2026-03-06T09:30:00-05:00" in human.out and "2026-03-06T14:30:00Z" in human.out


def test_next_merges_active_schedules(cli: Any, deployed: None) -> None:
    result = cli("deployment", "next", "etl/nightly", "--count", "4", "--after", "2026-03-06T10:00:00Z", "--json")
    assert [row["utc"] for row in result.json()] == [
        "2026-03-06T12:00:00Z", "2026-03-06T14:00:00Z",
        "2026-03-06T14:30:00Z", "2026-03-06T16:00:00Z",
    ]


def test_pause_and_resume_one_schedule(cli: Any, deployed: None) -> None:
    made = _schedule_runs(cli, scheduled=6)
    assert len(made) == 6
    # When the interval schedule is paused by position
    paused = cli("deployment", "schedule", "pause", "etl/nightly", "2")
    assert paused.code == 0, paused.err
    assert "paused" in paused.out
    rows = cli("deployment", "schedule", "ls", "etl/nightly", "--json").json()
    assert [row["active"] for row in rows] == [True, False]
    runs = _schedule_runs(cli, scheduled=3)
    by_state = sorted((run["caused_by"]["schedule"] == "weekdays", run["state"]["name"]) for run in runs)
    assert by_state == [(False, "Cancelled")] * 3 + [(True, "Scheduled")] * 3
    # When it is resumed, its runs are made again
    assert cli("deployment", "schedule", "resume", "etl/nightly").code == 0
    assert len(_schedule_runs(cli, scheduled=6)) == 9
    again = cli("deployment", "schedule", "resume", "etl/nightly", "weekdays")
    assert "nothing to do" in again.out


def test_errors_are_one_line(cli: Any, deployed: None) -> None:
    assert "has no schedule 'nope'" in cli("deployment", "schedule", "pause", "etl/nightly", "nope").error
    assert "not an ISO date-time" in cli("deployment", "next", "etl/nightly", "--after", "monday").error
    assert "not found" in cli("deployment", "next", "etl/nighty").error
