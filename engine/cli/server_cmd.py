"""``flowrelay server`` and ``flowrelay dev``: the long-running processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from engine.errors import ConfigError
from engine.settings import Settings, get_settings


def _run_until_signal(*, body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await body(stop)

    asyncio.run(runner())


def _require_rabbitmq(settings: Settings, command: str) -> None:
    if settings.broker.url.startswith("memory://"):
        raise ConfigError(
            f"'flowrelay {command}' talks to other processes through RabbitMQ, but broker.url is "
            "memory://: set FLOWRELAY_BROKER__URL=amqp://guest:guest@127.0.0.1:5672/ (or broker.url "
            "in config.yaml), or use 'flowrelay dev' to run everything in one process"
        )


def server() -> None:
    """Run the engine service: commands over RabbitMQ, the outbox relay, the dispatch timer, the
    heartbeat monitor and the HTTP API (api.*). The only process that writes the database."""
    from engine.server.app import Server

    settings = get_settings()
    _require_rabbitmq(settings, "server")

    async def body(stop: asyncio.Event) -> None:
        await Server(settings, serve_api=True, freeze_heap=True).serve_forever(stop)

    _run_until_signal(body=body)


def dev(
    pool: Annotated[
        list[str] | None, typer.Option("--pool", help="Pools to run in process (default: all).")
    ] = None,
) -> None:
    """Run server and worker in one process: on memory:// and SQLite by default (embedded mode),
    or against RabbitMQ when broker.url is amqp://."""
    from engine.server.app import Server
    from workers.worker import Worker

    settings = get_settings()

    async def body(stop: asyncio.Event) -> None:
        workers: list[Worker] = []
        srv: Server

        async def start_worker(name: str) -> None:
            if pool and name not in pool:
                return
            worker = Worker(
                srv.broker, srv.service, pool=name, concurrency=settings.worker.concurrency,
                mode="inline", heartbeat_interval=settings.worker.heartbeat_interval_seconds,
                drain_timeout=30.0,
            )
            await worker.start()
            workers.append(worker)

        srv = Server(settings, on_new_pool=start_worker, serve_api=True, freeze_heap=True)
        await srv.start()
        for name in pool or [settings.worker.pool]:
            await srv.ensure_pool(name)
        typer.echo(f"flowrelay dev: serving pools {sorted(srv.pools)} (Ctrl-C to stop)", err=True)
        try:
            await stop.wait()
        finally:
            for worker in workers:
                await worker.stop()
            await srv.stop()

    _run_until_signal(body=body)


def register(app: typer.Typer) -> None:
    app.command("server")(server)
    app.command("dev")(dev)
