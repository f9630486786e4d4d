"""Flows for the web UI's browser tests and the screenshot script."""

from __future__ import annotations

import time

from engine import flow, get_run_logger, task


@task
def prepare(batch_id: str) -> dict[str, str]:
    return {"batch_id": batch_id}


@flow(name="up")
def up(batch_id: str = "b-0") -> dict[str, str]:
    batch: dict[str, str] = prepare(batch_id)
    get_run_logger().info("prepared batch %s", batch_id)
    return batch


@flow(name="down")
def down(upstream_batch_id: str = "none") -> str:
    get_run_logger().info("processing batch %s", upstream_batch_id)
    return f"processed {upstream_batch_id}"


@flow(name="slow")
def slow(seconds: float = 1.5) -> float:
    """Long enough for a page to see it Running before it completes."""
    logger = get_run_logger()
    logger.info("sleeping %.1f s", seconds)
    time.sleep(seconds)
    logger.info("awake")
    return seconds


@flow(name="chatty")
def chatty(seconds: float = 8.0) -> str:
    """Logs a line from its body, then works quietly for `seconds` (no task, no state change):
    its page should show the line meanwhile (`runtime.log_flush_seconds`)."""
    get_run_logger().info("chatty: started, working quietly now")
    time.sleep(seconds)
    return "done"


@flow(name="pinged")
def pinged(source: str = "") -> str:
    return f"pinged by {source}"


@flow(name="witness")
def witness(source: str = "") -> str:
    return f"witnessed {source}"


def _check(batch_id: str) -> None:
    raise ValueError(f"bad batch {batch_id}")


@flow(name="broken")
def broken(batch_id: str = "b-0") -> None:
    """Fails in a helper of the user's: the run page shows the traceback."""
    _check(batch_id)
