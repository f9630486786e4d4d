"""Running an automation's actions for one firing.

Each action's fields are rendered (sandboxed templates, `automations.templates`) against the
firing's context: `event`, `events` (child name → event), `firing`, `correlation`, `automation`.
Every side effect is keyed by the firing so that running the same firing twice (a restart
between acting and recording, two replicas) has no second effect:

- run-deployment: idempotency key `automation:<name>:<firing id>:<action index>` (or the
  action's own, rendered); the run records `caused_by` (automation, firing, events);
- emit-event: the event id is derived from the firing and the action index (stored once);
- pause/resume, state changes: idempotent by nature.

A failing action (template error, unknown deployment, webhook refused) is reported in its
`ActionResult`, and the remaining actions still run.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from automations.errors import ActionError, TemplateError, WebhookRefused
from automations.models import (
    Action,
    CallWebhookAction,
    CancelFlowRunAction,
    ChangeFlowRunStateAction,
    EmitEventAction,
    PauseAutomationAction,
    PauseDeploymentAction,
    ResumeAutomationAction,
    ResumeDeploymentAction,
    RunDeploymentAction,
)
from automations.templates import render
from engine.errors import FlowrelayError
from engine.ports import EngineAPI
from engine.schemas import Event
from engine.states import STATE_NAMES, State, StateType, utcnow

log = structlog.get_logger("flowrelay.automations")

__all__ = ["ActionResult", "ActionRunner", "firing_uuid", "host_allowed"]

_NAMESPACE = uuid.UUID("5a0c1f3e-8f0d-4a55-9a7e-6b1f7f2c9d10")


def firing_uuid(firing_id: str, index: int, what: str = "action") -> uuid.UUID:
    """A stable uuid for the `index`-th effect of firing `firing_id`."""
    return uuid.uuid5(_NAMESPACE, f"{firing_id}:{what}:{index}")


@dataclass
class ActionResult:
    index: int
    type: str
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "type": self.type, "ok": self.ok}
        if self.detail:
            out["detail"] = self.detail
        if self.error:
            out["error"] = self.error
        return out


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`host` is on the allow-list (exact names, or `*.example.com` patterns), case-insensitive."""
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower().rstrip(".")) for pattern in allowed)


def _run_id(value: Any, where: str) -> uuid.UUID:
    text = str(value).strip().removeprefix("flow-run/")
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ActionError(f"{where}: {value!r} is not a flow run id") from None


