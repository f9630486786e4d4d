"""Results: the JSON form of a run's return value, as stored in the database."""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from engine.errors import ResultNotSerializable, ResultTooLarge


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def to_storable(value: Any, *, max_bytes: int, what: str) -> Any:
    """`value` as JSON-compatible data, or a clear error when it cannot or should not be stored."""
    try:
        data = to_jsonable_python(value)
        encoded = json.dumps(data)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ResultNotSerializable(
            f"the result of {what} is not JSON-serialisable ({type(value).__name__}: {exc}); "
            "return plain data (dict, list, str, numbers, datetimes, pydantic models) or a "
            "reference to where the data lives"
        ) from None
    size = len(encoded.encode())
    if size > max_bytes:
        raise ResultTooLarge(
            f"the result of {what} is {_human(size)} as JSON, over the {_human(max_bytes)} limit "
            "(results.max_bytes): store the data elsewhere and return a reference to it"
        )
    return data


def try_storable(value: Any, *, max_bytes: int) -> Any:
    """Best effort for task results: the JSON form, or None when it cannot be stored."""
    try:
        return to_storable(value, max_bytes=max_bytes, what="task")
    except (ResultNotSerializable, ResultTooLarge):
        return None
