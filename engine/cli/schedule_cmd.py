"""``flowrelay deployment schedule ls|pause|resume`` and ``flowrelay deployment next``.

    flowrelay deployment schedule ls etl/nightly
    flowrelay deployment schedule pause etl/nightly 2f0c1a9e     # one schedule (id or position)
    flowrelay deployment schedule resume etl/nightly             # all of them
    flowrelay deployment next etl/nightly --count 5 --after 2026-03-07T00:00:00Z --json

Fire times are computed here from the deployment's stored schedules (`engine.scheduler.timing`):
the same pure functions the server's scheduler uses, so what ``next`` prints is what runs.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output

if TYPE_CHECKING:
    from engine.schemas import Deployment

schedule_app = typer.Typer(
    help="List, pause and resume a deployment's schedules.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, nothing else.")]
NameArg = Annotated[
    str, typer.Argument(help="The deployment, as FLOW/DEPLOYMENT.", metavar="FLOW/DEPLOYMENT")
]
ScheduleArg = Annotated[
    str | None,
    typer.Argument(
        help="A schedule's id (see 'schedule ls') or its position (1, 2, ...). Default: all.",
        metavar="[ID]",
    ),
]


def _read(name: str) -> Deployment:
    from engine.runtime import embedded

    dep: Deployment = embedded.call_sync(lambda api: api.read_deployment(name))
    return dep


def _describe(schedule: dict[str, Any]) -> str:
    from engine.cli.deploy_cmd import _interval_text

    if "cron" in schedule:
        return f"cron {schedule['cron']}"
    text = f"every {_interval_text(float(schedule['interval']))}"
    if schedule.get("anchor_date"):
        text += f" from {schedule['anchor_date']}"
    return text


def _upcoming(
    dep: Deployment, after: dt.datetime, count: int
) -> list[tuple[dt.datetime, str, dict[str, Any]]]:
    """The next `count` fire times of the deployment's active schedules, merged."""
    from engine.scheduler.specs import schedule_id
    from engine.scheduler.timing import Timing, fire_times

    def stream(schedule: dict[str, Any]) -> Iterator[tuple[dt.datetime, str, dict[str, Any]]]:
        sid = schedule_id(schedule)
        for moment in fire_times(Timing.of(schedule), after):
            yield moment, sid, schedule

    streams = [stream(item) for item in dep.schedules if item.get("active", True)]
    merged = heapq.merge(*streams, key=lambda item: item[0])
    return [item for _, item in zip(range(count), merged, strict=False)]


@schedule_app.command("ls")
def ls(name: NameArg, as_json: JsonOption = False) -> None:
    """List the deployment's schedules: id, timing, zone, state, catch-up, next run."""
    from engine.scheduler.specs import catchup_of, schedule_id
    from engine.scheduler.timing import Timing, next_fire_times

    dep = _read(name)
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    for position, schedule in enumerate(dep.schedules, 1):
        upcoming = next_fire_times(Timing.of(schedule), now, 1)
        active = bool(schedule.get("active", True)) and not dep.paused
        rows.append({
            "id": schedule_id(schedule),
            "position": position,
            "schedule": schedule,
            "active": bool(schedule.get("active", True)),
            "catchup": catchup_of(schedule),
            "next": upcoming[0].isoformat() if upcoming and active else None,
        })
    if as_json:
        output.print_json(rows)
        return
    console = output.console()
    if not rows:
        console.print(
            f"Deployment {escape(dep.full_name)} has no schedules "
            "(add them with 'flowrelay deploy --cron/--interval' or 'schedules:' in YAML)."
        )
        return
    tbl = output.table("#", "schedule id", "when", "timezone", "status", "catchup", "parameters",
                       "next run (local)")
    for row in rows:
        schedule = row["schedule"]
        status = "active" if row["active"] else "[yellow]paused[/]"
        nxt = row["next"]
        tbl.add_row(
            str(row["position"]), row["id"], escape(_describe(schedule)),
            escape(schedule.get("timezone", "UTC")), status, row["catchup"],
            escape(output.result_text(schedule.get("parameters") or {})) if schedule.get("parameters") else "-",
            output.local_time(dt.datetime.fromisoformat(nxt)) if nxt else "-",
        )
    console.print(tbl)
    if dep.paused:
        console.print(f"Deployment {escape(dep.full_name)} is paused: its schedules make no runs.")


@schedule_app.command("pause")
def pause(name: NameArg, schedule: ScheduleArg = None, as_json: JsonOption = False) -> None:
    """Pause one schedule (or all): its runs not yet handed to a pool are cancelled."""
    _set_active(name, schedule, False, as_json)


@schedule_app.command("resume")
def resume(name: NameArg, schedule: ScheduleArg = None, as_json: JsonOption = False) -> None:
    """Resume one schedule (or all): its next runs are made again."""
    _set_active(name, schedule, True, as_json)


def _set_active(name: str, schedule: str | None, active: bool, as_json: bool) -> None:
    from engine.runtime import embedded
    from engine.scheduler.client import set_schedule_active

    answer: dict[str, Any] = embedded.call_sync(
        lambda _: set_schedule_active(name, active, schedule)
    )
    if as_json:
        output.print_json(answer)
        return
    verb = "resumed" if active else "paused"
    changed = answer["changed"]
    full_name = answer["deployment"]["flow_name"] + "/" + answer["deployment"]["name"]
    if changed:
        output.console().print(
            f"Deployment {escape(full_name)}: schedule {', '.join(changed)} {verb}."
        )
    else:
        output.console().print(f"Deployment {escape(full_name)}: nothing to do (already {verb}).")


def next_runs(
    name: NameArg,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000, help="How many.")] = 10,
    after: Annotated[
        str | None,
        typer.Option("--after", help="Start after this ISO time (no offset: UTC). Default: now."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the next fire times of the deployment's active schedules, in each schedule's time
    zone and in UTC."""
    start = _parse_after(after)
    dep = _read(name)
    upcoming = _upcoming(dep, start, count)
    rows = [
        {
            "local": moment.astimezone(_zone(schedule)).isoformat(),
            "utc": moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        for moment, _, schedule in upcoming
    ]
    if as_json:
        output.print_json(rows)
        return
    console = output.console()
    if not rows:
        console.print(f"Deployment {escape(dep.full_name)} has no active schedules.")
        return
    tbl = output.table("local", "timezone", "utc", "schedule")
    for row, (_, sid, schedule) in zip(rows, upcoming, strict=True):
        tbl.add_row(row["local"], escape(schedule.get("timezone", "UTC")), row["utc"],
                    f"{sid} ({escape(_describe(schedule))})")
    console.print(tbl)
    if dep.paused:
        console.print(f"Deployment {escape(dep.full_name)} is paused: these make no runs until "
                      "it is resumed.")


def _zone(schedule: dict[str, Any]) -> dt.tzinfo:
    import zoneinfo

    return zoneinfo.ZoneInfo(schedule.get("timezone") or "UTC")


def _parse_after(after: str | None) -> dt.datetime:
    if after is None:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(after.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--after {after!r}: not an ISO date-time (such as 2026-03-07T00:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def register(deployment_app: typer.Typer) -> None:
    """Add ``schedule`` and ``next`` to the ``deployment`` group."""
    deployment_app.add_typer(schedule_app, name="schedule")
    deployment_app.command("next")(next_runs)


__all__ = ["register", "schedule_app"]
