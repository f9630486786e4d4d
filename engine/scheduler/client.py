"""Reaching the scheduler's commands from the CLI: in process (embedded mode) or over the
broker's RPC (`flowrelay server`). Call on the engine loop (`embedded.call`)."""

from __future__ import annotations

from typing import Any

from engine.errors import FlowrelayError

__all__ = ["set_schedule_active"]


async def set_schedule_active(name: str, active: bool, schedule: str | None) -> dict[str, Any]:
    """Pause or resume schedule `schedule` (id, or 1-based position; None: all) of deployment
    `name`: ``{"deployment": {...}, "changed": [ids]}``."""
    from engine.remote import RemoteEngine
    from engine.runtime import embedded

    api = await embedded._get_api()
    params = {"name": name, "active": active, "schedule": schedule}
    if isinstance(api, RemoteEngine):
        answer: dict[str, Any] = await api.call("set_schedule_active", **params)
        return answer
    server = embedded._server
    if server is None:
        raise FlowrelayError("no scheduler runs in this process")
    local: dict[str, Any] = await server.scheduler.set_schedule_active(**params)
    return local
