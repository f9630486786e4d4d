"""`@flow`: the container of workflow logic, and the engine that runs one flow run.

Calling a flow creates a flow run (recorded by the engine service), validates its parameters
against the type hints, runs the body, and decides the final state by Prefect's documented rules:

- an exception → Failed;
- `None` → Failed if any task run or subflow run of this run failed, else Completed;
- futures or states returned (alone, or in a list, tuple or set) → Failed if any of them did not
  complete, else Completed with their values;
- a returned `State` → that state;
- anything else → Completed with that value as the result.

Calling a flow returns its result (raising its error if it failed); `return_state=True` gives the
final `State`. A flow called inside a flow is a subflow: a child run linked to a task run of the
parent that mirrors its state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

import structlog

from engine.errors import (
    ParameterValidationError,
    ResultNotSerializable,
    ResultTooLarge,
)
from engine.runtime import embedded
from engine.runtime.context import FlowRunContext, flow_run_ctx, task_run_ctx
from engine.runtime.delivery import delivered
from engine.runtime.failures import describe
from engine.runtime.futures import TaskFuture
from engine.runtime.parameters import bind, call_arguments, to_json_parameters, validate
from engine.runtime.results import to_storable
from engine.runtime.tasks import (
    UpstreamFailed,
    _failure_message,
    _flush_logs,
    _retry_delay,
    resolve,
)
from engine.schemas import FlowRun, LogRecord, OrchestrationResult
from engine.states import (
    AwaitingRetry,
    Completed,
    Failed,
    Pending,
    Running,
    State,
    StateDetails,
    StateType,
    utcnow,
)

P = ParamSpec("P")
R = TypeVar("R")

log = structlog.get_logger("flowrelay.runtime")

_body_pool: concurrent.futures.ThreadPoolExecutor | None = None
_body_pool_lock = threading.Lock()


def _body_executor() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for sync flow bodies, apart from task threads so nesting cannot starve them."""
    global _body_pool
    with _body_pool_lock:
        if _body_pool is None:
            _body_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=256, thread_name_prefix="flowrelay-flow"
            )
        return _body_pool


class Flow(Generic[P, R]):
    """A flow: a function whose calls become flow runs."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        retries: int = 0,
        retry_delay_seconds: float | list[float] = 0,
        timeout_seconds: float | None = None,
        tags: Iterable[str] | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        validate_parameters: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError("@flow must decorate a function")
        if retries < 0:
            raise ValueError(f"flow {name or fn.__name__!r}: retries must be >= 0, got {retries}")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn)
        self.version = version
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.timeout_seconds = timeout_seconds
        self.tags = list(tags or [])
        self.flow_run_name = flow_run_name
        self.should_validate_parameters = validate_parameters
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def with_options(self, **options: Any) -> Flow[P, R]:
        current = dict(
            name=self.name, description=self.description, version=self.version,
            retries=self.retries, retry_delay_seconds=self.retry_delay_seconds,
            timeout_seconds=self.timeout_seconds, tags=self.tags, flow_run_name=self.flow_run_name,
            validate_parameters=self.should_validate_parameters,
        )
        current.update(options)
        return Flow(self.fn, **current)  # type: ignore[arg-type]

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Coerce `parameters` (by name) through the type hints; raises ParameterValidationError."""
        return validate(self.fn, parameters, what=f"flow {self.name!r}")

    def deploy(self, name: str, **options: Any) -> Any:
        """Register a deployment of this flow: `my_flow.deploy("nightly", work_pool="etl",
        parameters={...}, concurrency_limit=1)`. Sync, or awaitable from async code."""
        from engine.runtime.deployments import deploy

        return deploy(self, name, **options)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"

    # --- calling ----------------------------------------------------------------------------
    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: Any, return_state: bool = ..., **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return_state = bool(kwargs.pop("return_state", False))
        if self.is_async:
            return self._call_async(args, kwargs, return_state)
        runner = FlowRunner(self, contextvars.copy_context())
        state = embedded.engine_loop().run(runner.run_call(args, kwargs))
        return state if return_state else state.result()

    async def _call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool) -> Any:
        runner = FlowRunner(self, contextvars.copy_context())
        state = await runner.run_call(args, kwargs)
        return state if return_state else state.result()

    async def run_existing(self, flow_run: FlowRun) -> State:
        """Run a flow run created elsewhere (a deployment run claimed by a worker)."""
        return await FlowRunner(self, contextvars.copy_context()).run(flow_run)


