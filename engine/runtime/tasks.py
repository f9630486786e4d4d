"""`@task`: units of work inside a flow run, with retries, timeouts, futures and mapping.

Inside a flow, calling a task runs it at once and returns its value; if the task fails the call
returns its `Failed` state instead of raising, so the flow's final state follows Prefect's
documented rules (a flow that returns None with a failed task is Failed; one that returns another
object is Completed). `.submit()` runs it concurrently and returns a `TaskFuture`; `.map()` submits
one run per element. Outside a flow a task is a plain function call.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import hashlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

import structlog

from engine.runtime import embedded
from engine.runtime.context import FlowRunContext, TaskRunContext, current_flow_run, task_run_ctx
from engine.runtime.failures import describe
from engine.runtime.futures import TaskFuture
from engine.runtime.results import try_storable
from engine.schemas import LogRecord
from engine.states import AwaitingRetry, Completed, Failed, Pending, Running, State, utcnow

P = ParamSpec("P")
R = TypeVar("R")

TASK_RESULT_MAX_BYTES = 64_000

log = structlog.get_logger("flowrelay.runtime")


class unmapped:  # noqa: N801 - Prefect's name
    """Wrap an argument of `.map()` that must be passed whole to every run."""

    def __init__(self, value: Any) -> None:
        self.value = value


class UpstreamFailed(Exception):
    pass


def _retry_delay(delay: float | list[float], attempt: int) -> float:
    if isinstance(delay, list):
        if not delay:
            return 0.0
        return float(delay[min(attempt, len(delay) - 1)])
    return float(delay)


def _failure_message(what: str, exc: BaseException) -> str:
    return f"{what} encountered an exception: {type(exc).__name__}: {exc}"


class Task(Generic[P, R]):
    """A task: a function whose calls inside a flow become task runs."""

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
    ) -> None:
        if not callable(fn):
            raise TypeError("@task must decorate a function")
        if retries < 0:
            raise ValueError(f"task {name or fn.__name__!r}: retries must be >= 0, got {retries}")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn)
        self.version = version
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.timeout_seconds = timeout_seconds
        self.tags = list(tags or [])
        self.is_async = inspect.iscoroutinefunction(fn)
        qual = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', self.name)}"
        self.task_key = f"{self.name}-{hashlib.sha1(qual.encode()).hexdigest()[:8]}"
        functools.update_wrapper(self, fn)

    def with_options(self, **options: Any) -> Task[P, R]:
        current = dict(
            name=self.name, description=self.description, version=self.version,
            retries=self.retries, retry_delay_seconds=self.retry_delay_seconds,
            timeout_seconds=self.timeout_seconds, tags=self.tags,
        )
        current.update(options)
        return Task(self.fn, **current)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Task(name={self.name!r})"

    # --- calling ----------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        ctx = current_flow_run()
        if ctx is None:
            return self.fn(*args, **kwargs)
        if self.is_async:
            if _has_running_loop():
                return self._call_async(ctx, args, kwargs)
            loop = embedded.user_loop()
        else:
            loop = embedded.engine_loop()
        state = loop.run(self._run(ctx, args, kwargs, uuid.uuid4(), contextvars.copy_context()))
        return _direct_result(state)

    async def _call_async(self, ctx: FlowRunContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = await self._run(ctx, args, kwargs, uuid.uuid4(), contextvars.copy_context())
        return _direct_result(state)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture:
        """Run the task concurrently; returns a `TaskFuture` at once."""
        ctx = current_flow_run()
        if ctx is None:
            raise RuntimeError(
                f"task {self.name!r}: .submit() works inside a flow run; call the task plainly "
                "or from a @flow"
            )
        task_run_id = uuid.uuid4()
        loop = embedded.user_loop() if self.is_async else embedded.engine_loop()
        cf = loop.submit(self._run(ctx, args, kwargs, task_run_id, contextvars.copy_context()))
        future = TaskFuture(cf, task_run_id, self.name)
        ctx.add_future(future)
        return future

    def map(self, *args: Any, **kwargs: Any) -> list[TaskFuture]:
        """Submit one run per element of the iterable arguments (`unmapped(x)` passes x whole)."""
        mapped_pos = {i: list(a) for i, a in enumerate(args) if _is_mappable(a)}
        mapped_kw = {k: list(v) for k, v in kwargs.items() if _is_mappable(v)}
        lengths = {len(v) for v in [*mapped_pos.values(), *mapped_kw.values()]}
        if not lengths:
            raise ValueError(f"task {self.name!r}: .map() needs at least one iterable argument")
        if len(lengths) > 1:
            raise ValueError(
                f"task {self.name!r}: .map() got iterables of different lengths {sorted(lengths)}"
            )
        futures = []
        for i in range(lengths.pop()):
            call_args = [mapped_pos[j][i] if j in mapped_pos else _unwrap(a) for j, a in enumerate(args)]
            call_kwargs = {k: mapped_kw[k][i] if k in mapped_kw else _unwrap(v) for k, v in kwargs.items()}
            futures.append(self.submit(*call_args, **call_kwargs))
        return futures

    # --- the task run engine ----------------------------------------------------------------
    async def _run(
        self,
        ctx: FlowRunContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_run_id: uuid.UUID,
        caller_context: contextvars.Context,
    ) -> State:
        dynamic_key = ctx.next_dynamic_key(self.task_key)
        run_name = f"{self.name}-{dynamic_key}"
        flow_run_id = ctx.flow_run.id
        await embedded.call(
            lambda api: api.create_task_run(
                flow_run_id, run_name, self.task_key, dynamic_key=dynamic_key, tags=self.tags,
                state=Pending(), id=task_run_id,
                parameters=_describe_inputs(args, kwargs),
            )
        )
        try:
            args, kwargs = await _resolve_all(args, kwargs)
        except UpstreamFailed as exc:
            state = Failed(message=f"Task run {run_name!r} did not run: {exc}")
            await self._set_state(task_run_id, state)
            ctx.record(state)
            return state

        attempt = 0
        while True:
            await self._set_state(task_run_id, Running())
            state = await self._execute(ctx, args, kwargs, task_run_id, run_name, caller_context)
            if state.is_failed() and attempt < self.retries:
                delay = _retry_delay(self.retry_delay_seconds, attempt)
                attempt += 1
                await self._set_state(
                    task_run_id,
                    AwaitingRetry(
                        message=f"retry {attempt}/{self.retries} in {delay:g} s after: {state.message}",
                        scheduled_time=utcnow() + dt.timedelta(seconds=delay),
                        retry_count=attempt,
                    ),
                )
                await asyncio.sleep(delay)
                continue
            break
        await self._set_state(task_run_id, state)
        await _flush_logs(ctx)
        ctx.record(state)
        return state

    async def _execute(
        self,
        ctx: FlowRunContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_run_id: uuid.UUID,
        run_name: str,
        caller_context: contextvars.Context,
    ) -> State:
        run_context = caller_context.copy()
        run_context.run(task_run_ctx.set, TaskRunContext(self, task_run_id, run_name, ctx))
        run_context.run(structlog.contextvars.bind_contextvars,
                        flow_run_id=str(ctx.flow_run.id), task_run_id=str(task_run_id))
        pending: asyncio.Future[Any] | None = None
        try:
            if self.is_async:
                coro = self.fn(*args, **kwargs)
                pending = asyncio.get_running_loop().create_task(
                    _as_coroutine(coro), context=run_context  # type: ignore[arg-type]
                )
            else:
                pending = asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(run_context.run, self.fn, *args, **kwargs)
                )
            value = await asyncio.wait_for(pending, self.timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - user code: every error becomes a Failed state
            if isinstance(exc, TimeoutError) and pending is not None and pending.cancelled():
                # wait_for cancelled the body: our timeout. A TimeoutError the task itself raised
                # (the body finished with it) is the task's failure like any other exception.
                return Failed(message=f"Task run {run_name!r} exceeded its timeout of {self.timeout_seconds:g} s")
            log.warning("task run failed", task_run=run_name, error=f"{type(exc).__name__}: {exc}",
                        flow_run_id=str(ctx.flow_run.id), task_run_id=str(task_run_id))
            failed = Failed(message=_failure_message(f"Task run {run_name!r}", exc)).with_exception(exc)
            # The task run keeps its own traceback; the flow run's logs get it as an ERROR line
            # of that task run, as Prefect writes it.
            failed.details.error = describe(exc)
            ctx.add_log(LogRecord(
                flow_run_id=ctx.flow_run.id, task_run_id=task_run_id, level=logging.ERROR,
                logger="flowrelay.task_run",
                message=f"Task run {run_name!r} - Encountered exception during execution:\n"
                        f"{failed.details.error['traceback']}",
            ))
            return failed
        if isinstance(value, State):
            return value
        state = Completed(data=None).with_value(value)
        state.data = try_storable(value, max_bytes=TASK_RESULT_MAX_BYTES)
        return state

    async def _set_state(self, task_run_id: uuid.UUID, state: State) -> None:
        await embedded.call(lambda api: api.set_task_run_state(task_run_id, state))


@overload
def task(fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    description: str | None = None,
    version: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float | list[float] = 0,
    timeout_seconds: float | None = None,
    tags: Iterable[str] | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Decorate a function as a task: `@task` or `@task(name=..., retries=..., ...)`."""
    if fn is None:
        return lambda f: Task(f, **options)
    return Task(fn, **options)


