"""Start a real server and worker as separate processes on RabbitMQ for a benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

FLOWRELAY = str(Path(sys.executable).with_name("flowrelay"))
AMQP = os.environ.get("FLOWRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: the processes of the cluster running now (see `exited`)
PROCS: list[subprocess.Popen[bytes]] = []


def exited() -> str | None:
    """Which cluster process has exited, with its code and log (None: all alive): a benchmark
    waiting for runs stops at once instead of waiting out its timeout."""
    for proc in PROCS:
        code = proc.poll()
        if code is not None:
            return f"{' '.join(str(a) for a in proc.args[1:3])} exited with code {code}; see {getattr(proc, '_log', '?')}"
    return None


@contextlib.contextmanager
def cluster(pool: str, *, workers: int = 1, concurrency: int = 8, extra_env: dict[str, str] | None = None,
            servers: int = 1, amqp: str = AMQP) -> Iterator[dict[str, str]]:
    """`servers` servers (several need a PostgreSQL `FLOWRELAY_DATABASE__URL` in `extra_env`) and
    `workers` workers; the environment names their pids (`_BENCH_SERVER_PIDS`, comma-separated)."""
    tmp = Path(tempfile.mkdtemp(prefix="flowrelay-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
    env.update({
        "FLOWRELAY_HOME": str(tmp),
        "FLOWRELAY_BROKER__URL": amqp,
        "FLOWRELAY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
        "FLOWRELAY_LOGGING__LEVEL": "WARNING",
        "FLOWRELAY_LOGGING__FORMAT": "json",
        "FLOWRELAY_BROKER__PREFIX": f"frbench-{os.getpid()}",
        # no HTTP API unless a benchmark asks (a fixed port would clash with any server running)
        "FLOWRELAY_API__ENABLED": "false",
        **(extra_env or {}),
    })
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def spawn(*args: str) -> None:
        path = tmp / f"{args[0]}-{len(procs)}.log"
        log = open(path, "wb")  # noqa: SIM115
        logs.append(log)
        proc = subprocess.Popen([FLOWRELAY, *args], env=env, cwd=tmp, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc._log = path  # type: ignore[attr-defined]
        procs.append(proc)
        PROCS.append(proc)

    try:
        for _ in range(servers):
            spawn("server")
            deadline = time.monotonic() + 30
            while subprocess.run([FLOWRELAY, "flow-run", "ls", "--json"], env=env, cwd=tmp,
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start; see {tmp}")
                time.sleep(0.3)
        for _ in range(workers):
            spawn("worker", "--pool", pool, "--concurrency", str(concurrency))
        env["_BENCH_DIR"] = str(tmp)
        env["_BENCH_SERVER_PID"] = str(procs[0].pid)
        env["_BENCH_SERVER_PIDS"] = ",".join(str(p.pid) for p in procs[:servers])
        env["_BENCH_WORKER_PID"] = str(procs[servers].pid) if workers else "0"
        yield env
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for log in logs:
            log.close()
        PROCS.clear()
        _delete_topology(env["FLOWRELAY_BROKER__PREFIX"], pool, amqp)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _delete_topology(prefix: str, pool: str, amqp: str = AMQP) -> None:
    """Remove the benchmark's own durable exchanges and queues."""
    import asyncio

    from automations.service import rule_queue
    from engine.broker import from_url
    from engine.broker.topology import Names

    names = Names(prefix)

    async def main() -> None:
        async with from_url(amqp, connection_name="flowrelay-bench-cleanup") as broker:
            for queue in (names.commands, names.dead, *(rule_queue(names, r) for r in range(16)),
                          names.pool(pool), names.pool("default")):
                with contextlib.suppress(Exception):
                    await broker.delete_queue(queue)
            for exchange in (names.events, names.dlx):
                with contextlib.suppress(Exception):
                    await broker.delete_exchange(exchange)

    asyncio.run(main())


def deploy(env: dict[str, str], entrypoint: str, name: str, pool: str) -> None:
    subprocess.run([FLOWRELAY, "deploy", entrypoint, "--name", name, "--pool", pool], env=env,
                   check=True, capture_output=True)
