"""``flowrelay events``: watch live events, emit custom ones."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import signal
from typing import Annotated, Any

import typer

from engine.cli import output

app = typer.Typer(help="Live events: tail them, emit your own.", no_args_is_help=True)


@app.command("tail")
def tail(
    match: Annotated[
        str | None,
        typer.Option("--match", help="Only events whose name matches this glob, e.g. 'flow-run.*'."),
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Stop after N events.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop after this many seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Print events as they are published (needs RabbitMQ: events of other processes)."""
    from engine.broker import from_url
    from engine.broker.topology import Names, QueueSpec
    from engine.cli.server_cmd import _require_rabbitmq
    from engine.schemas import Event
    from engine.settings import get_settings

    settings = get_settings()
    _require_rabbitmq(settings, "events tail")
    names = Names()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        seen = 0
        async with from_url(settings.broker.url, connection_name="flowrelay-tail") as broker:
            queue = await broker.declare_queue(QueueSpec.temporary(prefix=f"{names.prefix}.tail"))
            await broker.bind(queue, names.events, "#")

            async def on_message(message: Any) -> None:
                nonlocal seen
                await message.ack()
                try:
                    event = Event.model_validate_json(message.body)
                except ValueError:
                    return
                if match and not fnmatch.fnmatchcase(event.event, match):
                    return
                if as_json:
                    typer.echo(event.model_dump_json())
                else:
                    res = event.resource
                    label = res.get("name") or res.get("id", "")
                    extra = f" {res.get('flow')}" if res.get("flow") else ""
                    msg = event.payload.get("message")
                    typer.echo(f"{output.local_time(event.occurred, precise=True)}  {event.event:<28} "
                               f"{label}{extra}{'  ' + msg if msg else ''}")
                seen += 1
                if count is not None and seen >= count:
                    stop.set()

            consumer = await broker.consume(queue, on_message, prefetch=256)
            try:
                await asyncio.wait_for(stop.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                await consumer.cancel(grace=1.0)

    asyncio.run(main())


@app.command("emit")
def emit(
    name: Annotated[str, typer.Argument(help="The event name, e.g. 'batch.ready'.")],
    resource: Annotated[
        str | None, typer.Option("--resource", help='JSON object, e.g. \'{"id": "batch/17"}\'.')
    ] = None,
    payload: Annotated[str | None, typer.Option("--payload", help="JSON object.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the emitted event.")] = False,
) -> None:
    """Emit a custom event, exactly as `emit_event(...)` does from a flow."""
    from engine.runtime.deployments import emit_event

    def obj(text: str | None, flag: str) -> dict[str, Any] | None:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag}: not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{flag}: expected a JSON object, got {type(value).__name__}")
        return value

    event = emit_event(name, resource=obj(resource, "--resource"), payload=obj(payload, "--payload"))
    if as_json:
        output.print_json(event)
    else:
        typer.echo(f"emitted {event.event} ({event.id})")
