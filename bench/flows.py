"""Trivial flows for the benchmarks."""

from engine import flow


@flow(name="bench-trivial")
def trivial(i: int = 0) -> int:
    return i
