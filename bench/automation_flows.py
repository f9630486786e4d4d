"""Flows for the automations benchmark: an upstream whose result feeds a downstream's parameter."""

from engine import flow


@flow(name="bench-upstream")
def upstream(i: int = 0) -> dict[str, str]:
    return {"batch_id": f"b-{i}"}


@flow(name="bench-downstream")
def downstream(upstream_batch_id: str = "") -> str:
    return upstream_batch_id
