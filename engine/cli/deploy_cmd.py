"""``flowrelay deploy`` and ``flowrelay deployment ls|inspect|pause|resume``.

    flowrelay deploy flows/etl.py:etl --name nightly --pool default --param day=today --cron "0 2 * * *"
    flowrelay deploy --file deployments.yaml          # a `deployments:` list, all or nothing
    flowrelay deployment ls
    flowrelay deployment inspect etl/nightly

The engine is reached through `engine.runtime.embedded` (in process, or over the broker in
distributed mode). `deployment_app` is the ``deployment`` group: other modules may add commands
to it (``deployment run``) before `register` is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output
from engine.cli.run_cmd import PARAM_HELP, parse_params
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.schemas import Deployment, DeploymentSpec, FlowRun

deployment_app = typer.Typer(
    help="List, inspect, pause and resume deployments.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, nothing else.")]
NameArg = Annotated[
    str, typer.Argument(help="The deployment, as FLOW/DEPLOYMENT.", metavar="FLOW/DEPLOYMENT")
]


def _call(fn: Any) -> Any:
    from engine.runtime import embedded

    return embedded.call_sync(fn)


# --- deploy ----------------------------------------------------------------------------------------
def deploy(
    entrypoint: Annotated[
        str | None,
        typer.Argument(help="The flow: 'path/to/file.py:flow' or 'package.module:flow'."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="The deployment's name (FLOW/NAME).")
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", "-p", help="The work pool whose workers run it.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help=PARAM_HELP, metavar="KEY=VALUE")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="A tag for its runs. Repeatable.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option("--concurrency-limit", min=1, help="At most this many runs at once."),
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="A cron schedule, such as '0 2 * * *'.")
    ] = None,
    interval: Annotated[
        str | None,
        typer.Option("--interval", help="An interval schedule: seconds, or 90s, 15m, 2h, 1d."),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="Time zone of --cron/--interval (default UTC)."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="Register every deployment of a YAML file (deployments: ...)."
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="The project folder packed with a file entrypoint (default: the nearest folder "
            "above the file with pyproject.toml or .git, else the file's folder).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a deployment of a flow (again: its next version).

    A file entrypoint's project is packed and uploaded to the server: workers on any machine
    fetch it by its hash and run exactly that code. Parameters given with --param are checked
    against the flow's type hints; the ones left out are given by each run.
    """
    if file is not None:
        given = [
            flag
            for flag, value in (
                ("ENTRYPOINT", entrypoint),
                ("--name", name),
                ("--pool", pool),
                ("--param", param),
                ("--tag", tag),
                ("--description", description),
                ("--concurrency-limit", concurrency_limit),
                ("--cron", cron),
                ("--interval", interval),
                ("--timezone", timezone),
                ("--root", root),
            )
            if value
        ]
        if given:
            raise ValueError(f"--file cannot be combined with {given[0]}: put it in the file")
        specs = load_deployment_file(file)
    else:
        if entrypoint is None:
            raise ValueError("give an ENTRYPOINT such as 'flows/etl.py:etl', or --file FILE")
        for flag, value in (("--name", name), ("--pool", pool)):
            if not value:
                raise ValueError(f"{flag} is required (see 'flowrelay deploy --help')")
        specs = [
            _spec_from_options(
                entrypoint,
                name,
                pool,
                parse_params(param, None),
                tag,
                description,
                concurrency_limit,
                cron,
                interval,
                timezone,
                root,
            )
        ]
    from engine.code import pack_specs, upload

    specs, bundles = pack_specs(specs)
    for bundle in bundles:
        _call(lambda api, bundle=bundle: upload(api, bundle))
    if len(specs) == 1 and file is None:
        registered: list[Deployment] = [_call(lambda api: api.register_deployment(specs[0]))]
    else:  # a file: one transaction, all or nothing
        registered = _call(lambda api: api.register_deployments(specs))
    if as_json:
        output.print_json(registered if file is not None else registered[0])
        return
    console = output.console()
    for dep in registered:
        console.print(
            f"Deployed [bold]{escape(dep.full_name)}[/] version {dep.version} "
            f"(pool [bold]{escape(dep.work_pool or '-')}[/], {escape(dep.entrypoint or '-')}, "
            f"{escape(code_text(dep.code))})"
        )
    if len(registered) == 1:
        console.print(f"Run it with: flowrelay deployment run '{escape(registered[0].full_name)}'")