# --- helpers ---------------------------------------------------------------------------------
def _direct_result(state: State) -> Any:
    return state.result() if state.is_completed() else state


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _is_mappable(value: Any) -> bool:
    if isinstance(value, unmapped | str | bytes | dict):
        return False
    return isinstance(value, Iterable)


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, unmapped) else value


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _describe_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the task run was given, for display: upstream runs by id, values by short repr."""

    def one(v: Any) -> Any:
        if isinstance(v, TaskFuture):
            return {"__upstream__": str(v.task_run_id)}
        if isinstance(v, State):
            return {"__state__": v.name}
        text = repr(v)
        return text if len(text) <= 200 else text[:197] + "..."

    out = {f"arg{i}": one(a) for i, a in enumerate(args)}
    out.update({k: one(v) for k, v in kwargs.items()})
    return out


async def resolve(value: Any) -> Any:
    """Replace futures and states (also inside lists, tuples, sets, dicts) by their values."""
    if isinstance(value, TaskFuture):
        state = await value.wait_async()
        return _value_of(state, value.name)
    if isinstance(value, State):
        return _value_of(value, value.name)
    if isinstance(value, list | tuple | set):
        items = [await resolve(v) for v in value]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        return {k: await resolve(v) for k, v in value.items()}
    return value


def _value_of(state: State, name: str) -> Any:
    if not state.is_completed():
        raise UpstreamFailed(f"upstream {name!r} ended {state.name}: {state.message}")
    return state.result()


async def _resolve_all(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return tuple([await resolve(a) for a in args]), {k: await resolve(v) for k, v in kwargs.items()}


async def _flush_logs(ctx: FlowRunContext) -> None:
    logs = ctx.take_logs()
    if logs:
        await embedded.call(lambda api: api.write_logs(logs))
