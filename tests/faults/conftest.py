"""Fault injection on a real cluster: `flowrelay server` and `flowrelay worker` processes on
RabbitMQ (the `Cluster` of tests/integration), killed, restarted and cut off while work flows.

What the tests read, and where from:
- executions, from the record file the flows write themselves (`tests/faults/flows.py`);
- runs and their state histories, straight from the database (read only), so a test counts
  every row rather than what an API page shows;
- dead-lettered messages, from the cluster's `<prefix>.dead` queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.conftest import Cluster, _delete_topology, cluster_env
from tests.integration.conftest import wait_until as integration_wait_until

FLOWS = Path(__file__).parent / "flows.py"
LAUNCHER = Path(__file__).parent / "launcher.py"
FINAL = {"Completed", "Failed", "Crashed", "Cancelled"}
#: the heartbeat timeout the cluster runs with (server.heartbeat_timeout_seconds)
HEARTBEAT_TIMEOUT = 3.0

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.3,
               what: str = "condition") -> T:
    """`tests.integration.conftest.wait_until` with the fault tests' longer defaults."""
    return integration_wait_until(predicate, timeout, interval, what)


@dataclass
class Run:
    id: str
    flow: str
    parameters: dict[str, Any]
    state: str | None
    idempotency_key: str | None
    caused_by: dict[str, Any] | None
    states: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)

    @property
    def state_names(self) -> list[str]:
        return [name for name, _, _ in self.states]


