"""The dispatch message a worker consumes from its pool queue (docs/protocol.md, "Work").

The engine publishes, with routing key ``dispatch.<pool>``, an event whose payload names the run::

    {"event": "flow-run.dispatched", "resource": {"id": "flow-run/<id>", ...},
     "payload": {"flow_run_id": "<id>", "deployment": "flow/name",
                 "entrypoint": "flows/etl.py:etl", "work_pool": "default"}}

`parse_dispatch` is pure: bytes in, `Dispatch` out, or `BadDispatch` saying what is wrong.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from workers.errors import BadDispatch

__all__ = ["Dispatch", "encode_dispatch", "parse_dispatch"]

DISPATCH_EVENT = "flow-run.dispatched"


@dataclass(frozen=True)
class Dispatch:
    flow_run_id: uuid.UUID
    entrypoint: str
    deployment: str | None = None
    work_pool: str | None = None
    #: Claims made of the run before this dispatch was written (None: not said).
    attempts: int | None = None
    #: The attempt the run's state belonged to when it was dispatched (None: none, or ended).
    attempt: int | None = None
    #: The code to run, as the deployment recorded it when the run was dispatched
    #: (``{"bundle": "sha256:..."}``, ``{"package": ..., "version": ...}``; None: as found).
    code: dict[str, Any] | None = None


def parse_dispatch(body: bytes) -> Dispatch:
    """The dispatch in `body`; `BadDispatch` naming the problem if it is not one."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadDispatch(f"dispatch message is not JSON: {exc}") from None
    except RecursionError:  # `[[[[...`: not a ValueError
        raise BadDispatch("dispatch message is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise BadDispatch(f"dispatch message must be a JSON object, not {type(data).__name__}")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise BadDispatch("dispatch message has no 'payload' object")
    raw_id = payload.get("flow_run_id")
    if not isinstance(raw_id, str) or not raw_id:
        raise BadDispatch("dispatch payload has no 'flow_run_id' string")
    try:
        flow_run_id = uuid.UUID(raw_id)
    except ValueError:
        raise BadDispatch(f"dispatch payload: flow_run_id {raw_id!r} is not a UUID") from None
    entrypoint = payload.get("entrypoint")
    if not isinstance(entrypoint, str) or ":" not in entrypoint:
        raise BadDispatch(
            f"dispatch payload of flow run {flow_run_id}: 'entrypoint' must be a string such as "
            f"'flows/etl.py:etl', got {entrypoint!r}"
        )
    code = payload.get("code")
    if code is not None and not isinstance(code, dict):
        raise BadDispatch(f"dispatch payload of flow run {flow_run_id}: 'code' must be an object, "
                          f"got {type(code).__name__}")
    bundle = code.get("bundle") if code else None
    if bundle is not None and not isinstance(bundle, str):
        raise BadDispatch(f"dispatch payload of flow run {flow_run_id}: code.bundle must be a hash string")
    return Dispatch(
        code=code,
        flow_run_id=flow_run_id,
        entrypoint=entrypoint,
        deployment=_optional_str(payload, "deployment"),
        work_pool=_optional_str(payload, "work_pool"),
        attempts=_optional_count(payload, "attempts"),
        attempt=_optional_count(payload, "attempt"),
    )


def _optional_count(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadDispatch(f"dispatch payload: {key!r} must be a count (an integer >= 0), got {value!r}")
    return value


def _optional_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def encode_dispatch(
    flow_run_id: uuid.UUID,
    entrypoint: str,
    *,
    work_pool: str,
    deployment: str | None = None,
    attempts: int | None = None,
    attempt: int | None = None,
    code: dict[str, Any] | None = None,
) -> bytes:
    """A dispatch body as the engine writes it (for tests, tools and hand-replays)."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "event": DISPATCH_EVENT,
            "resource": {"id": f"flow-run/{flow_run_id}"},
            "payload": {
                "flow_run_id": str(flow_run_id),
                "deployment": deployment,
                "entrypoint": entrypoint,
                "work_pool": work_pool,
                **({"attempts": attempts} if attempts is not None else {}),
                **({"attempt": attempt} if attempt is not None else {}),
                **({"code": code} if code is not None else {}),
            },
        }
    ).encode()
