"""``flowrelay automation ...``, ``flowrelay graph`` and ``flowrelay events replay``.

    flowrelay automation validate rules/*.yaml        # exit 1 with every error as file:line:col
    flowrelay automation apply rules/etl.yaml         # all or nothing
    flowrelay automation ls | inspect NAME | pause NAME | resume NAME | delete NAME
    flowrelay automation test rules.yaml --events events.jsonl     # backtest, no side effects
    flowrelay automation explain NAME --event EVENT_ID
    flowrelay graph --format mermaid
    flowrelay events replay --since 2026-11-23T09:00 --until 2026-11-23T10:00
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from engine.cli import output

app = typer.Typer(help="Rules that turn events into actions: validate, apply, inspect.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, nothing else.")]
NameArg = Annotated[str, typer.Argument(help="The automation's name.")]
FilesArg = Annotated[list[Path], typer.Argument(help="YAML files (or folders of *.yaml) of automations.")]

EXIT_INVALID = 1


def _call(command: str, /, **kwargs: Any) -> Any:
    from automations.client import automations_client
    from engine.runtime import embedded

    async def go(_: Any) -> Any:
        api = await automations_client()
        return await getattr(api, command)(**kwargs)

    return embedded.call_sync(go)


def _documents(paths: list[Path]) -> list[dict[str, str]]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file")
    return [{"source": str(f), "text": f.read_text(encoding="utf-8")} for f in files]


def _problems(problems: list[str]) -> None:
    for line in problems:
        sys.stderr.write(f"{line}\n")
    sys.stderr.write(f"{len(problems)} error(s); nothing was applied.\n")
    raise typer.Exit(EXIT_INVALID)


@app.command("validate")
def validate(files: FilesArg, as_json: JsonOption = False) -> None:
    """Check files (syntax, fields, states, deployments, templates, loops); exit 1 if invalid."""
    result = _call("validate_automations", documents=_documents(files))
    if as_json:
        output.print_json(result)
        if not result["ok"]:
            raise typer.Exit(EXIT_INVALID)
        return
    if not result["ok"]:
        _problems(result["problems"])
    output.console().print(f"OK: {len(result['automations'])} automation(s) valid")


@app.command("apply")
def apply(files: FilesArg, as_json: JsonOption = False) -> None:
    """Install or update the automations of FILES: all of them, or none if any is invalid."""
    from automations.errors import AutomationFileError

    try:
        names = _call("apply_automations", documents=_documents(files))
    except AutomationFileError as exc:
        _problems(exc.problems)
    if as_json:
        output.print_json(names)
        return
    for name in names:
        output.console().print(f"Applied automation [bold]{escape(name)}[/]")


def _models(rows: list[dict[str, Any]]) -> list[tuple[Any, bool]]:
    from automations.models import Automation

    out = []
    for row in rows:
        try:
            out.append((Automation.model_validate(row["definition"]), bool(row["enabled"])))
        except Exception:  # a stored definition from another version: shown without details
            continue
    return out


@app.command("ls")
def ls(as_json: JsonOption = False) -> None:
    """Every automation with its trigger, actions, state and counters."""
    rows = _call("read_automations")
    if as_json:
        output.print_json(rows)
        return
    from automations.describe import describe_actions, describe_trigger
    from automations.models import Automation

    tbl = output.table("name", "enabled", "trigger", "actions", "matched", "fired", "failed")
    for row in rows:
        try:
            automation = Automation.model_validate(row["definition"])
            trigger, actions = describe_trigger(automation), describe_actions(automation)
        except Exception:  # a stored definition from another version: listed without details
            trigger, actions = "?", "?"
        c = row["counters"]
        tbl.add_row(
            escape(row["name"]), "yes" if row["enabled"] else "[yellow]paused[/]", escape(trigger),
            escape(actions), str(c.get("matched", 0)), str(c.get("fired", 0)), str(c.get("failed", 0)),
        )
    output.console().print(tbl)


@app.command("inspect")
def inspect(name: NameArg, as_json: JsonOption = False) -> None:
    """Definition, open windows (pending joins, counts, armed timers), counters, last firings."""
    data = _call("read_automation", name=name)
    if as_json:
        output.print_json(data)
        return
    import yaml

    console = output.console()
    console.print(f"[bold]{escape(data['name'])}[/]  version {data['version']}  "
                  f"{'enabled' if data['enabled'] else '[yellow]paused[/]'}  from {escape(data['source'] or '-')}")
    if data.get("description"):
        console.print(escape(data["description"]))
    console.print(escape(yaml.safe_dump({k: v for k, v in data["definition"].items() if v not in (None, [], {}, "")},
                                        sort_keys=False).rstrip()))
    counters = ", ".join(f"{k} {v}" for k, v in data["counters"].items())
    console.print(f"[bold]counters[/]: {counters}")
    console.print("[bold]pending[/]:" + ("" if data["pending"] else " none"))
    for item in data["pending"]:
        console.print("  " + escape(json.dumps(item, default=str)))
    console.print("[bold]last firings[/]:" + ("" if data["firings"] else " none"))
    for firing in data["firings"]:
        detail = "; ".join(
            (r.get("error") or json.dumps(r.get("detail", {}), default=str)) for r in firing["results"]
        )
        console.print(f"  {firing['at']}  {firing['kind']}  {firing['status']}  {escape(detail)}")


@app.command("pause")
def pause(name: NameArg, as_json: JsonOption = False) -> None:
    """Stop an automation from counting events and firing (its open windows are kept)."""
    row = _call("set_automation_enabled", name=name, enabled=False)
    if as_json:
        output.print_json(row)
        return
    output.console().print(f"Paused automation [bold]{escape(name)}[/]")


@app.command("resume")
def resume(name: NameArg, as_json: JsonOption = False) -> None:
    """Let a paused automation count and fire again."""
    row = _call("set_automation_enabled", name=name, enabled=True)
    if as_json:
        output.print_json(row)
        return
    output.console().print(f"Resumed automation [bold]{escape(name)}[/]")


@app.command("delete")
def delete(name: NameArg) -> None:
    """Remove an automation and its trigger state (its firing history stays)."""
    _call("delete_automation", name=name)
    output.console().print(f"Deleted automation [bold]{escape(name)}[/]")


def _parse_time(value: str | None, flag: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag} {value!r}: expected an ISO time such as 2026-11-23T09:30 or 2026-11-23T09:30:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _read_events_file(path: Path) -> list[Any]:
    from pydantic import ValidationError

    from engine.schemas import Event

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(Event.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise ValueError(f"{path}:{number}: {where}: {first['msg']}") from None
    return events


@app.command("test")
def test(
    files: FilesArg,
    events: Annotated[Path | None, typer.Option("--events", help="Events to test against, one JSON event per line.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Or: the stored events from this time (ISO)...")] = None,
    until: Annotated[str | None, typer.Option("--until", help="...until this time (ISO; default now).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Backtest rules on events without side effects: which would fire, when, with what."""
    from automations.backtest import backtest
    from automations.errors import AutomationFileError
    from automations.loader import parse_automations
    from engine.schemas import Event

    if (events is None) == (since is None):
        raise ValueError("give either --events FILE or --since TIME")
    automations = []
    problems: list[str] = []
    for doc in _documents(files):
        try:
            automations += [item.automation for item in parse_automations(doc["text"], source=doc["source"])]
        except AutomationFileError as exc:
            problems += exc.problems
    if problems:
        _problems(problems)
    start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
    if events is not None:
        stream = _read_events_file(events)
    else:
        stored = _call("read_events_between", since=start, until=end)
        stream = [Event.model_validate(e) for e in stored]
    results = backtest(automations, stream, until=end)
    if as_json:
        output.print_json(results)
        return
    console = output.console()
    fired = [r for r in results if r["kind"] != "error"]
    console.print(f"{len(stream)} event(s), {len(fired)} firing(s)")
    for r in results:
        if r["kind"] == "error":
            console.print(f"[red]error[/] {escape(r['automation'])}: {escape(r['error'])}")
            continue
        what = "EXPIRED" if r["kind"] == "expired" else "FIRES"
        key = f" [{r['correlation']}]" if r.get("correlation") else ""
        console.print(f"{r['at']}  [bold]{escape(r['automation'])}[/] {what}{escape(key)}")
        for action in r["actions"]:
            console.print("    " + escape(json.dumps(action, default=str)))


