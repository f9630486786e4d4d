"""The state transition table, exhaustively: every (from, to) pair of state names."""

from __future__ import annotations

import pytest

from engine.orchestration import Status, decide
from engine.states import STATE_NAMES, State, StateType

# fmt: off
COLUMNS = [
    "Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Pending", "Running",
    "Retrying", "Completed", "Failed", "Crashed", "Cancelling", "Cancelled", "Paused",
]

# A = ACCEPT, R = REJECT, = = duplicate (ACCEPT, nothing written). Rows: from; columns: to.
#                              Sch Lat AwR ACS Pen Run Ret Com Fai Cra Cng Cnd Pau
TABLE = {
    "Scheduled":               " =   A   R   A   A   A   R   R   A   A   A   A   A",
    "Late":                    " R   =   R   A   A   A   R   R   A   A   A   A   A",
    "AwaitingRetry":           " R   A   =   A   A   A   A   R   A   A   A   A   A",
    "AwaitingConcurrencySlot": " R   A   R   =   A   A   R   R   A   A   A   A   A",
    "Pending":                 " R   R   R   A   =   A   R   R   A   A   A   A   A",
    "Running":                 " R   R   A   R   R   =   A   A   A   A   A   A   A",
    "Retrying":                " R   R   A   R   R   R   =   A   A   A   A   A   A",
    "Completed":               " R   R   R   R   R   R   R   =   R   R   R   R   R",
    "Failed":                  " A   R   A   R   R   R   R   R   =   R   R   R   R",
    "Crashed":                 " A   R   A   R   R   R   R   R   R   =   R   R   R",
    "Cancelling":              " R   R   R   R   R   R   R   A   A   A   =   A   R",
    "Cancelled":               " R   R   R   R   R   R   R   R   R   R   R   =   R",
    "Paused":                  " A   R   R   R   A   A   R   R   A   A   A   A   =",
}
# fmt: on

CASES = [
    (source, target, cell)
    for source, row in TABLE.items()
    for target, cell in zip(COLUMNS, row.split(), strict=True)
]


def state(name: str, worker_id: str | None = None) -> State:
    return State(type=STATE_NAMES[name], name=name, details={"worker_id": worker_id})


def test_table_covers_every_state_name() -> None:
    assert set(TABLE) == set(STATE_NAMES) == set(COLUMNS)
    assert len(CASES) == len(STATE_NAMES) ** 2


@pytest.mark.parametrize(
    ("source", "target", "cell"), CASES, ids=[f"{s}->{t}" for s, t, _ in CASES]
)
def test_transition(source: str, target: str, cell: str) -> None:
    decision = decide(state(source), state(target))

    expected = {"A": Status.ACCEPT, "=": Status.ACCEPT, "R": Status.REJECT}[cell]
    assert decision.status is expected, decision.reason
    assert decision.write is (cell == "A")
    if cell == "R":
        assert source in decision.reason and target in decision.reason


@pytest.mark.parametrize("target", COLUMNS)
def test_no_current_state_accepts_anything(target: str) -> None:
    decision = decide(None, state(target))
    assert decision.status is Status.ACCEPT and decision.write


@pytest.mark.parametrize(("source", "target"), [(s, t) for s, t, c in CASES if c == "R"])
def test_force_overrides_every_rejection(source: str, target: str) -> None:
    decision = decide(state(source), state(target), force=True)
    assert decision.status is Status.ACCEPT and decision.write


def test_duplicate_from_same_worker_is_idempotent() -> None:
    decision = decide(state("Running", "w1"), state("Running", "w1"))
    assert decision.status is Status.ACCEPT
    assert not decision.write


def test_second_claimer_is_rejected_naming_the_holder() -> None:
    decision = decide(state("Running", "w1"), state("Running", "w2"))
    assert decision.status is Status.REJECT
    assert "'w1'" in decision.reason


def test_duplicate_without_worker_against_claimed_run_is_rejected() -> None:
    assert decide(state("Running", "w1"), state("Running")).status is Status.REJECT


def test_name_of_another_type_aborts() -> None:
    decision = decide(state("Pending"), State(type=StateType.RUNNING, name="Late"))
    assert decision.status is Status.ABORT
    assert "SCHEDULED" in decision.reason


def test_custom_name_is_judged_as_its_type() -> None:
    custom = State(type=StateType.RUNNING, name="Crunching")
    assert decide(state("Pending"), custom).status is Status.ACCEPT
    assert decide(state("Completed"), custom).status is Status.REJECT
