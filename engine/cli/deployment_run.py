"""``flowrelay deployment run NAME``: launch the latest version of a deployment, optionally
watching its states and logs (from events, not polling) until it is final."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Annotated, Any

import typer

from engine.cli import output
from engine.cli.run_cmd import PARAM_HELP, parse_params
from engine.durations import parse_duration as _parse_duration
from engine.runtime import embedded
from engine.runtime.failures import format_error
from engine.schemas import FlowRun
from engine.states import utcnow


def parse_duration(text: str) -> dt.timedelta:
    """'10m', '2s', '1h30m', '1.5h', '90' (seconds) → timedelta."""
    return _parse_duration(text, what="--start-in")


def run(
    name: Annotated[str, typer.Argument(help="The deployment, as FLOW/DEPLOYMENT.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help=PARAM_HELP, metavar="KEY=VALUE")
    ] = None,
    params_json: Annotated[
        str | None, typer.Option("--params-json", help="All parameters as one JSON object.")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Stream states and logs until the run is final; exit 1 if it did not complete.")
    ] = False,
    start_in: Annotated[
        str | None, typer.Option("--start-in", help="Start later: 30s, 10m, 2h, 1h30m.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="The same key always returns the same run.")
    ] = None,
    flow_run_name: Annotated[str | None, typer.Option("--name", help="The run's name.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --watch: give up after this many seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the created (or, with --watch, final) run as JSON.")] = False,
) -> None:
    """Run a deployment (its latest version)."""
    params = parse_params(param, params_json)
    embedded.run_inline_workers(watch)  # embedded mode: --watch runs it right here
    scheduled = utcnow() + parse_duration(start_in) if start_in else None

    async def create(api: Any) -> FlowRun:
        return await api.create_deployment_run(  # type: ignore[no-any-return]
            name, params, idempotency_key=idempotency_key, scheduled_time=scheduled,
            flow_run_name=flow_run_name,
        )

    run_obj: FlowRun = embedded.call_sync(create)
    if not watch:
        if as_json:
            output.print_json(run_obj)
        else:
            typer.echo(f"created flow run {run_obj.name!r} ({run_obj.id}) of {name}: {run_obj.state_name}")
        return
    if not as_json:
        typer.echo(f"created flow run {run_obj.name!r} ({run_obj.id}) of {name}")
    final = embedded.engine_loop().run(_watch(run_obj.id, timeout, quiet=as_json))
    if as_json:
        output.print_json(final)
    if final.state is None or not final.state.is_completed():
        raise typer.Exit(1)


async def _watch(run_id: uuid.UUID, timeout: float | None, *, quiet: bool) -> FlowRun:
    async def follow(api: Any) -> FlowRun:
        waiter = await embedded.waiter()
        printed_logs: set[uuid.UUID] = set()
        final: FlowRun | None = None
        notice = None if quiet else asyncio.get_running_loop().create_task(
            _notice_no_worker(api, run_id), name=f"flowrelay-watch-notice-{run_id}")
        try:
            async for item in waiter.follow(api, run_id, timeout):
                if isinstance(item, FlowRun):
                    final = item
                    break
                if not quiet:
                    msg = item.payload.get("message")
                    typer.echo(f"{output.local_time(item.occurred, precise=True)}  {item.payload.get('state')}"
                               f"{'  ' + msg if msg else ''}")
                    await _print_logs(api, run_id, printed_logs)
        finally:
            if notice is not None:
                notice.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await notice
        assert final is not None
        if not quiet:
            await _print_logs(api, run_id, printed_logs)
            state = final.state
            typer.echo(f"flow run {final.name!r} finished {state.name if state else '?'}"
                       f"{': ' + state.message if state and state.message else ''}")
            error = format_error(state.details.error) if state is not None else None
            if error:
                typer.echo(error)
        return final

    try:
        return await embedded.call(follow)
    except TimeoutError:
        raise ValueError(f"flow run {run_id} did not finish within {timeout:g} s (still running)") from None


async def _notice_no_worker(api: Any, run_id: uuid.UUID) -> None:
    """While the watched run waits, say so once its pool has had no live worker for over a
    heartbeat timeout ("waiting: no live worker on pool P ..."), again after a worker came and went. A
    read every few seconds of the pool, for the notice only: the run's progress comes from
    events."""
    said: str | None = None
    pause = 2.0
    while True:
        await asyncio.sleep(pause)
        try:
            run = await api.read_flow_run(run_id)
            if run.state is None or not run.state.is_scheduled() or not run.work_pool:
                reason = None
            else:
                pool = await api.read_work_pool(run.work_pool)
                reason = pool.waiting_reason(run, utcnow())
                pause = max(2.0, min(pool.heartbeat_timeout / 3, 10.0))
        except Exception:  # noqa: BLE001 - the notice is a courtesy; the watch goes on
            continue
        if reason and not said:
            typer.echo(reason)
        said = reason


async def _print_logs(api: Any, run_id: uuid.UUID, printed: set[uuid.UUID]) -> None:
    for record in await api.read_logs(run_id):
        if record.id not in printed:
            printed.add(record.id)
            typer.echo(f"    {output.level_name(record.level):<7} {record.message}")


def register(group: typer.Typer) -> None:
    group.command("run")(run)