@app.command("explain")
def explain(
    name: NameArg,
    event: Annotated[str, typer.Option("--event", help="The id of a stored event.")],
    as_json: JsonOption = False,
) -> None:
    """Why did (or didn't) NAME fire for that event?"""
    lines = _call("explain_automation", name=name, event_id=event)
    if as_json:
        output.print_json(lines)
        return
    for line in lines:
        output.console().print(escape(line))


def replay(
    since: Annotated[str, typer.Option("--since", help="Replay the stored events from this time (ISO).")],
    until: Annotated[str | None, typer.Option("--until", help="...until this time (ISO; default now).")] = None,
    automation: Annotated[str | None, typer.Option("--automation", help="Only this automation.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Feed stored events to the automations again, for real; what already fired does not fire again."""
    result = _call("replay_events", since=_parse_time(since, "--since"), until=_parse_time(until, "--until"),
                   automation=automation)
    if as_json:
        output.print_json(result)
        return
    output.console().print(f"Replayed {result['events']} event(s): {len(result['fired'])} new firing(s)")
    for item in result["fired"]:
        output.console().print(f"  {escape(item['automation'])}  {item['kind']}  {item['firing_id']}")


def graph(
    fmt: Annotated[str, typer.Option("--format", help="text, mermaid or dot.")] = "text",
    as_json: JsonOption = False,
) -> None:
    """Deployments as nodes, automations as edges: the flow-of-flows as it is wired."""
    from automations.graph import build_graph
    from engine.runtime import embedded
    from engine.schemas import FlowRunFilter

    if fmt not in ("text", "mermaid", "dot"):
        raise ValueError(f"--format {fmt!r}: choose text, mermaid or dot")
    rows = _call("read_automations")

    async def deployments(api: Any) -> list[dict[str, Any]]:
        out = []
        for dep in await api.read_deployments():
            runs = await api.read_flow_runs(FlowRunFilter(deployment_name=dep.full_name, limit=1))
            state = runs[0].state.name if runs and runs[0].state else None
            out.append({"name": dep.full_name, "flow": dep.flow_name, "state": state})
        return out

    built = build_graph(embedded.call_sync(deployments), _models(rows))
    if as_json:
        output.print_json(built.as_dict())
        return
    text = {"text": built.text, "mermaid": built.mermaid, "dot": built.dot}[fmt]()
    sys.stdout.write(text + "\n")


def register(root: typer.Typer, events_app: typer.Typer) -> None:
    root.add_typer(app, name="automation")
    root.command("graph")(graph)
    events_app.command("replay")(replay)
