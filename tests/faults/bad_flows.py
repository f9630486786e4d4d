"""Flows for tests/faults/test_bad_input.py: typed parameters, a result that is not JSON, and a
parameter that can be made as large as a test wants."""

from __future__ import annotations

from engine import flow


@flow(name="typed")
def typed(n: int) -> int:
    return n * 2


@flow(name="opaque")
def opaque() -> object:
    return object()  # not JSON: the run must fail saying so


@flow(name="echo")
def echo(blob: str = "") -> int:
    return len(blob)


@flow(name="probe")
def probe(n: int = 0) -> int:
    return n
