"""Deployments in the engine service: registration, dispatch to pools, concurrency slots and
crash retries, and deployment specs from files and configuration.

- `engine.deployments.store`: names (``FLOW/DEPLOYMENT``), reading, registering, pausing;
- `engine.deployments.slots`: dispatch, concurrency slots, crash retries, the server's queries;
- `engine.deployments.specs`: specs from a ``deployments:`` list (file or config.yaml).

The store and slot functions work on an `AsyncSession` inside `EngineService`'s write
transaction, so every effect commits with the change that causes it.
"""

from __future__ import annotations

from engine.deployments.slots import (
    DISPATCH_EVENT,
    DISPATCHABLE,
    WAITING,
    EnterState,
    dispatch,
    dispatch_run,
    dispatch_values,
    due_runs,
    forget_dispatches,
    holds_slot,
    lock,
    on_state_entered,
    plan_new_run,
    release_pool_slots,
    release_slots,
    runs_held_by,
    waiting_for_claim,
)
from engine.deployments.specs import (
    check_parameters,
    format_path,
    register_configured,
    specs_from_items,
    yaml_lines,
)
from engine.deployments.store import (
    deployment,
    find,
    read_all,
    register,
    set_paused,
    split_name,
)

__all__ = [
    "DISPATCHABLE",
    "DISPATCH_EVENT",
    "WAITING",
    "EnterState",
    "check_parameters",
    "deployment",
    "dispatch",
    "dispatch_run",
    "dispatch_values",
    "due_runs",
    "find",
    "forget_dispatches",
    "waiting_for_claim",
    "format_path",
    "holds_slot",
    "lock",
    "on_state_entered",
    "plan_new_run",
    "read_all",
    "register",
    "register_configured",
    "release_pool_slots",
    "release_slots",
    "runs_held_by",
    "set_paused",
    "specs_from_items",
    "split_name",
    "yaml_lines",
]
