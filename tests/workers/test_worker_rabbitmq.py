"""The worker against real RabbitMQ: warm children reach the engine through `RemoteEngine`.

The server side is a stand-in built from the same parts as `flowrelay server` (the engine
service behind an `RpcServer` on the commands queue, plus a `heartbeat` command)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from engine.broker import Names, RpcServer, build_topology, from_url
from engine.remote import RemoteEngine
from engine.server.commands import CommandTable
from engine.states import Scheduled, utcnow
from workers import Worker, encode_dispatch

pytestmark = pytest.mark.rabbitmq

POOL = "default"


async def test_process_mode_over_rabbitmq_claims_runs_heartbeats_and_completes(
    amqp_url, flows, service, monkeypatch
):
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", amqp_url)  # what the children connect to
    names = Names(f"flowrelay-test-{uuid.uuid4().hex[:12]}")
    beats: list[tuple[str, str, list[uuid.UUID]]] = []
    attempts: dict[uuid.UUID, int] = {}

    seen = attempts

    async def heartbeat(
        worker_id: str, pool: str, flow_run_ids: list[uuid.UUID],
        attempts: dict[uuid.UUID, int] | None = None, info: dict | None = None,
    ) -> dict:
        beats.append((worker_id, pool, flow_run_ids))
        seen.update(attempts or {})
        return {"lease_seconds": 30.0, "revoked": []}



    table = CommandTable()
    table.add_service(service)
    table.add("heartbeat", heartbeat)
    server_broker, worker_broker = from_url(amqp_url), from_url(amqp_url)
    await server_broker.connect()
    await worker_broker.connect()
    api = RemoteEngine(worker_broker, timeout=10, names=names)
    worker = Worker(worker_broker, api, pool=POOL, concurrency=2, mode="process",
                    heartbeat_interval=0.05, drain_timeout=10, names=names)
    try:
        await server_broker.declare_topology(build_topology(pools=[POOL], prefix=names.prefix))
        async with RpcServer(server_broker, names.commands, table):
            await worker.start()
            runs, published = [], {}
            for tag in ("a", "b", "c"):
                # each run outlasts several heartbeat intervals, so a heartbeat must name it
                run = await service.create_flow_run("append", {"tag": tag, "hold": 0.3},
                                                     state=Scheduled(), work_pool=POOL)
                published[run.id] = utcnow()
                await server_broker.publish(names.events, f"dispatch.{POOL}",
                                            encode_dispatch(run.id, f"{flows}:append", work_pool=POOL))
                runs.append(run.id)
            async with asyncio.timeout(60):
                while not all([(await service.read_flow_run(r)).state.is_final() for r in runs]):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await worker.stop()
    finally:
        await worker.stop()
        await api.close()
        for queue in (names.pool(POOL), names.commands, names.dead):
            await server_broker.delete_queue(queue)
        for exchange in (names.events, names.dlx):
            await server_broker.delete_exchange(exchange)
        await worker_broker.close()
        await server_broker.close()

    for run_id in runs:
        run = await service.read_flow_run(run_id)
        assert run.state.name == "Completed", run.state
        running = [s for s in await service.read_flow_run_states(run_id) if s.name == "Running"]
        assert running[0].details.worker_id == worker.worker_id
        # the claim opened attempt 1; the child's reports and the heartbeats carried it
        assert run.attempts == 1 and running[0].details.attempt == 1
        assert run.state.details.attempt == 1 and attempts[run_id] == 1
        assert any("appended" in log.message for log in await service.read_logs(run_id))
    latencies = []
    for run_id in runs:
        [running] = [s for s in await service.read_flow_run_states(run_id) if s.name == "Running"]
        latencies.append((running.timestamp - published[run_id]).total_seconds() * 1000)
    print(f"\ndispatch published -> Running in a warm child, over RabbitMQ: "
          f"{', '.join(f'{ms:.1f}' for ms in latencies)} ms")
    assert {b[:2] for b in beats} == {(worker.worker_id, POOL)}
    assert any(b[2] for b in beats), "a heartbeat named a running run"
    assert worker.stats.claimed == 3
