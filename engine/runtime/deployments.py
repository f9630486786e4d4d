"""Flow-of-flows from Python: `run_deployment`, `create_flow_run`, `wait_for_flow_run`,
`emit_event`.

Each works called plainly from sync code and awaited from async code, so
`await asyncio.gather(run_deployment("B/x"), run_deployment("C/x"))` runs two children at once.
Waiting listens to the run's events; it never polls. Called inside a flow, a task run of the
caller mirrors the child's state and the child records its parent; the idempotency key defaults
to one derived from the calling run, so a retried parent never launches a second child.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from engine.errors import ObjectNotFound, RunCancelled, RunCrashed, RunFailed
from engine.runtime import embedded
from engine.runtime.context import FlowRunContext, current_flow_run, current_task_run
from engine.runtime.delivery import delivered
from engine.schemas import Event, FlowRun
from engine.states import Completed, Pending, Running, State, StateDetails, StateType

P = ParamSpec("P")
T = TypeVar("T")


def sync_compatible(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Any]:
    """Return a coroutine when called from async code, the result when called from sync code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return embedded.engine_loop().run(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    return wrapper


class _Mirror:
    """The task run of the calling flow that mirrors a launched child run."""

    def __init__(self, ctx: FlowRunContext | None, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.task_run_id: uuid.UUID | None = None
        self.parent_task_run_id: uuid.UUID | None = None
        self.idempotency_key: str | None = None
        task_ctx = current_task_run()
        if ctx is None:
            return
        task_key = f"{label}"
        dynamic_key = ctx.next_dynamic_key(task_key)
        self.idempotency_key = f"flow-run:{ctx.flow_run.id}:{task_key}:{dynamic_key}"
        if task_ctx is not None:
            self.parent_task_run_id = task_ctx.task_run_id
        else:
            self.task_run_id = uuid.uuid4()
            self.parent_task_run_id = self.task_run_id
            self.name = f"{label}-{dynamic_key}"
            self.task_key = task_key
            self.dynamic_key = dynamic_key

    async def create(self) -> None:
        if self.ctx is None or self.task_run_id is None:
            return
        flow_run_id = self.ctx.flow_run.id
        task_run_id = self.task_run_id
        await embedded.call(lambda api: api.create_task_run(
            flow_run_id, self.name, self.task_key, dynamic_key=self.dynamic_key,
            state=Pending(), id=task_run_id,
        ))

    async def set(self, state: State) -> None:
        if self.task_run_id is None:
            return
        task_run_id = self.task_run_id
        await embedded.call(lambda api: api.set_task_run_state(task_run_id, state, force=True))

    async def launched(self, run: FlowRun) -> None:
        """Launch only (`create_flow_run`, `run_deployment(wait=False)`): the task run's work is
        done once the child exists — Completed with the child's id, as Prefect 1's
        `create_flow_run` task — instead of staying Running in a parent that has finished.
        Mirroring the child's final state is `wait_for_flow_run`'s (its own task run)."""
        await self.set(Completed(data=str(run.id), child_flow_run_id=run.id))

    async def mirror(self, run: FlowRun) -> None:
        if self.ctx is None or run.state is None:
            return
        state = State(
            type=run.state.type, name=run.state.name, message=run.state.message,
            data=run.result, details=StateDetails(child_flow_run_id=run.id),
        )
        await self.set(state)
        if state.is_final():
            if not state.is_completed():
                state.with_exception(_error(run))
            else:
                state.with_value(run.result)
            self.ctx.record(state)


def _error(run: FlowRun) -> RunFailed:
    state = run.state
    name = state.name if state else "unknown"
    cls = {StateType.CRASHED: RunCrashed, StateType.CANCELLED: RunCancelled}.get(
        state.type if state else StateType.FAILED, RunFailed
    )
    message = state.message if state and state.message else "no message"
    return cls(f"flow run {run.name!r} of deployment {run.deployment_name!r} ended {name}: {message}")


def _default_timeout(timeout: float | None) -> float | None:
    if timeout is not None:
        return timeout
    from engine.settings import get_settings

    return get_settings().runtime.wait_timeout_seconds


async def _wait(
    flow_run_id: uuid.UUID,
    timeout: float | None,
    flow_name: str | None = None,
    created_since: float | None = None,
) -> FlowRun:
    async def on_engine_loop(api: Any) -> FlowRun:
        waiter = await embedded.waiter()
        return await waiter.wait(  # type: ignore[no-any-return]
            api, flow_run_id, timeout, flow_name=flow_name, created_since=created_since
        )

    return await embedded.call(on_engine_loop)


async def _launch(
    name: str,
    parameters: dict[str, Any] | None,
    *,
    idempotency_key: str | None,
    scheduled_time: dt.datetime | None,
    flow_run_name: str | None,
    tags: list[str] | None,
    mirror: _Mirror,
) -> FlowRun:
    ctx = mirror.ctx
    await mirror.create()
    key = idempotency_key or mirror.idempotency_key
    # The request's identity: sent again after a lost reply (broker restarting, no reply in
    # time), it returns the run the first one made instead of making a second.
    run_id = uuid.uuid4()
    run: FlowRun = await delivered(
        lambda: embedded.call(lambda api: api.create_deployment_run(
            name, parameters or {}, idempotency_key=key, scheduled_time=scheduled_time,
            flow_run_name=flow_run_name, tags=tags, parent_task_run_id=mirror.parent_task_run_id,
            parent_flow_run_id=ctx.flow_run.id if ctx else None, id=run_id,
        )),
        what=f"the creation of a run of deployment {name!r}",
    )
    await mirror.set(Running(child_flow_run_id=run.id))
    return run


@sync_compatible
async def run_deployment(
    name: str,
    parameters: dict[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    idempotency_key: str | None = None,
    flow_run_name: str | None = None,
    scheduled_time: dt.datetime | None = None,
    tags: list[str] | None = None,
) -> FlowRun:
    """Run the latest version of deployment `name` ("FLOW/DEPLOYMENT"); with `wait`, return the
    run once it is final (waiting at most `timeout` seconds, then `WaitTimeout`). `timeout=0`
    returns at once, like `wait=False` (Prefect's idiom for "launch, don't wait")."""
    mirror = _Mirror(current_flow_run(), f"run_deployment-{name}")
    since = time.monotonic()
    run = await _launch(
        name, parameters, idempotency_key=idempotency_key, scheduled_time=scheduled_time,
        flow_run_name=flow_run_name, tags=tags, mirror=mirror,
    )
    if not wait or timeout == 0:
        await mirror.launched(run)
        return run
    if run.state is None or not run.state.is_final():
        # With a key the run may be older than this call, its events long gone: read it first.
        reused = idempotency_key is not None or mirror.idempotency_key is not None
        run = await _wait(run.id, _default_timeout(timeout), run.flow_name, None if reused else since)
    await mirror.mirror(run)
    return run


@sync_compatible
async def create_flow_run(
    name: str | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    flow_name: str | None = None,
    deployment_name: str | None = None,
    idempotency_key: str | None = None,
    flow_run_name: str | None = None,
    scheduled_time: dt.datetime | None = None,
    tags: list[str] | None = None,
) -> uuid.UUID:
    """Create a run of a deployment and return its id at once (pair with `wait_for_flow_run`).

    The deployment is `name` ("FLOW/DEPLOYMENT"), or `flow_name` + `deployment_name`, or just
    `flow_name` when that flow has exactly one deployment."""
    target = await _resolve_deployment(name, flow_name, deployment_name)
    mirror = _Mirror(current_flow_run(), f"create_flow_run-{target}")
    run = await _launch(
        target, parameters, idempotency_key=idempotency_key, scheduled_time=scheduled_time,
        flow_run_name=flow_run_name, tags=tags, mirror=mirror,
    )
    await mirror.launched(run)
    return run.id


@sync_compatible
async def wait_for_flow_run(
    flow_run_id: uuid.UUID | str,
    raise_final_state: bool = False,
    timeout: float | None = None,
) -> FlowRun:
    """Wait (on events) until the run is final and return it; with `raise_final_state`, a run
    that did not complete raises (`RunFailed`, `RunCrashed`, `RunCancelled`)."""
    run_id = flow_run_id if isinstance(flow_run_id, uuid.UUID) else uuid.UUID(str(flow_run_id))
    mirror = _Mirror(current_flow_run(), "wait_for_flow_run")
    await mirror.create()
    if mirror.task_run_id is not None:
        await mirror.set(Running(child_flow_run_id=run_id))
    run = await _wait(run_id, _default_timeout(timeout))
    await mirror.mirror(run)
    if raise_final_state and run.state is not None and not run.state.is_completed():
        raise _error(run)
    return run


async def _resolve_deployment(name: str | None, flow_name: str | None, deployment_name: str | None) -> str:
    if name:
        return name
    if flow_name and deployment_name:
        return f"{flow_name}/{deployment_name}"
    if not flow_name:
        raise ValueError("create_flow_run needs a deployment: name='FLOW/DEPLOYMENT' or flow_name=")
    deployments = await embedded.call(lambda api: api.read_deployments())
    full = [d.full_name for d in deployments if d.flow_name == flow_name]
    if len(full) == 1:
        return full[0]
    if not full:
        raise ObjectNotFound(f"flow {flow_name!r} has no deployment: deploy it first")
    raise ValueError(f"flow {flow_name!r} has several deployments ({', '.join(full)}): name one")


@sync_compatible
async def deploy(
    flow_obj: Any,
    name: str,
    *,
    work_pool: str = "default",
    parameters: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
    concurrency_limit: int | None = None,
    schedules: list[dict[str, Any]] | None = None,
    entrypoint: str | None = None,
    root: str | None = None,
) -> Any:
    """Register (or re-register, bumping its version) a deployment of `flow_obj` from Python.
    The entrypoint defaults to the flow's source file and function name; a file entrypoint's
    project (`root`, default: the nearest folder with pyproject.toml or .git) is packed and
    uploaded for the workers (`engine.code`)."""
    import inspect

    from engine.schemas import DeploymentSpec

    if entrypoint is None:
        source = inspect.getsourcefile(flow_obj.fn)
        if source is None:
            raise ValueError(f"flow {flow_obj.name!r}: cannot tell its source file; pass entrypoint=")
        entrypoint = f"{source}:{flow_obj.fn.__name__}"
    if parameters:
        from engine.deployments.specs import check_parameters

        check_parameters(flow_obj, parameters, what=f"deployment {flow_obj.name}/{name}")
    spec = DeploymentSpec(
        name=name, flow_name=flow_obj.name, entrypoint=entrypoint, work_pool=work_pool,
        parameters=parameters or {}, tags=tags or [], description=description or flow_obj.description,
        concurrency_limit=concurrency_limit, schedules=schedules or [], root=root,
    )
    from engine.code import pack_specs, upload

    packed, bundles = await asyncio.to_thread(pack_specs, [spec])
    for bundle in bundles:
        await embedded.call(functools.partial(upload, bundle=bundle))
    return await embedded.call(lambda api: api.register_deployment(packed[0]))


@sync_compatible
async def emit_event(
    event: str,
    resource: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    related: list[dict[str, Any]] | None = None,
) -> Event:
    """Publish a custom event (committed to the outbox, then relayed to the broker). Inside a run,
    the run is added to `related` with role `flow-run`."""
    if not event or not isinstance(event, str):
        raise ValueError("emit_event needs an event name such as 'batch.ready'")
    related = list(related or [])
    ctx = current_flow_run()
    if ctx is not None:
        related.append({"id": f"flow-run/{ctx.flow_run.id}", "role": "flow-run",
                        "flow": ctx.flow_run.flow_name})
    evt = Event(event=event, resource=resource or {"id": event}, payload=payload or {}, related=related)
    await embedded.call(lambda api: api.emit_event(evt))
    return evt
