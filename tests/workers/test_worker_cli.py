"""`flowrelay worker`: refuses the in-memory broker clearly; against RabbitMQ, drains on SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest
import typer
from typer.testing import CliRunner

from engine.cli import worker_cmd
from workers import WorkerConfigError

APP = "import typer; from engine.cli import worker_cmd; app = typer.Typer(); worker_cmd.register(app); app()"


def _app() -> typer.Typer:
    app = typer.Typer()
    worker_cmd.register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps `worker` a subcommand, as in the real CLI
        pass

    return app


def test_worker_over_the_memory_broker_says_it_needs_rabbitmq():
    result = CliRunner().invoke(_app(), ["worker", "--pool", "etl"])

    assert isinstance(result.exception, WorkerConfigError)
    message = str(result.exception)
    assert "needs RabbitMQ" in message and "flowrelay dev" in message and "amqp://" in message


@pytest.mark.rabbitmq
def test_worker_process_exits_0_after_sigterm(amqp_url, tmp_path):
    pool = f"cli-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "FLOWRELAY_BROKER__URL": amqp_url, "FLOWRELAY_LOGGING__FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, "worker", "--pool", pool, "--concurrency", "1", "--drain-timeout", "5"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert _wait_for_line(proc, "worker serving", timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "worker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _delete_pool_queue(amqp_url, pool)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return False
            if text in line:
                return True
    return False


def _delete_pool_queue(url: str, pool: str) -> None:
    import asyncio

    from engine.broker import from_url, pool_queue

    async def delete() -> None:
        async with from_url(url) as broker:
            await broker.delete_queue(pool_queue(pool))

    asyncio.run(delete())
