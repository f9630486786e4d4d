"""``flowrelay flow-run``: list, inspect and read the logs of flow runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output
from engine.cli.run_cmd import print_timeline
from engine.errors import ObjectNotFound
from engine.runtime.failures import format_error
from engine.schemas import FlowRun, LogRecord, TaskRun
from engine.states import State

app = typer.Typer(help="List and inspect flow runs.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, nothing else.")]
RunId = Annotated[str, typer.Argument(help="The flow run id (a full UUID).", metavar="ID")]


def _client() -> Any:
    from engine.client import get_client

    return get_client()


def _read_run(client: Any, value: str) -> FlowRun:
    run_id = output.parse_run_id(value)
    try:
        flow_run: FlowRun = client.read_flow_run(run_id)
    except ObjectNotFound:
        raise ObjectNotFound(f"flow run {value!r} not found") from None
    return flow_run


@app.command("ls")
def ls(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="At most this many runs.")
    ] = 20,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", "-s", help="Only runs in this state (Completed, Failed, ...). Repeatable."
        ),
    ] = None,
    flow: Annotated[
        str | None, typer.Option("--flow", "-f", help="Only runs of this flow.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List flow runs, newest first."""
    states = output.normalise_state_names(state) if state else None
    runs: list[FlowRun] = _client().read_flow_runs(flow=flow, state=states, limit=limit)
    if as_json:
        output.print_json(runs)
        return
    console = output.console()
    if not runs:
        console.print("No flow runs.")
        return
    tbl = output.table("id", "name", "flow", "state", "start", "duration")
    for run in runs:
        tbl.add_row(
            str(run.id),
            escape(run.name),
            escape(run.flow_name),
            output.state_text(run.state),
            output.local_time(run.start_time),
            output.duration(run.start_time, run.end_time),
        )
    console.print(tbl)


@app.command("inspect")
def inspect_run(run_id: RunId, as_json: JsonOption = False) -> None:
    """Show a flow run: its states, task runs, parameters, result, parent and children."""
    client = _client()
    run = _read_run(client, run_id)
    states: list[State] = client.read_flow_run_states(run.id)
    task_runs: list[TaskRun] = client.read_task_runs(run.id)
    children: list[FlowRun] = client.read_children(run.id)
    parent = _parent(client, run)
    waiting = _waiting_reason(client, run)
    if as_json:
        data = run.model_dump(mode="json")
        data.update(
            states=output.to_jsonable(states),
            task_runs=output.to_jsonable(task_runs),
            parent=output.to_jsonable(parent),
            children=output.to_jsonable(children),
            error=run.state.details.error if run.state is not None else None,
            code=executed_code(states),
            waiting=waiting,
        )
        output.print_json(data)
        return
    _print_inspect(run, states, task_runs, parent, children)
    if waiting:
        output.console().print(f"\n[bold red]{escape(waiting)}[/]")


@app.command("logs")
def logs(run_id: RunId, as_json: JsonOption = False) -> None:
    """Print the logs of a flow run (and of its task runs)."""
    client = _client()
    run = _read_run(client, run_id)
    records: list[LogRecord] = client.read_logs(run.id)
    if as_json:
        output.print_json(records)
        return
    console = output.console()
    if not records:
        console.print(f"No logs for flow run {escape(run.name)}.")
        return
    for record in records:
        level = output.level_name(record.level)
        style = output.LEVEL_STYLES.get(level, "")
        label = f"[{style}]{level:<8}[/]" if style else f"{level:<8}"
        console.print(
            f"{output.local_time(record.timestamp, precise=True)}  {label} "
            f"[bright_black]{escape(record.logger)}[/]  {escape(record.message)}"
        )


def _parent(client: Any, run: FlowRun) -> FlowRun | None:
    if run.parent_flow_run_id is None:
        return None
    try:
        parent: FlowRun = client.read_flow_run(run.parent_flow_run_id)
    except ObjectNotFound:
        return None
    return parent


def _waiting_reason(client: Any, run: FlowRun) -> str | None:
    """Why a due run is not starting, when its pool has no live worker (None otherwise)."""
    if not run.work_pool or run.state is None or not run.state.is_scheduled():
        return None
    from engine.states import utcnow

    try:
        pool = client.read_work_pool(run.work_pool)
    except Exception:  # noqa: BLE001 - an older server: no flag, the rest still shows
        return None
    reason: str | None = pool.waiting_reason(run, utcnow())
    return reason


def executed_code(states: list[State]) -> str | None:
    """The code the run's latest execution ran (its last Running state says: a bundle's hash,
    or "env"), None if it never ran on a worker."""
    return next((s.details.code for s in reversed(states) if s.is_running() and s.details.code), None)


def _attempts_text(run: FlowRun) -> str:
    """Claims made of the run by workers, and which attempt its current state belongs to."""
    if not run.attempts:
        return "-"
    current = run.state.details.attempt if run.state else None
    now = f"current state in attempt {current}" if current else "no attempt open"
    return f"{run.attempts} ({now})"


def _print_inspect(
    run: FlowRun,
    states: list[State],
    task_runs: list[TaskRun],
    parent: FlowRun | None,
    children: list[FlowRun],
) -> None:
    console = output.console()
    console.print(f"[bold]{escape(run.name)}[/]  [bright_black]{run.id}[/]")
    fields: list[tuple[str, str]] = [
        ("flow", escape(run.flow_name)),
        (
            "state",
            output.state_text(run.state)
            + (f"  {escape(run.state.message)}" if run.state and run.state.message else ""),
        ),
        ("deployment", escape(run.deployment_name or "-")),
        ("work pool", escape(run.work_pool or "-")),
        ("tags", escape(", ".join(run.tags) or "-")),
        ("start", output.local_time(run.start_time)),
        ("end", output.local_time(run.end_time)),
        ("duration", output.duration(run.start_time, run.end_time)),
        ("run count", str(run.run_count)),
        ("attempts", _attempts_text(run)),
        ("code", escape(executed_code(states) or "-")),
        ("parameters", escape(output.result_text(run.parameters))),
        ("result", escape(output.result_text(run.result)) if run.result is not None else "-"),
        (
            "parent",
            f"{escape(parent.name)} ({parent.id})"
            if parent
            else (str(run.parent_flow_run_id) if run.parent_flow_run_id else "-"),
        ),
    ]
    if run.caused_by:
        fields.append(("caused by", escape(output.result_text(run.caused_by))))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        console.print(f"  {name:<{width}}  {value}")
    error = format_error(run.state.details.error) if run.state is not None else None
    if error:
        console.print("\n[bold red]Error[/]")
        console.print(escape(error), highlight=False)

    console.print("\n[bold]States[/]")
    print_timeline(states, [])

    if task_runs:
        console.print()
        tbl = output.table("id", "task run", "state", "start", "duration", title=None)
        for tr in task_runs:
            tbl.add_row(
                str(tr.id),
                escape(tr.name),
                output.state_text(tr.state),
                output.local_time(tr.start_time),
                output.duration(tr.start_time, tr.end_time),
            )
        console.print("[bold]Task runs[/]")
        console.print(tbl)
    if children:
        console.print()
        tbl = output.table("id", "name", "flow", "state", "duration")
        for child in children:
            tbl.add_row(
                str(child.id),
                escape(child.name),
                escape(child.flow_name),
                output.state_text(child.state),
                output.duration(child.start_time, child.end_time),
            )
        console.print("[bold]Subflow runs[/]")
        console.print(tbl)
