"""Durations as people write them: ``30s``, ``10m``, ``2h``, ``1h30m``, ``1d``, ``500ms``, a number
of seconds, or ISO 8601 (``PT10M``). One parser for the CLI, automations and schedules."""

from __future__ import annotations

import datetime as dt
import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)", re.I)
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.I,
)
_UNIT = {"ms": 0.001, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

__all__ = ["format_duration", "parse_duration"]


def parse_duration(value: str | int | float | dt.timedelta, *, what: str = "duration") -> dt.timedelta:
    """`value` as a timedelta; a ValueError naming `what` and the accepted forms otherwise."""
    try:
        duration = _parse(value, what)
    except OverflowError:  # timedelta's own limit; pydantic turns only ValueErrors into messages
        raise ValueError(f"{what}: {value!r} is too long (at most {_MAX_DAYS:,} days)") from None
    return duration


_MAX_DAYS = dt.timedelta.max.days


def _finite(seconds: float, value: object, what: str) -> float:
    if math.isnan(seconds):
        raise ValueError(f"{what}: {value!r} is not a duration")
    if math.isinf(seconds):
        raise OverflowError
    return seconds


def _parse(value: str | int | float | dt.timedelta, what: str) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what}: {value!r} is negative")
        return dt.timedelta(seconds=_finite(float(value), value, what))
    raw = str(value).strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError(f"{what}: {value!r} is negative")
        return dt.timedelta(seconds=_finite(seconds, value, what))
    iso = _ISO.match(raw)
    if iso and any(iso.groupdict().values()):
        iso_parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return dt.timedelta(
            days=iso_parts.get("d", 0), hours=iso_parts.get("h", 0),
            minutes=iso_parts.get("m", 0), seconds=iso_parts.get("s", 0),
        )
    parts: list[tuple[str, str]] = _PART.findall(raw)
    if not parts or _PART.sub("", raw).strip():
        raise ValueError(
            f"{what}: {value!r} is not a duration; write e.g. 30s, 10m, 2h, 1h30m, 1d or a number of seconds"
        )
    return dt.timedelta(seconds=sum(float(n) * _UNIT[u.lower()] for n, u in parts))


def format_duration(value: dt.timedelta) -> str:
    """A short human form: 90s → '1m30s', 2h → '2h'."""
    total = value.total_seconds()
    if total < 1 and total > 0:
        return f"{round(total * 1000)}ms"
    seconds = int(round(total))
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    if seconds or not out:
        out += f"{seconds}s"
    return out
