"""``flowrelay worker --pool NAME [--concurrency N]``: serve a work pool from RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from engine.logging import get_logger

log = get_logger("engine.cli.worker")

NEEDS_RABBITMQ = (
    "a separate worker needs RabbitMQ: broker.url is {url}, which only reaches this process. "
    "Set broker.url (or FLOWRELAY_BROKER__URL) to amqp://..., or use `flowrelay dev`, which runs "
    "the server and a worker in one process"
)


worker_app = typer.Typer(
    help="Serve a work pool (flowrelay worker --pool NAME), or list workers (flowrelay worker ls).",
)


def register(app: typer.Typer) -> None:
    """Add the ``worker`` group to `app`: serving a pool, and ``worker ls``."""
    from engine.cli.pool_cmd import workers_ls

    worker_app.callback(invoke_without_command=True)(worker)
    worker_app.command("ls")(workers_ls)
    app.add_typer(worker_app, name="worker")


def worker(
    ctx: typer.Context,
    pool: Annotated[
        str | None,
        typer.Option("--pool", help="The work pool to serve (default: worker.pool, 'default')."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", min=1,
            help="Runs at a time, each in a warm child process (default: worker.concurrency).",
        ),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout", min=0,
            help="On SIGTERM/Ctrl-C, seconds to let running runs finish before handing them back.",
        ),
    ] = 30.0,
) -> None:
    """Serve a work pool: claim its runs and execute them in warm child processes.

    Needs RabbitMQ (broker.url amqp://...) and a running `flowrelay server`; never the database.
    SIGTERM or Ctrl-C stops taking runs, lets running ones finish for --drain-timeout seconds,
    hands the rest back to the pool, and exits 0. ``flowrelay worker ls`` lists live workers.
    """
    if ctx.invoked_subcommand is not None:
        return
    from engine.settings import get_settings
    from workers.errors import WorkerConfigError

    settings = get_settings()
    url = settings.broker.url
    if not url.lower().startswith(("amqp://", "amqps://")):
        raise WorkerConfigError(NEEDS_RABBITMQ.format(url=url.split("://")[0] + "://"))
    asyncio.run(
        _serve(
            url,
            pool or settings.worker.pool,
            concurrency or settings.worker.concurrency,
            drain_timeout,
        )
    )


async def _serve(url: str, pool: str, concurrency: int, drain_timeout: float) -> None:
    from engine.broker import from_url
    from engine.remote import RemoteEngine
    from engine.settings import get_settings
    from workers.worker import Worker, default_worker_id

    settings = get_settings()
    worker_id = default_worker_id()
    broker = from_url(url, connection_name=f"flowrelay-worker-{worker_id}")
    await broker.connect()
    api = RemoteEngine(broker, timeout=settings.broker.rpc_timeout_seconds)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        await api.start()
        if not await api.check_protocol():  # ProtocolMismatch: exit naming both versions
            log.warning("no server answered yet; the protocol is checked on every reply")
        service = Worker(
            broker,
            api,  # type: ignore[arg-type]  # RemoteEngine serves EngineAPI via __getattr__
            pool=pool,
            concurrency=concurrency,
            worker_id=worker_id,
            mode="process",
            heartbeat_interval=settings.worker.heartbeat_interval_seconds,
            drain_timeout=drain_timeout,
            claim_timeout=settings.broker.rpc_timeout_seconds,
            outage_timeout=settings.runtime.report_timeout_seconds,
        )
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await service.start()
            log.info("worker serving", pool=pool, concurrency=concurrency, worker_id=worker_id)
            await stop.wait()
            log.info("stop requested: draining", drain_timeout=drain_timeout)
        finally:
            await service.stop()
    finally:
        for sig in signals:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        await api.close()
        await broker.close()