def _spec_from_options(
    entrypoint: str,
    name: str | None,
    pool: str | None,
    parameters: dict[str, Any],
    tags: list[str] | None,
    description: str | None,
    concurrency_limit: int | None,
    cron: str | None,
    interval: str | None,
    timezone: str | None,
    root: Path | None = None,
) -> DeploymentSpec:
    import pydantic

    from engine.deployments import check_parameters
    from engine.entrypoints import load_flow
    from engine.schemas import DeploymentSpec

    if timezone and not (cron or interval):
        raise ValueError("--timezone applies to --cron or --interval: give one of them")
    schedules: list[dict[str, Any]] = []
    if cron:
        schedules.append({"cron": cron})
    if interval:
        schedules.append({"interval": interval})
    for schedule in schedules:
        if timezone:
            schedule["timezone"] = timezone
    flow = load_flow(entrypoint)
    check_parameters(flow, parameters, what=f"flow {flow.name!r}")
    try:
        return DeploymentSpec(
            name=name or "",
            flow_name=flow.name,
            entrypoint=entrypoint,
            work_pool=pool or "",
            parameters=parameters,
            tags=tags or [],
            description=description,
            concurrency_limit=concurrency_limit,
            schedules=schedules,
            root=str(root) if root is not None else None,
        )
    except pydantic.ValidationError as exc:
        options = {"name": "--name", "work_pool": "--pool", "schedules": "--cron/--interval"}
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{options.get(field, field)}: {message}") from None


def load_deployment_file(path: Path) -> list[DeploymentSpec]:
    """The deployments of a YAML file with a top-level ``deployments:`` list; `ConfigError`
    ``file:line: deployments[2].pool: what is wrong`` for the first problem."""
    import yaml

    from engine.deployments import specs_from_items, yaml_lines

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read deployments file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict) or "deployments" not in data:
        raise ConfigError(
            f"{path}: expected a top-level 'deployments:' list "
            "(- name: ..., entrypoint: ..., work_pool: ...)"
        )
    unknown = sorted(str(key) for key in data if key != "deployments")
    lines = yaml_lines(text)
    if unknown:
        line = lines.get((unknown[0],))
        raise ConfigError(
            f"{path}{f':{line}' if line else ''}: {unknown[0]}: unknown key "
            "(a deployments file holds one 'deployments:' list)"
        )
    specs = specs_from_items(data["deployments"], source=str(path), lines=lines)
    if not specs:
        raise ConfigError(f"{path}: the 'deployments:' list is empty")
    return specs


# --- deployment ls / inspect / pause / resume ---------------------------------------------------
@deployment_app.command("ls")
def ls(as_json: JsonOption = False) -> None:
    """List deployments."""
    deployments: list[Deployment] = _call(lambda api: api.read_deployments())
    if as_json:
        output.print_json(deployments)
        return
    console = output.console()
    if not deployments:
        console.print(
            "No deployments. Create one with: flowrelay deploy FILE.py:FLOW --name N --pool P"
        )
        return
    tbl = output.table("name", "version", "pool", "status", "limit", "schedules", "updated")
    for dep in deployments:
        tbl.add_row(
            escape(dep.full_name),
            str(dep.version),
            escape(dep.work_pool or "-"),
            "[yellow]paused[/]" if dep.paused else "active",
            str(dep.concurrency_limit) if dep.concurrency_limit is not None else "-",
            escape(", ".join(_schedule_text(s) for s in dep.schedules) or "-"),
            output.local_time(dep.updated),
        )
    console.print(tbl)


