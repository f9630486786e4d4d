"""``flowrelay run``: run a flow from an entrypoint, here and now."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import sys
import uuid
from typing import Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output
from engine.schemas import FlowRun, LogRecord
from engine.states import State

PARAM_HELP = "A parameter as KEY=VALUE; VALUE is read as JSON when it parses (n=3, xs=[1,2]), else as text. Repeatable."


def parse_params(pairs: list[str] | None, params_json: str | None) -> dict[str, Any]:
    """Flow parameters from ``--params-json`` then ``--param`` (which wins on a repeated key)."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--params-json: not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--params-json: expected a JSON object such as '{{\"n\": 3}}', "
                f"got {type(loaded).__name__}"
            )
        params.update(loaded)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def run(
    entrypoint: Annotated[
        str, typer.Argument(help="The flow: 'path/to/file.py:flow' or 'package.module:flow'.")
    ],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help=PARAM_HELP, metavar="KEY=VALUE")
    ] = None,
    params_json: Annotated[
        str | None,
        typer.Option(
            "--params-json", help="All parameters as one JSON object; --param wins.", metavar="JSON"
        ),
    ] = None,
    execute: Annotated[
        bool,
        typer.Option(
            "--execute",
            help="Run the flow in this process. This is also what happens "
            "without the flag for now; later, without it, the run will go to a worker.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the finished run as JSON (id, name, flow_name, "
            "state, message, parameters, result).",
        ),
    ] = False,
) -> None:
    """Run a flow locally, in this process, and print its states and logs.

    Exit code 0 when the run completes, 1 when it ends Failed, Crashed or Cancelled, 2 on bad
    input (unknown entrypoint, bad --param).
    """
    from engine.entrypoints import load_flow

    params = parse_params(param, params_json)
    flow_obj = load_flow(entrypoint)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # the database clock may round
    # With --json, stdout holds the JSON document only: the flow's own prints go to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with redirect:
        state = flow_obj(**params, return_state=True)
        if inspect.isawaitable(state):  # an async flow: run it to the end here
            state = asyncio.run(_await(state))

    from engine.client import get_client

    client = get_client()
    flow_run = _read_back(client, state, flow_obj.name, started)
    if as_json:
        output.print_json(_summary(flow_run, state))
    else:
        _print_run(client, flow_run, state)
    if not state.is_completed():
        raise typer.Exit(1)


async def _await(awaitable: Any) -> State:
    state: State = await awaitable
    return state


def _read_back(client: Any, state: State, flow_name: str, started: dt.datetime) -> FlowRun | None:
    run_id = state.details.flow_run_id
    if run_id is not None:
        flow_run: FlowRun = client.read_flow_run(run_id)
        return flow_run
    # The state does not carry its run id: ours is the newest top-level run of this flow
    # created since we started (subflow runs of the same flow have a parent).
    runs: list[FlowRun] = client.read_flow_runs(flow=flow_name, limit=20)
    for candidate in runs:
        if candidate.parent_flow_run_id is None and output.aware(candidate.created) >= started:
            return candidate
    return None


def _summary(flow_run: FlowRun | None, state: State) -> dict[str, Any]:
    return {
        "id": str(flow_run.id) if flow_run else None,
        "name": flow_run.name if flow_run else None,
        "flow_name": flow_run.flow_name if flow_run else None,
        "state": state.name,
        "message": state.message,
        "parameters": flow_run.parameters if flow_run else {},
        "result": _stored_result(flow_run, state),
    }


def _stored_result(flow_run: FlowRun | None, state: State) -> Any:
    if flow_run is not None and flow_run.result is not None:
        return output.to_jsonable(flow_run.result)
    if flow_run is not None and flow_run.state is not None and flow_run.state.data is not None:
        return output.to_jsonable(flow_run.state.data)
    return output.to_jsonable(state.data) if state.is_completed() else None


def _print_run(client: Any, flow_run: FlowRun | None, state: State) -> None:
    console = output.console()
    if flow_run is None:  # nothing recorded: say what we know
        console.print(
            f"Finished in state {output.state_text(state)}"
            + (f": {escape(state.message)}" if state.message else "")
        )
        return
    states: list[State] = client.read_flow_run_states(flow_run.id)
    logs: list[LogRecord] = client.read_logs(flow_run.id)
    console.print(
        f"Flow run [bold]{escape(flow_run.name)}[/] of flow [bold]{escape(flow_run.flow_name)}[/]"
        f"  [bright_black]{flow_run.id}[/]"
    )
    print_timeline(states, logs)
    final = flow_run.state or state
    line = f"Finished in state {output.state_text(final)}"
    if final.message:
        line += f": {escape(final.message)}"
    console.print(line)
    result = _stored_result(flow_run, state)
    if final.is_completed() and result is not None:
        console.print(f"Result: {escape(output.result_text(result))}")


def print_timeline(states: list[State], logs: list[LogRecord]) -> None:
    """States and log lines of a run, merged in time order."""
    console = output.console()
    events: list[tuple[Any, int, str]] = []
    for st in states:
        text = f"  {output.local_time(st.timestamp, precise=True)}  {'STATE':<8} {output.state_text(st)}"
        if st.message:
            text += f"  [bright_black]{escape(st.message)}[/]"
        events.append((output.aware(st.timestamp), 0, text))
    for record in logs:
        level = output.level_name(record.level)
        style = output.LEVEL_STYLES.get(level, "")
        label = f"[{style}]{level:<8}[/] " if style else f"{level:<8} "
        task = f" [bright_black]({_short(record.task_run_id)})[/]" if record.task_run_id else ""
        text = (
            f"  {output.local_time(record.timestamp, precise=True)}  {label}"
            f"{escape(record.message)}{task}"
        )
        events.append((output.aware(record.timestamp), 1, text))
    for _, _, text in sorted(events, key=lambda e: (e[0], e[1])):
        console.print(text)


def _short(value: uuid.UUID | None) -> str:
    return str(value)[:8] if value else ""


def register(app: typer.Typer) -> None:
    app.command("run", no_args_is_help=True)(run)
