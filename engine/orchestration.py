"""Orchestration rules: which state a run may move to from the state it is in.

`decide()` is pure (no I/O, no clock): the engine service loads the run's current state, asks
`decide()`, and writes only on ACCEPT. Semantics follow Prefect:

- a run with no state accepts any proposal;
- a duplicate proposal (same type and name as the current state) is idempotent: ACCEPT with
  nothing to write, provided it comes from the same worker (``details.worker_id``). Workers claim
  a run by proposing Running with their id, so a second claimer is REJECTed, told who holds it;
- a run that went back to Scheduled because its worker was lost (``details.lost_worker_id``) or
  handed it back (``details.handed_back_by``) does not take a late Running from that worker: the
  worker's child may still be alive, and another worker may be about to claim the run;
- final states (Completed, Failed, Crashed, Cancelled) are left only for a retry
  (AwaitingRetry / Scheduled after Failed or Crashed), or with ``force=True``;
- otherwise the proposal must be in `TRANSITIONS` (keyed by state *name*, since
  Late/AwaitingRetry/AwaitingConcurrencySlot are Scheduled types and Retrying a Running type);
- ABORT is for a proposal that makes no sense whatever the current state: a known state name
  used with another type (``State(type=RUNNING, name="Late")``).

Attempts (fencing tokens). A worker's claim (``Pending`` with a ``worker_id`` and no attempt)
opens the run's next attempt: `attempt_for` numbers it ``FlowRun.attempts + 1`` and the stored
state carries it in ``details.attempt``. The worker's flow engine puts that number on every
report of the attempt (Running, AwaitingRetry, the final state, a hand-back). A report carrying
attempt N is judged only while the run's current state belongs to attempt N; otherwise — the
engine ended the attempt (lost worker: Crashed, Scheduled again), or a newer claim opened N+1 —
it is REJECTed as superseded, ``force`` or not, and the worker stops that run. States written by
the engine without a token (Cancelling, Paused) stay in the current attempt unless they end it
(a final or Scheduled-type state).

State names outside `engine.states.STATE_NAMES` are judged as their type's default name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.states import DEFAULT_NAMES, STATE_NAMES, State, StateType


class Status(StrEnum):
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"


@dataclass(frozen=True)
class Decision:
    status: Status
    reason: str | None = None
    #: An accepted duplicate: the run already is in that state.
    duplicate: bool = False
    #: Refused because the proposal's attempt is not the run's current one.
    superseded: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is Status.ACCEPT

    @property
    def write(self) -> bool:
        """Whether the proposed state must be written (accepted, and not a duplicate)."""
        return self.accepted and not self.duplicate


_SCHEDULED_FAMILY_TO = frozenset(
    {
        "Pending",
        "Running",
        "Late",
        "Cancelled",
        "Cancelling",
        "Failed",
        "Crashed",
        "Paused",
        "AwaitingConcurrencySlot",
    }
)
_RUNNING_FAMILY_TO = frozenset(
    {
        "Completed",
        "Failed",
        "Crashed",
        "Cancelling",
        "Cancelled",
        "Paused",
        "AwaitingRetry",
        "Retrying",
    }
)

#: Allowed transitions, by state name: from -> the names it may move to (duplicates aside).
TRANSITIONS: dict[str, frozenset[str]] = {
    "Scheduled": _SCHEDULED_FAMILY_TO,
    "Late": _SCHEDULED_FAMILY_TO,
    "AwaitingConcurrencySlot": _SCHEDULED_FAMILY_TO,
    # An in-process retry goes Running -> AwaitingRetry -> Retrying.
    "AwaitingRetry": _SCHEDULED_FAMILY_TO | {"Retrying"},
    "Pending": frozenset(
        {
            "Running",
            "Failed",
            "Crashed",
            "Cancelled",
            "Cancelling",
            "Paused",
            "AwaitingConcurrencySlot",
        }
    ),
    "Running": _RUNNING_FAMILY_TO,
    "Retrying": _RUNNING_FAMILY_TO,
    "Paused": frozenset(
        {"Pending", "Running", "Cancelled", "Cancelling", "Crashed", "Failed", "Scheduled"}
    ),
    "Cancelling": frozenset({"Cancelled", "Crashed", "Failed", "Completed"}),
    # Final states: only a retry leaves Failed/Crashed.
    "Completed": frozenset(),
    "Failed": frozenset({"AwaitingRetry", "Scheduled"}),
    "Crashed": frozenset({"AwaitingRetry", "Scheduled"}),
    "Cancelled": frozenset(),
}


def canonical_name(state: State) -> str:
    """The state name the rules are keyed by (an unknown custom name counts as its type's)."""
    if state.name in STATE_NAMES and STATE_NAMES[state.name] is state.type:
        return state.name
    return DEFAULT_NAMES[state.type]


#: Start of the reason given for a report of a superseded attempt (workers look for it).
SUPERSEDED = "superseded"


def attempt_for(current: State | None, proposed: State, attempts: int) -> tuple[int | None, int]:
    """The attempt a state about to be written belongs to, and the run's claim count after it
    (`attempts`: claims made so far). See the module docstring."""
    token = proposed.details.attempt
    if token is not None:
        return token, attempts
    if proposed.type is StateType.PENDING and proposed.details.worker_id is not None:
        return attempts + 1, attempts + 1  # a claim opens the next attempt
    held = current.details.attempt if current is not None else None
    if held is not None and not proposed.is_final() and proposed.type is not StateType.SCHEDULED:
        return held, attempts  # the engine's Cancelling, Paused...: the attempt goes on
    return None, attempts


def decide(current: State | None, proposed: State, *, force: bool = False) -> Decision:
    """Judge `proposed` against the run's `current` state."""
    expected_type = STATE_NAMES.get(proposed.name)
    if expected_type is not None and expected_type is not proposed.type:
        return Decision(
            Status.ABORT,
            f"state name {proposed.name!r} is a {expected_type.value} state, "
            f"not {proposed.type.value}",
        )
    token = proposed.details.attempt
    if token is not None:
        held = current.details.attempt if current is not None else None
        if held != token:
            return Decision(Status.REJECT, _superseded(current, token), superseded=True)
    if force:
        return Decision(Status.ACCEPT, "forced")
    if current is None:
        return Decision(Status.ACCEPT)

    if current.type is proposed.type and current.name == proposed.name:
        holder, claimer = current.details.worker_id, proposed.details.worker_id
        if holder == claimer:
            return Decision(Status.ACCEPT, f"already {current.name}", duplicate=True)
        return Decision(
            Status.REJECT,
            f"run is already {current.name} held by worker {holder!r}"
            f" (proposed by worker {claimer!r})",
        )

    if current.type is StateType.SCHEDULED and proposed.type is StateType.RUNNING:
        claimer = proposed.details.worker_id
        extra = current.details.model_extra or {}
        if claimer is not None and claimer in (extra.get("lost_worker_id"), extra.get("handed_back_by")):
            return Decision(
                Status.REJECT,
                f"worker {claimer!r} gave this run up (lost, or handed it back); it must be "
                "claimed again before it runs",
            )

    holder = current.details.worker_id
    if (
        current.type is StateType.PENDING
        and proposed.type is StateType.RUNNING
        and holder is not None
        and proposed.details.worker_id != holder
    ):
        return Decision(
            Status.REJECT,
            f"run is claimed by worker {holder!r}; worker {proposed.details.worker_id!r} cannot start it",
        )

    source, target = canonical_name(current), canonical_name(proposed)
    if target in TRANSITIONS[source]:
        return Decision(Status.ACCEPT)
    if current.is_final():
        return Decision(
            Status.REJECT, f"run is already final ({current.name}), cannot move to {proposed.name}"
        )
    return Decision(Status.REJECT, f"cannot move from {current.name} to {proposed.name}")


def _superseded(current: State | None, token: int) -> str:
    if current is None:
        why = "the run has no state"
    elif current.details.attempt is not None:
        why = f"the run is in attempt {current.details.attempt} ({current.name})"
    else:
        why = f"the engine ended it: the run is {current.name}"
        if current.message:
            why += f" ({current.message})"
    return f"{SUPERSEDED}: attempt {token} of this run is over; {why}"


__all__ = [
    "SUPERSEDED", "TRANSITIONS", "Decision", "Status", "attempt_for", "canonical_name", "decide",
]