@dataclass
class Execution:
    kind: str
    run_id: str
    pid: int
    start: float
    end: float
    extra: str


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _uuid(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _ts(value: Any) -> float:
    import datetime as dt

    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


def read_runs(db_url: str) -> dict[str, Run]:
    """Every flow run with its state history, read from the database."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> dict[str, Run]:
        engine = create_async_engine(db_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text(
                    "SELECT id, flow_name, parameters, state_name, idempotency_key, caused_by "
                    "FROM flow_runs"))).all()
                states = (await conn.execute(text(
                    "SELECT flow_run_id, name, timestamp, details FROM flow_run_states ORDER BY id"
                ))).all()
        finally:
            await engine.dispose()
        runs = {
            _uuid(r[0]): Run(_uuid(r[0]), r[1], _json(r[2]) or {}, r[3], r[4], _json(r[5]))
            for r in rows
        }
        for run_id, name, timestamp, details in states:
            run = runs.get(_uuid(run_id))
            if run is not None:  # else created between the two reads
                run.states.append((name, _ts(timestamp), _json(details) or {}))
        return runs

    return asyncio.run(main())


def count_dead(amqp_url: str, queue: str) -> list[dict[str, Any]]:
    """Drain the dead-letter queue: each message's body, headers and routing key."""
    from engine.broker import from_url

    async def main() -> list[dict[str, Any]]:
        dead: list[dict[str, Any]] = []
        async with from_url(amqp_url, connection_name="flowrelay-faults-dead") as broker:
            async def take(message: Any) -> None:
                dead.append({"body": message.body, "headers": message.headers,
                             "routing_key": message.routing_key})
                await message.ack()

            consumer = await broker.consume(queue, take, prefetch=100)
            await asyncio.sleep(1.0)
            await consumer.cancel()
        return dead

    return asyncio.run(main())


class FaultCluster(Cluster):
    """The integration `Cluster` with the fault flows, kills, the database and the records."""

    def kill(self, proc: subprocess.Popen[str]) -> float:
        """SIGKILL the process and its children (its process group); return when it happened."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return time.time()

    def runs(self, flow: str | None = None) -> dict[str, Run]:
        runs = read_runs(self.env["FLOWRELAY_DATABASE__URL"])
        return {k: r for k, r in runs.items() if flow is None or r.flow == flow}

    def executions(self, kind: str | None = None) -> list[Execution]:
        rows = []
        for r in self.records():
            if len(r) == 6 and (kind is None or r[0] == kind):
                rows.append(Execution(r[0], r[1], int(r[2]), float(r[3]), float(r[4]), r[5]))
        return rows

    def apply(self, yaml_text: str, name: str = "rules.yaml") -> Path:
        path = self.workdir / name
        path.write_text(textwrap.dedent(yaml_text))
        self.cli("automation", "apply", str(path))
        return path

    def launch(self, deployment: str, batches: list[str], *, key_prefix: str = "launch",
               pace: float = 0.0, out: str = "launcher") -> subprocess.Popen[str]:
        """Create one run of `deployment` per batch id in a background process, each with an
        idempotency key, retrying each until the server acknowledges it (it may be dead)."""
        arg_file = self.workdir / f"{out}.json"
        arg_file.write_text(json.dumps({"deployment": deployment, "batches": batches,
                                        "key_prefix": key_prefix, "pace": pace}))
        log = open(self.workdir / f"{out}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, str(LAUNCHER), str(arg_file)], env=self.env,
                                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        proc._flowrelay_log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def dead_letters(self) -> list[dict[str, Any]]:
        from engine.broker.topology import Names

        return count_dead(self.env["FLOWRELAY_BROKER__URL"],
                          Names(self.env["FLOWRELAY_BROKER__PREFIX"]).dead)


def fault_env(amqp_url: str, tmp_path: Path) -> dict[str, str]:
    env = cluster_env(amqp_url, tmp_path)
    env.update({
        # A dead server is noticed by callers within seconds, not the default 10 s.
        "FLOWRELAY_BROKER__RPC_TIMEOUT_SECONDS": "4",
        "FLOWRELAY_LOGGING__LEVEL": "INFO",
    })
    return env


@pytest.fixture
def faults(amqp_url: str, tmp_path: Path) -> Iterator[FaultCluster]:
    c = FaultCluster(fault_env(amqp_url, tmp_path), tmp_path, flows=FLOWS)
    try:
        yield c
    finally:
        c.stop()
        _delete_topology(amqp_url, c.env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default"])


@pytest.fixture
def pg_faults(amqp_url: str, postgres_db: str, tmp_path: Path) -> Iterator[FaultCluster]:
    """A fault cluster on a fresh PostgreSQL database (several servers may share it)."""
    env = fault_env(amqp_url, tmp_path)
    env["FLOWRELAY_DATABASE__URL"] = postgres_db
    c = FaultCluster(env, tmp_path, flows=FLOWS)
    try:
        yield c
    finally:
        c.stop()
        _delete_topology(amqp_url, env["FLOWRELAY_BROKER__PREFIX"], [c.pool, "default"])


def chain_rules(upstream: str = "up", name: str = "chain") -> str:
    """An automation `name`: each Completed run of flow `upstream` launches `down/faults` with
    the batch id of its result."""
    return f"""
    automations:
      - name: {name}
        trigger:
          type: flow-run-state-change
          match: {{flow: {upstream}}}
          expect: [Completed]
        actions:
          - type: run-deployment
            deployment: down/faults
            parameters:
              upstream_batch_id: "{{{{ event.payload.result.batch_id }}}}"
"""


CHAIN_RULES = chain_rules()


def setup_chain(c: FaultCluster) -> None:
    """Deployments `up/faults` and `down/faults`, chained by the automation `chain`."""
    c.deploy("up", "faults")
    c.deploy("down", "faults")
    c.apply(CHAIN_RULES)


def check_chain(c: FaultCluster, batches: list[str]) -> dict[str, int]:
    """The chain's invariants once quiet; returns the counts."""
    runs = c.runs()
    ups = [r for r in runs.values() if r.flow == "up"]
    downs = [r for r in runs.values() if r.flow == "down"]
    up_by_batch: dict[str, list[Run]] = {}
    for r in ups:
        up_by_batch.setdefault(r.parameters["batch_id"], []).append(r)
    down_by_batch: dict[str, list[Run]] = {}
    for r in downs:
        down_by_batch.setdefault(r.parameters["upstream_batch_id"], []).append(r)
    # one upstream run per launched batch (idempotency keys), none lost
    assert sorted(up_by_batch) == sorted(batches), "upstream runs lost or invented"
    assert all(len(v) == 1 for v in up_by_batch.values()), "an upstream batch has two runs"
    # every run a flow finished has its final state recorded
    for e in c.executions():
        if e.kind in ("up", "down"):
            assert runs[e.run_id].state in FINAL, (e, runs[e.run_id].state_names)
    # nothing stuck: everything final
    stuck = [(r.flow, r.id, r.state_names) for r in runs.values() if r.state not in FINAL]
    assert not stuck, stuck
    completed = {b for b, v in up_by_batch.items() if v[0].state == "Completed"}
    # every upstream Completed produced exactly one downstream run
    assert set(down_by_batch) == completed, (sorted(set(down_by_batch) ^ completed))[:10]
    duplicated = {b: len(v) for b, v in down_by_batch.items() if len(v) != 1}
    assert not duplicated, duplicated
    return {"up": len(ups), "up_completed": len(completed), "down": len(downs),
            "down_completed": sum(1 for r in downs if r.state == "Completed")}


def publish(amqp_url: str, messages: list[tuple[str, str, bytes, dict[str, Any]]]) -> None:
    """Publish `(exchange, routing key, body, options)` messages in order, with confirms."""
    from engine.broker import from_url

    async def main() -> None:
        async with from_url(amqp_url, connection_name="flowrelay-faults-publish") as broker:
            for exchange, routing_key, body, options in messages:
                await broker.publish(exchange, routing_key, body, **options)

    asyncio.run(main())


def automation(c: FaultCluster, name: str) -> dict[str, Any]:
    return c.cli_json("automation", "inspect", name)  # type: ignore[return-value]


def publish_many(amqp_url: str, exchange: str, routing_key: str, bodies: list[bytes],
                 window: int = 200) -> None:
    """Publish with confirms, `window` publishes in flight at a time."""
    from engine.broker import from_url

    async def main() -> None:
        async with from_url(amqp_url, connection_name="flowrelay-faults-publish") as broker:
            for i in range(0, len(bodies), window):
                await asyncio.gather(*(broker.publish(exchange, routing_key, body)
                                       for body in bodies[i:i + window]))

    asyncio.run(main())


def queue_depth(queue: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) messages of `queue` in the tests' virtual host, from
    `rabbitmqctl`; None if not listed."""
    from tests.conftest import amqp_vhost

    proc = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", amqp_vhost(), "name",
                           "messages_ready", "messages_unacknowledged"],
                          capture_output=True, text=True, timeout=60)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tap:
    """Every message published to the cluster's events exchange, as (message id, routing key):
    an exclusive queue bound to `#`, consumed on a thread of its own. Counts publishes."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        import threading

        from engine.broker.topology import Names

        self.url, self.exchange = amqp_url, Names(prefix).events
        self.prefix = prefix
        self.messages: list[tuple[str, str]] = []
        #: run id -> when the tap first received its work dispatch (time.time())
        self.dispatched: dict[str, float] = {}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the tap did not start"

    async def _main(self) -> None:
        from engine.broker import from_url
        from engine.broker.topology import QueueSpec

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with from_url(self.url, connection_name="flowrelay-faults-tap") as broker:
            queue = await broker.declare_queue(QueueSpec.temporary(prefix=f"{self.prefix}.tap"))
            await broker.bind(queue, self.exchange, "#")

            async def take(message: Any) -> None:
                self.messages.append((str(message.message_id), message.routing_key))
                if message.routing_key.startswith("dispatch."):
                    run_id = json.loads(message.body).get("payload", {}).get("flow_run_id")
                    self.dispatched.setdefault(str(run_id), time.time())

            consumer = await broker.consume(queue, take, auto_ack=True)
            self._ready.set()
            await self._stop.wait()
            await consumer.cancel()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class StreamReader:
    """The event ids one server's `GET /api/stream` delivers, read on a thread of its own."""

    def __init__(self, port: int) -> None:
        import threading
        import urllib.request

        self.ids: set[str] = set()
        self.url = f"http://127.0.0.1:{port}/api/stream"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._response = urllib.request.urlopen(self.url, timeout=60)  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._response:
                line = raw.decode().strip()
                if line.startswith("id: "):
                    self.ids.add(line[4:])
        except Exception:  # noqa: BLE001 - closed under the reader (http.client raises several kinds)
            pass

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self._response.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outbox(db_url: str) -> list[tuple[str, str, str | None]]:
    """Every outbox row: (event id, routing key, writer)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> list[tuple[str, str, str | None]]:
        engine = create_async_engine(db_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT id, routing_key, writer FROM events"))).all()
        finally:
            await engine.dispose()
        return [(_uuid(r[0]), r[1], r[2]) for r in rows]

    return asyncio.run(main())