@overload
def flow(fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    description: str | None = None,
    version: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float | list[float] = 0,
    timeout_seconds: float | None = None,
    tags: Iterable[str] | None = None,
    flow_run_name: str | Callable[[], str] | None = None,
    validate_parameters: bool = True,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Decorate a function as a flow: `@flow` or `@flow(name=..., retries=..., ...)`."""
    if fn is None:
        return lambda f: Flow(f, **options)
    return Flow(fn, **options)


class FlowRunner:
    """Runs one flow run from creation to its final state."""

    def __init__(self, flow: Flow[..., Any], caller_context: contextvars.Context) -> None:
        self.flow = flow
        self.caller_context = caller_context
        self.parent: FlowRunContext | None = caller_context.get(flow_run_ctx)
        self.parent_task_run_id: uuid.UUID | None = None
        self.logs: list[LogRecord] = []
        #: the attempt of the run this runner executes (see `run`)
        self.fence: int | None = None

    # --- creation ---------------------------------------------------------------------------
    async def run_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> State:
        """A plain call: create the run from the call's arguments, then run it."""
        flow = self.flow
        bind_error: ParameterValidationError | None = None
        try:
            params = bind(flow.fn, args, kwargs)
        except ParameterValidationError as exc:
            params, bind_error = dict(kwargs), exc
        if self.parent is not None:
            try:
                params = {k: await resolve(v) for k, v in params.items()}
            except UpstreamFailed as exc:
                bind_error = ParameterValidationError(f"subflow {flow.name!r} did not run: {exc}")
            await self._create_parent_task_run()
        try:
            stored = to_json_parameters(params, what=f"flow {flow.name!r}")
        except ParameterValidationError as exc:
            stored, bind_error = {}, exc
        parent_flow_run_id = self.parent.flow_run.id if self.parent else None
        flow_run = await embedded.call(
            lambda api: api.create_flow_run(
                flow.name, stored, name=self._run_name(params), tags=flow.tags,
                parent_task_run_id=self.parent_task_run_id, parent_flow_run_id=parent_flow_run_id,
            )
        )
        if self.parent_task_run_id is not None:
            await self._set_parent_task_state(Running(child_flow_run_id=flow_run.id))
        return await self.run(flow_run, params=params, error=bind_error)

    def _run_name(self, params: dict[str, Any]) -> str | None:
        template = self.flow.flow_run_name
        if template is None:
            return None
        if callable(template):
            return str(template())
        try:
            return template.format(**params)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterValidationError(
                f"flow {self.flow.name!r}: flow_run_name {template!r} could not be formatted: {exc}"
            ) from None

    async def _create_parent_task_run(self) -> None:
        assert self.parent is not None
        task_key = f"subflow-{self.flow.name}"
        dynamic_key = self.parent.next_dynamic_key(task_key)
        self.parent_task_run_id = uuid.uuid4()
        parent_run_id = self.parent.flow_run.id
        await embedded.call(
            lambda api: api.create_task_run(
                parent_run_id, f"{self.flow.name}-{dynamic_key}", task_key,
                dynamic_key=dynamic_key, state=Pending(), id=self.parent_task_run_id,
            )
        )

    async def _set_parent_task_state(self, state: State) -> None:
        task_run_id = self.parent_task_run_id
        if task_run_id is None:
            return
        await embedded.call(lambda api: api.set_task_run_state(task_run_id, state))

    # --- running ----------------------------------------------------------------------------
    async def run(
        self,
        flow_run: FlowRun,
        *,
        params: dict[str, Any] | None = None,
        error: ParameterValidationError | None = None,
    ) -> State:
        flow = self.flow
        structlog.contextvars.bind_contextvars(flow_run_id=str(flow_run.id))
        # The attempt a worker's claim opened (None: no worker claimed this run): every report
        # of this run carries it, so the engine refuses them once the attempt is superseded.
        self.fence = flow_run.state.details.attempt if flow_run.state is not None else None
        if params is None:
            params = dict(flow_run.parameters)
        if error is None and flow.should_validate_parameters:
            try:
                params = flow.validate_parameters(params)
            except ParameterValidationError as exc:
                error = exc
        if error is not None:
            log.warning("flow run parameters are invalid", flow=flow.name, error=str(error))
            state = Failed(message=str(error)).with_exception(error)
            return await self._finish(flow_run, state)

        attempt = 0
        while True:
            worker = embedded.worker_details()
            running = Running(**worker, flow_retries=flow.retries, retry_delay_seconds=flow.retry_delay_seconds) if worker else Running()
            running.details.attempt = self.fence
            answer = await delivered(
                lambda: embedded.call(lambda api: api.set_flow_run_state(flow_run.id, running)),  # noqa: B023 - awaited at once
                what=f"the Running state of flow run {flow_run.name!r}",
            )
            if not answer.accepted:
                log.info("flow run not started", reason=answer.reason, flow_run=flow_run.name)
                return answer.state or Failed(message=answer.reason)
            self._log(flow_run, f"Beginning flow run {flow_run.name!r} for flow {flow.name!r}")
            global _bodies_running
            _bodies_running += 1
            try:
                state = await self._execute(flow_run, params)
            finally:
                _bodies_running -= 1
            if state.is_failed() and attempt < flow.retries:
                delay = _retry_delay(flow.retry_delay_seconds, attempt)
                attempt += 1
                retry = AwaitingRetry(
                    message=f"retry {attempt}/{flow.retries} in {delay:g} s after: {state.message}",
                    scheduled_time=utcnow() + dt.timedelta(seconds=delay),
                    retry_count=attempt,
                    attempt=self.fence,
                )
                await delivered(
                    lambda: embedded.call(lambda api: api.set_flow_run_state(flow_run.id, retry)),  # noqa: B023
                    what=f"the AwaitingRetry state of flow run {flow_run.name!r}",
                )
                self._log(flow_run, f"Flow run failed ({state.message}); {retry.message}")
                await asyncio.sleep(delay)
                continue
            return await self._finish(flow_run, state)

    async def _execute(self, flow_run: FlowRun, params: dict[str, Any]) -> State:
        flow = self.flow
        loop = asyncio.get_running_loop()
        ctx = FlowRunContext(flow=flow, flow_run=flow_run, loop=loop if flow.is_async else None)
        run_context = self.caller_context.copy()
        run_context.run(flow_run_ctx.set, ctx)
        run_context.run(task_run_ctx.set, None)
        run_context.run(structlog.contextvars.bind_contextvars, flow_run_id=str(flow_run.id))
        args, kwargs = call_arguments(flow.fn, params)
        timed_out = False
        state: State | None = None  # on success: decided below, once submitted work has finished
        stop_logs = asyncio.Event()
        sender = loop.create_task(_send_logs_while_running(ctx, stop_logs),
                                  name=f"flowrelay-logs-{flow_run.id}")
        try:
            pending: asyncio.Future[Any] | None = None
            try:
                if flow.is_async:
                    pending = loop.create_task(_await(flow.fn, args, kwargs), context=run_context)
                else:
                    pending = loop.run_in_executor(
                        _body_executor(), functools.partial(run_context.run, flow.fn, *args, **kwargs)
                    )
                value = await asyncio.wait_for(pending, flow.timeout_seconds)
            except Exception as exc:  # noqa: BLE001 - user code: every error becomes a Failed state
                if isinstance(exc, TimeoutError) and pending is not None and pending.cancelled():
                    # wait_for cancelled the body: our timeout (a TimeoutError the body raised
                    # itself is an ordinary failure)
                    timed_out = True
                    state = Failed(
                        message=f"Flow run {flow_run.name!r} exceeded its timeout of {flow.timeout_seconds:g} s"
                    )
                else:
                    state = Failed(
                        message=_failure_message(f"Flow run {flow_run.name!r}", exc)
                    ).with_exception(exc)
                    state.details.error = describe(exc)
            if not timed_out:
                # Structured: every task submitted in this run ends before the run does.
                await asyncio.gather(*(f.wait_async() for f in list(ctx.futures)), return_exceptions=True)
            stop_logs.set()
            await sender  # finishes the write in flight, if any; lines it could not send are kept
        finally:
            if not sender.done():  # leaving early (cancelled): the lines stay for whoever reports
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        if state is None:
            state = await final_state(value, ctx)
        for record in ctx.take_logs():
            self.logs.append(record)
        if state.details.error is not None:
            self._log_error(flow_run, state.details.error)
        return state

    async def _finish(self, flow_run: FlowRun, state: State) -> State:
        state.details.flow_run_id = flow_run.id
        state.details.attempt = self.fence
        if (state.details.error is None and state.exception is not None
                and state.type in (StateType.FAILED, StateType.CRASHED)
                and not isinstance(state.exception, ParameterValidationError)):
            # failed through its tasks (or a result that cannot be stored): the first cause
            state.details.error = describe(state.exception)
            self._log_error(flow_run, state.details.error)
        if state.is_completed():
            try:
                state.data = to_storable(
                    state.result(), max_bytes=_result_max_bytes(), what=f"flow run {flow_run.name!r}"
                )
            except (ResultNotSerializable, ResultTooLarge) as exc:
                state = Failed(message=str(exc)).with_exception(exc)
        self._log(flow_run, f"Finished in state {state!r}")
        # The logs travel with the final state: one call, one transaction.
        logs, self.logs = self.logs, []
        answer: OrchestrationResult = await delivered(
            lambda: embedded.call(lambda api: api.set_flow_run_state(flow_run.id, state, logs=logs)),
            what=f"the final state {state.name} of flow run {flow_run.name!r}",
        )
        if not answer.accepted and answer.state is not None:
            log.warning("final state rejected", proposed=state.name, current=answer.state.name,
                        reason=answer.reason)
        if self.parent is not None:
            mirror = State(
                type=state.type, name=state.name, message=state.message, data=state.data,
                details=StateDetails(child_flow_run_id=flow_run.id),
            )
            await self._set_parent_task_state(mirror)
            if state.exception is not None:
                mirror.with_exception(state.exception)
            self.parent.record(mirror)
        return state

    def _log_error(self, flow_run: FlowRun, error: dict[str, Any]) -> None:
        """As Prefect does: the traceback in the run's logs, as an ERROR line."""
        self._log(flow_run, f"Encountered exception during execution:\n{error['traceback']}",
                  level=logging.ERROR)

    def _log(self, flow_run: FlowRun, message: str, *, level: int = logging.INFO) -> None:
        self.logs.append(LogRecord(flow_run_id=flow_run.id, logger="flowrelay.flow_run", message=message,
                                   attempt=self.fence, level=level))
        log.log(level, message, flow_run_id=str(flow_run.id))



#: Flow bodies executing in this process (their tasks included); a worker's child stops a run
#: whose lease ran out only while one is (`workers.child_main`): a run whose body is done and
#: whose final state is on its way cannot run twice at once, and killing it would repeat it.
_bodies_running = 0


def bodies_running() -> int:
    """How many flow bodies are executing in this process now."""
    return _bodies_running


async def _await(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await fn(*args, **kwargs)


async def _send_logs_while_running(ctx: FlowRunContext, stop: asyncio.Event) -> None:
    """Every `runtime.log_flush_seconds` until `stop`: send the lines the run wrote meanwhile.
    A line that cannot be sent now is kept for the next try (or the final state): none is lost."""
    from engine.settings import get_settings

    every = get_settings().runtime.log_flush_seconds
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        logs = ctx.take_logs()
        if not logs:
            continue
        try:
            async with asyncio.timeout(max(every * 5, 5.0)):
                await embedded.call(lambda api: api.write_logs(logs))  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - the engine unreachable: keep them, try later
            ctx.give_back_logs(logs)
            log.debug("could not send log lines yet", lines=len(logs),
                      error=f"{type(exc).__name__}: {exc}")


def _result_max_bytes() -> int:
    from engine.settings import get_settings

    return get_settings().results.max_bytes


async def final_state(value: Any, ctx: FlowRunContext) -> State:
    """Prefect's final-state rules for a flow body that returned `value`."""
    await _flush_logs(ctx)
    if isinstance(value, State):
        if value.is_completed() and value.exception is None and not _has_value(value):
            value.with_value(value.data)
        return value
    if isinstance(value, TaskFuture):
        return _from_states([await value.wait_async()], value, single=True)
    if isinstance(value, list | tuple | set) and any(isinstance(v, TaskFuture | State) for v in value):
        states = [await v.wait_async() if isinstance(v, TaskFuture) else v
                  for v in value if isinstance(v, TaskFuture | State)]
        return _from_states(states, value, single=False)
    if value is None:
        failed = [s for s in ctx.child_states if s.is_final() and not s.is_completed()]
        if failed:
            state = Failed(message=f"{len(failed)}/{len(ctx.child_states)} states failed.")
            first = next((s.exception for s in failed if s.exception is not None), None)
            if first is not None:
                state.with_exception(first)
            return state
    return Completed().with_value(value)


def _from_states(states: list[State], value: Any, *, single: bool) -> State:
    failed = [s for s in states if not s.is_completed()]
    if failed:
        if single:
            message = f"returned task run ended {failed[0].name}: {failed[0].message}"
        else:
            message = f"{len(failed)}/{len(states)} states failed."
        state = Failed(message=message)
        first = next((s.exception for s in failed if s.exception is not None), None)
        if first is not None:
            state.with_exception(first)
        return state
    if single:
        return Completed().with_value(states[0].result())
    return Completed().with_value(_substitute(value))


def _substitute(value: Any) -> Any:
    def one(v: Any) -> Any:
        if isinstance(v, TaskFuture):
            return v.result()
        if isinstance(v, State):
            return v.result()
        return v

    items = [one(v) for v in value]
    return type(value)(items)


def _has_value(state: State) -> bool:
    return bool(state._has_value)  # noqa: SLF001