@deployment_app.command("inspect")
def inspect_deployment(
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Latest runs to show.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Show a deployment: its spec, version, schedules and latest runs."""
    from engine.schemas import FlowRunFilter

    dep: Deployment = _call(lambda api: api.read_deployment(name))
    flt = FlowRunFilter(deployment_name=dep.full_name, limit=limit)
    runs: list[FlowRun] = _call(lambda api: api.read_flow_runs(flt))
    if as_json:
        data = dep.model_dump(mode="json")
        data.update(full_name=dep.full_name, latest_runs=output.to_jsonable(runs))
        output.print_json(data)
        return
    console = output.console()
    fields = [
        ("deployment", escape(dep.full_name)),
        ("id", str(dep.id)),
        ("version", str(dep.version)),
        ("status", "[yellow]paused[/]" if dep.paused else "active"),
        ("entrypoint", escape(dep.entrypoint or "-")),
        ("work pool", escape(dep.work_pool or "-")),
        ("parameters", escape(output.result_text(dep.parameters))),
        ("tags", escape(", ".join(dep.tags) or "-")),
        ("concurrency", str(dep.concurrency_limit) if dep.concurrency_limit else "no limit"),
        ("code", escape(code_text(dep.code))),
        ("schedules", escape(", ".join(_schedule_text(s) for s in dep.schedules) or "-")),
        ("description", escape(dep.description or "-")),
        ("updated", output.local_time(dep.updated)),
    ]
    for label, value in fields:
        console.print(f"[bold]{label:<12}[/] {value}")
    if not runs:
        console.print("No runs yet.")
        return
    tbl = output.table("id", "name", "state", "version", "start", "duration", title="Latest runs")
    for run in runs:
        tbl.add_row(
            str(run.id),
            escape(run.name),
            output.state_text(run.state),
            str(run.deployment_version or "-"),
            output.local_time(run.start_time),
            output.duration(run.start_time, run.end_time),
        )
    console.print(tbl)


@deployment_app.command("pause")
def pause(name: NameArg, as_json: JsonOption = False) -> None:
    """Pause a deployment: its schedules create no runs until it is resumed."""
    _set_paused(name, True, as_json)


@deployment_app.command("resume")
def resume(name: NameArg, as_json: JsonOption = False) -> None:
    """Resume a paused deployment."""
    _set_paused(name, False, as_json)


def _set_paused(name: str, paused: bool, as_json: bool) -> None:
    dep: Deployment = _call(lambda api: api.set_deployment_paused(name, paused))
    if as_json:
        output.print_json(dep)
        return
    output.console().print(
        f"Deployment [bold]{escape(dep.full_name)}[/] is {'paused' if paused else 'active'}."
    )


def code_text(code: dict[str, Any] | None) -> str:
    """``bundle sha256:1a2b3c4d5e6f (12 files, 18 KB)``, ``package etl-jobs 1.4.0``, or what a
    deployment without recorded code runs."""
    if not code:
        return "code as found where the worker runs"
    if code.get("bundle"):
        size = int(code.get("bytes") or 0)
        return f"bundle {str(code['bundle'])[:19]} ({code.get('files', '?')} files, {max(size // 1000, 1)} KB)"
    if code.get("package"):
        return f"package {code['package']} {code.get('version', '')}".rstrip()
    return "code as found where the worker runs"


def _schedule_text(schedule: dict[str, Any]) -> str:
    if "cron" in schedule:
        text = f"cron {schedule['cron']}"
    else:
        text = f"every {_interval_text(float(schedule.get('interval', 0)))}"
    if schedule.get("timezone", "UTC") != "UTC":
        text += f" ({schedule['timezone']})"
    if not schedule.get("active", True):
        text += " [inactive]"
    return text


def _interval_text(seconds: float) -> str:
    """7200 → ``2h``, 5400 → ``1h30m``, 90 → ``1m30s``."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and the ``deployment`` group to the CLI."""
    app.command("deploy")(deploy)
    app.add_typer(deployment_app, name="deployment")


__all__ = ["deploy", "deployment_app", "load_deployment_file", "register"]
