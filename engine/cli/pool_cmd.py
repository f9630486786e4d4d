"""``flowrelay pool ls | inspect | set-concurrency | clear-concurrency`` and ``flowrelay worker ls``.

    flowrelay pool ls
    flowrelay pool inspect etl
    flowrelay pool set-concurrency etl 2       # at most 2 runs of pool etl at once
    flowrelay pool clear-concurrency etl
    flowrelay worker ls --json
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output

if TYPE_CHECKING:
    from engine.schemas import WorkerInfo, WorkPool

app = typer.Typer(help="List and inspect work pools; limit how many of a pool's runs go at once.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, nothing else.")]
PoolArg = Annotated[str, typer.Argument(help="The work pool.", metavar="POOL")]


def _call(fn: Any) -> Any:
    from engine.runtime import embedded

    return embedded.call_sync(fn)


@app.command("ls")
def ls(as_json: JsonOption = False) -> None:
    """List work pools: limit, live workers, runs busy and waiting."""
    pools: list[WorkPool] = _call(lambda api: api.read_work_pools())
    if as_json:
        output.print_json(pools)
        return
    console = output.console()
    if not pools:
        console.print("No work pools yet: a pool exists once a deployment names it or a worker serves it.")
        return
    tbl = output.table("pool", "limit", "live workers", "busy", "waiting", "no worker")
    for pool in pools:
        waiting = sum(n for state, n in pool.runs.items() if state not in ("Pending", "Running", "Cancelling"))
        tbl.add_row(
            escape(pool.name), str(pool.concurrency_limit or "-"), str(pool.live_workers),
            str(pool.busy), str(waiting),
            f"[red]{pool.waiting_without_worker} run(s) stranded[/]" if pool.waiting_without_worker else "-",
        )
    console.print(tbl)


@app.command("inspect")
def inspect_pool(name: PoolArg, as_json: JsonOption = False) -> None:
    """Show a work pool: its limit, its workers and its open runs by state."""
    pool: WorkPool = _call(lambda api: api.read_work_pool(name))
    if as_json:
        output.print_json(pool)
        return
    console = output.console()
    console.print(f"[bold]{escape(pool.name)}[/]")
    console.print(f"  limit          {pool.concurrency_limit or 'no limit'}")
    console.print(f"  live workers   {pool.live_workers}")
    console.print(f"  busy           {pool.busy}")
    console.print(f"  runs           {escape(', '.join(f'{k} {v}' for k, v in sorted(pool.runs.items())) or '-')}")
    if pool.waiting_without_worker:
        console.print(f"  [red]{pool.waiting_without_worker} run(s) waiting with no live worker for over "
                      f"{pool.heartbeat_timeout:g} s: start one with flowrelay worker --pool {escape(pool.name)}[/]")
    _print_workers(pool.workers)


@app.command("set-concurrency")
def set_concurrency(
    name: PoolArg,
    limit: Annotated[int, typer.Argument(min=1, help="Runs of the pool at once, at most.")],
    as_json: JsonOption = False,
) -> None:
    """Limit how many runs of the pool hold a slot at once (dispatched, Pending or Running);
    the others wait AwaitingConcurrencySlot and go as slots free up."""
    pool: WorkPool = _call(lambda api: api.set_work_pool_concurrency(name, limit))
    _changed(pool, as_json)


@app.command("clear-concurrency")
def clear_concurrency(name: PoolArg, as_json: JsonOption = False) -> None:
    """Remove the pool's concurrency limit (runs waiting for it go at once)."""
    pool: WorkPool = _call(lambda api: api.set_work_pool_concurrency(name, None))
    _changed(pool, as_json)


def _changed(pool: WorkPool, as_json: bool) -> None:
    if as_json:
        output.print_json(pool)
        return
    limit = pool.concurrency_limit
    output.console().print(
        f"Work pool [bold]{escape(pool.name)}[/]: "
        + (f"at most {limit} run(s) at once." if limit else "no concurrency limit.")
    )


def _print_workers(workers: list[WorkerInfo]) -> None:
    console = output.console()
    if not workers:
        console.print("No workers.")
        return
    tbl = output.table("worker", "pool", "alive", "runs", "concurrency", "last heartbeat", "code loaded")
    for worker in workers:
        tbl.add_row(
            escape(worker.id), escape(worker.pool), "yes" if worker.alive else "[red]no[/]",
            str(len(worker.runs)), str(worker.concurrency or "-"),
            output.local_time(worker.last_seen, precise=True),
            escape(", ".join(c[:19] for c in worker.code) or "-"),
        )
    console.print(tbl)


def workers_ls(as_json: JsonOption = False) -> None:
    """List workers: their pool, runs held, last heartbeat and the code they have loaded."""
    workers: list[WorkerInfo] = _call(lambda api: api.read_workers())
    if as_json:
        output.print_json(workers)
        return
    _print_workers(workers)


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="pool")


__all__ = ["app", "register", "workers_ls"]
