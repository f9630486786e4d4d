"""A real cluster for integration tests: `flowrelay server` and `flowrelay worker` processes on
RabbitMQ, a fresh SQLite database, and the CLI run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s (last value: {value!r})")
        time.sleep(interval)


FLOWS = Path(__file__).parent / "flows" / "chain.py"
FLOWRELAY = str(Path(sys.executable).with_name("flowrelay"))

pytestmark = pytest.mark.rabbitmq


class Cluster:
    def __init__(self, env: dict[str, str], workdir: Path, flows: Path = FLOWS) -> None:
        self.env = env
        self.flows = flows
        self.workdir = workdir
        self.procs: list[subprocess.Popen[str]] = []
        self.record = Path(env["FLOWRELAY_TEST_RECORD"])
        self.pool = f"pool-{uuid.uuid4().hex[:8]}"
        self.deployment = f"d{uuid.uuid4().hex[:8]}"
        #: other pools a test used (their queues are deleted with the cluster's)
        self.extra_pools: list[str] = []

    def spawn(self, *args: str, log_name: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[str]:
        log = open(self.workdir / f"{log_name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [FLOWRELAY, *args], env={**self.env, **(env or {})}, cwd=cwd or self.workdir, stdout=log,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        proc._flowrelay_log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log_of(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def start_server(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A `flowrelay server` (`env`: settings of its own, such as its API port)."""
        proc = self.spawn("server", log_name=f"server-{len(self.procs)}", env=env)
        self.wait_ready()
        return proc

    def start_worker(self, concurrency: int = 4, pool: str | None = None, name: str = "worker",
                     cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return self.spawn("worker", "--pool", pool or self.pool, "--concurrency", str(concurrency),
                          log_name=f"{name}-{len(self.procs)}", cwd=cwd, env=env)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.cli("flow-run", "ls", "--json", check=False, timeout=15)
            if proc.returncode == 0:
                return
            time.sleep(0.3)
        raise AssertionError("server did not answer within 30 s")

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([FLOWRELAY, *args], env=self.env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def cli_in(self, cwd: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The CLI run from folder `cwd` (a user deploying from their project)."""
        proc = subprocess.run([FLOWRELAY, *args], env=self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def stop_process(self, proc: subprocess.Popen[str], timeout: float = 30) -> None:
        """SIGTERM one process (a worker drains and leaves) and wait for it."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def deploy(self, flow_fn: str, name: str | None = None, *extra: str) -> str:
        name = name or self.deployment
        self.cli("deploy", f"{self.flows}:{flow_fn}", "--name", name, "--pool", self.pool, *extra)
        return name

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code], env={**self.env, "PYTHONPATH": str(self.flows.parent)},
                              cwd=self.workdir, capture_output=True, text=True, timeout=timeout)

    def records(self, name: str | None = None) -> list[list[str]]:
        if not self.record.exists():
            return []
        rows = [line.split() for line in self.record.read_text().splitlines() if line.strip()]
        return [r for r in rows if name is None or r[0] == name]

    def stop(self) -> None:
        """SIGTERM everything: workers (and other clients) first, servers once those are gone — a
        worker draining a run reports its final state to a server, which must still be there."""
        servers = [p for p in self.procs if p.args[1:2] == ["server"]]
        others = [p for p in self.procs if p not in servers]
        for group in (others, servers):
            for proc in reversed(group):
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        for proc in self.procs:
            proc._flowrelay_log.close()  # type: ignore[attr-defined]


def cluster_env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a test cluster: its own home, SQLite database, record file and broker
    prefix; a 3 s heartbeat timeout; no HTTP API (several servers would share its port: a test
    that wants it sets FLOWRELAY_API__ENABLED and FLOWRELAY_API__PORT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
    env.update({
        "FLOWRELAY_HOME": str(tmp_path / "home"),
        "FLOWRELAY_BROKER__URL": amqp_url,
        "FLOWRELAY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}",
        "FLOWRELAY_SERVER__HEARTBEAT_TIMEOUT_SECONDS": "3",
        "FLOWRELAY_WORKER__HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "FLOWRELAY_LOGGING__FORMAT": "json",
        "FLOWRELAY_TEST_RECORD": str(tmp_path / "record.txt"),
        "FLOWRELAY_BROKER__PREFIX": f"frtest-{uuid.uuid4().hex[:10]}",
        "FLOWRELAY_API__ENABLED": "false",
    })
    return env


@pytest.fixture
def cluster(amqp_url: str, tmp_path: Path) -> Iterator[Cluster]:
    env = cluster_env(amqp_url, tmp_path)
    c = Cluster(env, tmp_path)
    try:
        yield c
    finally:
        c.stop()
        _delete_topology(amqp_url, env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default", *c.extra_pools])


def _delete_topology(url: str, prefix: str, pools: list[str]) -> None:
    """Remove the test's own exchanges and queues (they are durable: they would pile up)."""
    import asyncio

    from automations.service import rule_queue
    from engine.broker import from_url
    from engine.broker.topology import Names

    names = Names(prefix)

    async def main() -> None:
        async with from_url(url, connection_name="flowrelay-test-cleanup") as broker:
            for queue in [names.commands, names.dead, *(rule_queue(names, r) for r in range(16)),
                          *(names.pool(p) for p in pools)]:
                try:
                    await broker.delete_queue(queue)
                except Exception:  # noqa: BLE001 - absent is fine
                    pass
            for exchange in (names.events, names.dlx):
                try:
                    await broker.delete_exchange(exchange)
                except Exception:  # noqa: BLE001
                    pass

    asyncio.run(main())