class ActionRunner:
    """Runs actions against the engine (`EngineAPI`) and the automations service itself."""

    def __init__(
        self,
        api: EngineAPI,
        *,
        set_automation_enabled: Callable[[str, bool], Awaitable[Any]],
        webhook_allow_hosts: list[str],
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        outage_timeout: float = 300.0,
    ) -> None:
        self.api = api
        self.set_automation_enabled = set_automation_enabled
        self.webhook_allow_hosts = list(webhook_allow_hosts)
        self.timeout = timeout
        #: how long an action is tried again while the database is unavailable (its effects are
        #: keyed by the firing, so a second try never doubles them)
        self.outage_timeout = outage_timeout
        self._transport = transport

    async def run_all(
        self,
        automation: str,
        firing_id: str,
        actions: list[Action],
        context: Mapping[str, Any],
        *,
        caused_by: dict[str, Any],
    ) -> list[ActionResult]:
        results = []
        for index, action in enumerate(actions):
            results.append(
                await self.run_one(automation, firing_id, index, action, context, caused_by=caused_by)
            )
        return results

    async def run_one(
        self,
        automation: str,
        firing_id: str,
        index: int,
        action: Action,
        context: Mapping[str, Any],
        *,
        caused_by: dict[str, Any],
    ) -> ActionResult:
        where = f"automation {automation!r} action {index} ({action.type})"
        try:
            detail = await self._run_waiting_out_outages(
                automation, firing_id, index, action, context, caused_by, where
            )
        except (TemplateError, ActionError) as exc:
            return ActionResult(index, action.type, False, error=str(exc))
        except TimeoutError:
            return ActionResult(index, action.type, False, error=f"{where}: timed out after {self.timeout:g}s")
        except FlowrelayError as exc:
            return ActionResult(index, action.type, False, error=f"{where}: {exc}")
        except Exception as exc:  # an action must never take the rule engine down
            log.exception("action failed", automation=automation, action=action.type)
            return ActionResult(index, action.type, False, error=f"{where}: {type(exc).__name__}: {exc}")
        return ActionResult(index, action.type, True, detail=detail)

    async def _run_waiting_out_outages(
        self,
        automation: str,
        firing_id: str,
        index: int,
        action: Action,
        context: Mapping[str, Any],
        caused_by: dict[str, Any],
        where: str,
    ) -> Any:
        """`_run`, each try bounded by the action timeout; tried again with backoff while the
        database is unavailable, for up to `outage_timeout` (an outage is a wait, not a failed
        firing)."""
        from sqlalchemy.exc import SQLAlchemyError

        from engine.db.group_commit import is_unavailable
        from engine.errors import EngineUnavailable

        deadline = time.monotonic() + self.outage_timeout
        pause = 0.2
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._run(automation, firing_id, index, action, context, caused_by, where)
            except Exception as exc:
                # The engine's own database, not a webhook's host (that one is the webhook's
                # failure: reported as such).
                engine_side = isinstance(exc, EngineUnavailable) or (
                    isinstance(exc, SQLAlchemyError) and is_unavailable(exc)
                )
                if not engine_side or action.type == "call-webhook":
                    raise
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("the database is unavailable; running the action again",
                            automation=automation, action=action.type, retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _run(
        self,
        automation: str,
        firing_id: str,
        index: int,
        action: Action,
        context: Mapping[str, Any],
        caused_by: dict[str, Any],
        where: str,
    ) -> dict[str, Any]:
        event = context.get("event") or {}

        def field(value: Any, name: str) -> Any:
            return render(value, context, where=f"{where}: {name}")

        if isinstance(action, RunDeploymentAction):
            name = str(field(action.deployment, "deployment"))
            parameters = field(action.parameters, "parameters")
            if not isinstance(parameters, dict):
                raise ActionError(f"{where}: parameters rendered to {type(parameters).__name__}, not a mapping")
            key = (
                str(field(action.idempotency_key, "idempotency_key"))
                if action.idempotency_key
                else f"automation:{automation}:{firing_id}:{index}"
            )
            scheduled = utcnow() + action.start_in if action.start_in else None
            run = await self.api.create_deployment_run(
                name,
                parameters,
                idempotency_key=key,
                scheduled_time=scheduled,
                flow_run_name=field(action.flow_run_name, "flow_run_name") if action.flow_run_name else None,
                tags=[str(t) for t in field(action.tags, "tags")] or None,
                caused_by=caused_by,
            )
            return {"flow_run_id": str(run.id), "deployment": name, "flow_run_name": run.name}
        if isinstance(action, PauseDeploymentAction | ResumeDeploymentAction):
            name = (
                str(field(action.deployment, "deployment"))
                if action.deployment
                else str((event.get("resource") or {}).get("deployment") or "")
            )
            if not name:
                raise ActionError(f"{where}: no deployment given and the event's resource has none")
            paused = isinstance(action, PauseDeploymentAction)
            await self.api.set_deployment_paused(name, paused)
            return {"deployment": name, "paused": paused}
        if isinstance(action, CancelFlowRunAction):
            run_id = _run_id(field(action.flow_run, "flow_run"), where)
            current = await self.api.read_flow_run(run_id)
            if current.state is not None and current.state.is_final():
                return {"flow_run_id": str(run_id), "state": current.state.name, "unchanged": True}
            running = current.state is not None and current.state.type is StateType.RUNNING
            target = State(
                type=StateType.CANCELLING if running else StateType.CANCELLED,
                message=field(action.message, "message") if action.message else f"cancelled by automation {automation!r}",
            )
            result = await self.api.set_flow_run_state(run_id, target, force=True)
            return {"flow_run_id": str(run_id), "state": result.state.name if result.state else None}
        if isinstance(action, ChangeFlowRunStateAction):
            run_id = _run_id(field(action.flow_run, "flow_run"), where)
            target = State(
                type=STATE_NAMES[action.state], name=action.state,
                message=field(action.message, "message") if action.message else f"set by automation {automation!r}",
            )
            result = await self.api.set_flow_run_state(run_id, target, force=True)
            return {"flow_run_id": str(run_id), "state": result.state.name if result.state else None}
        if isinstance(action, EmitEventAction):
            emitted = Event(
                id=firing_uuid(firing_id, index, "event"),
                event=str(field(action.event, "event")),
                resource=field(action.resource, "resource"),
                payload=field(action.payload, "payload"),
                related=field(action.related, "related")
                + [{"id": f"automation/{automation}", "role": "automation"}],
            )
            await self.api.emit_event(emitted)
            return {"event_id": str(emitted.id), "event": emitted.event}
        if isinstance(action, PauseAutomationAction | ResumeAutomationAction):
            target_name = action.automation or automation
            enabled = isinstance(action, ResumeAutomationAction)
            await self.set_automation_enabled(target_name, enabled)
            return {"automation": target_name, "enabled": enabled}
        if isinstance(action, CallWebhookAction):
            return await self._webhook(action, context, field, where)
        raise ActionError(f"{where}: unknown action type")  # pragma: no cover - exhaustive union

    async def _webhook(
        self,
        action: CallWebhookAction,
        context: Mapping[str, Any],
        field: Callable[[Any, str], Any],
        where: str,
    ) -> dict[str, Any]:
        url = str(field(action.url, "url"))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused(f"{where}: {url!r} is not an http(s) URL")
        if not host_allowed(parts.hostname, self.webhook_allow_hosts):
            raise WebhookRefused(
                f"{where}: host {parts.hostname!r} is not on automations.webhook_allow_hosts "
                f"({', '.join(self.webhook_allow_hosts) or 'empty'}); add it there to allow it"
            )
        body = field(action.body, "body") if action.body is not None else context.get("event")
        headers = {str(k): str(v) for k, v in field(action.headers, "headers").items()}
        content = None if action.method == "GET" else json.dumps(body, default=str).encode()
        if content is not None:
            headers.setdefault("content-type", "application/json")
        timeout = action.timeout.total_seconds()
        attempts = action.retries + 1
        last_error = ""
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=self._transport
        ) as client:
            for attempt in range(attempts):
                try:
                    response = await client.request(action.method, url, content=content, headers=headers)
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_redirect:
                        target = response.headers.get("location", "")
                        raise WebhookRefused(
                            f"{where}: {url} answered {response.status_code} redirecting to "
                            f"{target!r}; redirects are not followed"
                        )
                    if response.status_code < 500:
                        if response.status_code >= 400:
                            raise ActionError(f"{where}: {url} answered {response.status_code}")
                        return {"url": url, "status": response.status_code, "attempts": attempt + 1}
                    last_error = f"answered {response.status_code}"
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise ActionError(f"{where}: {url} failed after {attempts} attempt(s): {last_error}")


