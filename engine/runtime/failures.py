"""A failure as the user needs to see it: the exception's type, message and traceback, with the
engine's own frames trimmed (what a Failed or Crashed state carries in ``details.error``, and
what the run's logs get as an ERROR line, as Prefect writes "Encountered exception during
execution").

    error = describe(exc)   # {"type": "ValueError", "message": "bad batch", "traceback": "..."}

The traceback keeps the user's frames and everything they called (a library raising deep inside
is where the error is); it drops the engine's frames (`engine`, `workers`, `automations`) and the
standard library's frames that run the body (asyncio, threads) before the first user frame.
Chained exceptions ("The above exception was the direct cause of ...") are kept, each trimmed the
same way. An error raised inside the engine itself (no user frame at all) keeps its whole stack:
then the engine's frames are the story.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from functools import cache
from typing import Any

__all__ = ["MAX_TRACEBACK_CHARS", "describe", "format_error", "traceback_text"]

#: A traceback longer than this keeps its head and tail (the middle of a deep recursion says
#: nothing new) so that one state stays a small row.
MAX_TRACEBACK_CHARS = 16_000


@cache
def _internal_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(our packages' folders, the standard library's folders)."""
    import automations
    import engine
    import workers

    ours = tuple(
        os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep
        for module in (engine, workers, automations)
    )
    paths = sysconfig.get_paths()
    stdlib = tuple(
        {os.path.abspath(paths[key]) + os.sep for key in ("stdlib", "platstdlib") if key in paths}
    )
    return ours, stdlib


def _is_ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_internal_dirs()[0])


def _is_stdlib(filename: str) -> bool:
    path = os.path.abspath(filename)
    _, stdlib = _internal_dirs()
    return path.startswith(stdlib) and "site-packages" not in path


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    """Trim `te`'s frames in place (and its cause's and context's)."""
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = list(te.stack)
    user = [i for i, frame in enumerate(frames) if not _is_ours(frame.filename)
            and not _is_stdlib(frame.filename)]
    if user:
        kept = [frame for frame in frames[user[0]:] if not _is_ours(frame.filename)]
        te.stack = traceback.StackSummary.from_list(kept)
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _trim(chained, seen)


def traceback_text(exc: BaseException, *, trim: bool = True) -> str:
    """The formatted traceback of `exc` (``Traceback (most recent call last): ...``), the
    engine's frames trimmed unless `trim` is False, at most `MAX_TRACEBACK_CHARS` long."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    if trim:
        _trim(te, set())
    text = "".join(te.format()).rstrip("\n")
    if len(text) > MAX_TRACEBACK_CHARS:
        half = MAX_TRACEBACK_CHARS // 2
        cut = len(text) - 2 * half
        text = f"{text[:half]}\n  ... ({cut} characters of the traceback left out) ...\n{text[-half:]}"
    return text


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def describe(exc: BaseException, *, trim: bool = True) -> dict[str, Any]:
    """``{"type", "message", "traceback"}`` of `exc` (JSON: stored in a state's details)."""
    return {"type": _type_name(exc), "message": str(exc), "traceback": traceback_text(exc, trim=trim)}


def format_error(error: Any) -> str | None:
    """The traceback text of a stored ``details.error`` (None if there is none)."""
    if not isinstance(error, dict):
        return None
    text = error.get("traceback")
    if isinstance(text, str) and text:
        return text
    if error.get("type"):
        return f"{error['type']}: {error.get('message', '')}"
    return None
