"""Schedules as users write them and as they are stored.

Users write (deployment YAML, ``deployments:`` in config.yaml, `flowrelay deploy`, Python)::

    schedules:
      - cron: "30 9 * * 1-5"
        timezone: America/New_York
      - interval: 2h                     # seconds, or 90s, 15m, 2h, 1d, 1h30m
        anchor: "2026-01-01T00:00:00Z"   # or anchor_date
        parameters: {full: true}         # merged over the deployment's parameters
        catchup: all                     # skip | all | latest (default) after downtime
        active: false
        id: full-refresh                 # optional: a name for the CLI (default: derived)

Stored (`normalise`): ``cron`` or ``interval`` (seconds), ``timezone``, ``active``, and only when
given: ``anchor_date`` (ISO), ``parameters``, ``catchup`` (when not ``latest``), ``id``. Forms
stored by earlier versions (``{"cron", "timezone", "active"}``) load unchanged.

A schedule's id (`schedule_id`) is its ``id`` if given, else 8 hex digits derived from what
decides its runs (timing, zone, anchor, parameters), never from ``active`` or ``catchup``: the
same schedule has the same id in every process and after every re-deploy, and it is part of
the idempotency key of every run it makes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import zoneinfo
from typing import Any, Literal

__all__ = [
    "CATCHUP_POLICIES", "Catchup", "catchup_of", "normalise", "normalise_all", "schedule_id",
]

Catchup = Literal["skip", "all", "latest"]
CATCHUP_POLICIES: tuple[Catchup, ...] = ("skip", "all", "latest")
DEFAULT_CATCHUP: Catchup = "latest"

_KEYS = (
    "cron", "interval", "timezone", "active", "anchor", "anchor_date", "parameters", "catchup",
    "id",
)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")


def normalise(item: Any, where: str = "schedule") -> dict[str, Any]:
    """`item` as stored; a `ValueError` naming `where`, the key and the fix otherwise."""
    from engine.schemas import parse_interval

    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a mapping such as {{cron: '0 2 * * *'}}")
    unknown = sorted(str(key) for key in item if key not in _KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r} (expected cron or interval, timezone, active, "
            "parameters, catchup, anchor, id)"
        )
    if ("cron" in item) == ("interval" in item):
        raise ValueError(f"{where}: give exactly one of 'cron' or 'interval'")
    timezone = str(item.get("timezone") or "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{where}: timezone {timezone!r} is not a known time zone (such as 'Europe/Paris')"
        ) from None
    result: dict[str, Any] = {}
    anchor = item.get("anchor", item.get("anchor_date"))
    if "anchor" in item and "anchor_date" in item:
        raise ValueError(f"{where}: give 'anchor' or 'anchor_date', not both")
    if "cron" in item:
        from croniter import croniter  # type: ignore[import-untyped]

        cron = str(item["cron"]).strip()
        if not croniter.is_valid(cron):
            raise ValueError(
                f"{where}: cron {cron!r} is not a valid cron expression "
                "(five fields: minute hour day-of-month month day-of-week, such as '30 9 * * 1-5')"
            )
        if anchor is not None:
            raise ValueError(f"{where}: an anchor only applies to an interval")
        result["cron"] = cron
    else:
        try:
            result["interval"] = parse_interval(item["interval"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if anchor is not None:
            result["anchor_date"] = _anchor(anchor, where)
    result["timezone"] = timezone
    active = item.get("active", True)
    if not isinstance(active, bool):
        raise ValueError(f"{where}: active: expected true or false, not {active!r}")
    result["active"] = active
    if item.get("parameters"):
        parameters = item["parameters"]
        if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
            raise ValueError(f"{where}: parameters: expected a mapping of names to values")
        try:
            json.dumps(parameters)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: parameters: must be JSON values ({exc})") from None
        result["parameters"] = dict(parameters)
    catchup = item.get("catchup", DEFAULT_CATCHUP)
    if catchup not in CATCHUP_POLICIES:
        raise ValueError(
            f"{where}: catchup: {catchup!r} is not a policy (expected skip, all or latest)"
        )
    if catchup != DEFAULT_CATCHUP:
        result["catchup"] = catchup
    if item.get("id") is not None:
        given = str(item["id"])
        if not _ID.match(given):
            raise ValueError(
                f"{where}: id: {given!r}: use letters, digits, '-' and '_' (at most 63)"
            )
        result["id"] = given
    return result


def _anchor(value: Any, where: str) -> str:
    try:
        moment = (
            value
            if isinstance(value, dt.datetime)
            else dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        )
    except ValueError:
        raise ValueError(
            f"{where}: anchor {value!r} is not an ISO date-time (such as "
            "'2026-01-01T00:00:00Z')"
        ) from None
    return moment.isoformat()


def schedule_id(schedule: dict[str, Any]) -> str:
    """The schedule's id: its ``id``, else derived from its timing and parameters."""
    if schedule.get("id"):
        return str(schedule["id"])
    identity = {
        key: schedule.get(key)
        for key in ("cron", "interval", "timezone", "anchor_date", "parameters")
        if schedule.get(key) not in (None, {})
    }
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode(), usedforsecurity=False)
    return digest.hexdigest()[:8]


def catchup_of(schedule: dict[str, Any]) -> Catchup:
    value = schedule.get("catchup", DEFAULT_CATCHUP)
    return value if value in CATCHUP_POLICIES else DEFAULT_CATCHUP


def normalise_all(items: list[Any], where: str = "schedules") -> list[dict[str, Any]]:
    """Every schedule of a deployment, normalised; two schedules may not share an id."""
    schedules = [normalise(item, f"{where}[{i}]") for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, schedule in enumerate(schedules):
        sid = schedule_id(schedule)
        if sid in seen:
            raise ValueError(
                f"{where}[{i}]: same id {sid!r} as {where}[{seen[sid]}] (the same timing and "
                "parameters twice: remove one, or give each an 'id')"
            )
        seen[sid] = i
    return schedules
