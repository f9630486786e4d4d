"""Shared rendering for the CLI: consoles, JSON output, states, times and durations.

Human output goes to stdout through rich; ``--json`` output is one `json.dumps` document on
stdout and nothing else; errors and logs go to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.errors import ObjectNotFound
from engine.states import STATE_NAMES, State, StateType

STATE_STYLES: dict[StateType, str] = {
    StateType.SCHEDULED: "yellow",
    StateType.PENDING: "bright_black",
    StateType.RUNNING: "blue",
    StateType.COMPLETED: "green",
    StateType.FAILED: "red",
    StateType.CRASHED: "bold red",
    StateType.CANCELLING: "bright_black",
    StateType.CANCELLED: "bright_black",
    StateType.PAUSED: "yellow",
}

LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
LEVEL_STYLES = {
    "DEBUG": "bright_black",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
}


def console() -> Console:
    """A console on the current stdout (looked up at call time, so test runners can swap it).

    Piped output is not cut to 80 columns: tables and lines stay whole for grep and less."""
    stream = sys.stdout
    isatty = getattr(stream, "isatty", None)
    width = None if (isatty and isatty()) or os.environ.get("COLUMNS") else 200
    return Console(file=stream, highlight=False, soft_wrap=True, width=width)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list | tuple):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_jsonable(value) for key, value in obj.items()}
    return obj


def print_json(obj: Any) -> None:
    """`obj` (models, lists and dicts of them) as one JSON document on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, default=str) + "\n")
    sys.stdout.flush()


def state_text(state: State | None) -> str:
    """Rich markup for a state name, coloured by its type."""
    if state is None:
        return "[bright_black]-[/]"
    style = STATE_STYLES.get(state.type, "")
    return f"[{style}]{escape(state.name)}[/]" if style else escape(state.name)


def aware(moment: dt.datetime) -> dt.datetime:
    """`moment` with a time zone; a naive time (SQLite gives them back) is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def local_time(moment: dt.datetime | None, *, precise: bool = False) -> str:
    if moment is None:
        return "-"
    local = aware(moment).astimezone()
    if precise:
        return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    return local.strftime("%Y-%m-%d %H:%M:%S")


def duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """``1.234s``, ``2m05s``, ``1h02m``; ``-`` when not started."""
    if start is None:
        return "-"
    end = aware(end) if end is not None else dt.datetime.now(dt.UTC)
    seconds = max((end - aware(start)).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def level_name(level: int) -> str:
    return LEVEL_NAMES.get(level, str(level))


def parse_run_id(value: str) -> uuid.UUID:
    """A flow run id from the command line; `ObjectNotFound` for anything that is not a UUID."""
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        raise ObjectNotFound(f"flow run {value!r} not found") from None


def normalise_state_names(values: Iterable[str]) -> list[str]:
    """State names as the engine spells them (``completed`` → ``Completed``); `ValueError` with a
    did-you-mean for a name that is not a state."""
    import difflib

    by_lower = {name.lower(): name for name in STATE_NAMES}
    names = []
    for value in values:
        name = by_lower.get(value.strip().lower())
        if name is None:
            close = difflib.get_close_matches(value.strip().lower(), list(by_lower), n=1)
            hint = (
                f" (did you mean {by_lower[close[0]]!r}?)"
                if close
                else (f" (one of {', '.join(STATE_NAMES)})")
            )
            raise ValueError(f"--state {value!r}: not a state{hint}")
        names.append(name)
    return names


def table(*columns: str, title: str | None = None) -> Table:
    tbl = Table(title=title, show_edge=False, header_style="bold", pad_edge=False)
    for column in columns:
        if column == "id":
            tbl.add_column(column, no_wrap=True, min_width=36, style="cyan")
        elif column in ("name", "flow", "task run"):
            tbl.add_column(column, overflow="ellipsis", no_wrap=True)
        else:
            tbl.add_column(column, no_wrap=True)
    return tbl


def result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
