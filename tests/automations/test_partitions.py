"""Rules in parallel: the automations are split into rule partitions (`automations.partitions`),
each with its own queue, evaluated by the server that leases it (`engine.server.leases`). Two
servers on one PostgreSQL database share them; each fires its own once; a join whose parts come
through different servers fires once, also when the server evaluating it goes away mid-join.

(The in-memory broker stands in for RabbitMQ: both servers run in this process.
`tests/faults/test_cluster.py` does it with processes, RabbitMQ and SIGKILL.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from automations.service import rule_partition, rule_partitions
from engine.schemas import Event
from engine.server.app import Server
from engine.settings import load_settings
from tests.automations.test_service import JOIN_RULE, completed, deploy, runs_of, until

pytestmark = pytest.mark.postgres

PARTITIONS = 4
NAMES = [f"rule-{i}" for i in range(8)]


@pytest.fixture
def settings(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", postgres_db)
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://partitions-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("FLOWRELAY_AUTOMATIONS__PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("FLOWRELAY_SERVER__LEASE_SECONDS", "1.5")
    return load_settings()


def _rules() -> str:
    items = "".join(f"""
  - name: {name}
    trigger: {{type: event, expect: [go.{name}]}}
    actions:
      - {{type: run-deployment, deployment: d/main, parameters: {{who: {name}}}}}
""" for name in NAMES)
    return f"automations:{items}"


async def _shared(first: Server, second: Server) -> bool:
    assert first.automations is not None and second.automations is not None
    mine, theirs = set(first.automations._consumers), set(second.automations._consumers)
    return bool(mine) and bool(theirs) and not mine & theirs and len(mine | theirs) == PARTITIONS


def test_one_partition_by_default_and_always_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWRELAY_AUTOMATIONS__PARTITIONS", raising=False)
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", "postgresql+asyncpg://u@h/db")
    assert rule_partitions(load_settings()) == 1
    monkeypatch.setenv("FLOWRELAY_AUTOMATIONS__PARTITIONS", "8")
    assert rule_partitions(load_settings()) == 8
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", "sqlite+aiosqlite:///x.db")
    assert rule_partitions(load_settings()) == 1  # one server


async def test_two_servers_share_the_rule_partitions_and_each_rule_fires_once(settings: Any) -> None:
    assert len({rule_partition(n, PARTITIONS) for n in NAMES}) == PARTITIONS  # spread over all
    async with Server(settings) as first, Server(settings) as second:
        await deploy(first, "d/main")
        assert first.automations is not None and second.automations is not None
        await first.automations.apply_automations([{"source": "r.yaml", "text": _rules()}])
        await until(lambda: _shared(first, second), timeout=15)
        await until(lambda: _knows(second, NAMES[-1]))
        # When each rule's event comes in, half through each server
        for i, name in enumerate(NAMES):
            server = first if i % 2 else second
            await server.service.emit_event(Event(event=f"go.{name}", resource={"id": f"thing/{i}"}))
        # Then every rule fired once, and both servers evaluated events
        runs = await until(lambda: _runs_when(first, len(NAMES)), timeout=15)
        assert sorted(r.parameters["who"] for r in runs) == sorted(NAMES)
        assert first.automations.evaluated > 0 and second.automations.evaluated > 0


async def test_a_join_fires_once_across_servers_and_when_its_server_goes_away(settings: Any) -> None:
    first = Server(settings)
    await first.start()
    try:
        async with Server(settings) as second:
            await deploy(first, "b/main", "c/main", "d/main")
            assert first.automations is not None and second.automations is not None
            await second.automations.apply_automations([{"source": "j.yaml", "text": JOIN_RULE}])
            await until(lambda: _shared(first, second), timeout=15)
            await until(lambda: _knows(first, "join"))
            partition = rule_partition("join", PARTITIONS)
            owner, other = (first, second) if partition in first.automations._consumers else (second, first)
            # A join whose parts come through different servers fires once
            await owner.service.emit_event(completed("b", "B(1)", batch="1"))
            await other.service.emit_event(completed("c", "C(1)", batch="1"))
            [run] = await until(lambda: runs_of(first, "d/main"), timeout=15)
            assert run.parameters == {"b": "B(1)", "c": "C(1)"}
            # Half a join evaluated by its partition's server, which then goes away
            await other.service.emit_event(completed("b", "B(2)", batch="2"))
            assert owner.automations is not None
            await until(lambda: _pending(owner))
            await owner.stop()
            # the other server takes the partition over, with the open join from the database
            await other.service.emit_event(completed("c", "C(2)", batch="2"))
            runs = await until(lambda: _runs_when(other, 2, "d/main"), timeout=20)
            assert sorted(r.parameters["b"] for r in runs) == ["B(1)", "B(2)"]
            assert partition in (other.automations._consumers if other.automations else {})
    finally:
        if first.automations is not None and first.automations._running:
            await first.stop()


async def _knows(server: Server, name: str) -> bool:
    assert server.automations is not None
    return name in server.automations.automations


async def _pending(server: Server) -> list[Any]:
    assert server.automations is not None
    return list((await server.automations.read_automation("join"))["pending"])


async def _runs_when(server: Server, count: int, deployment: str = "d/main") -> list[Any]:
    runs = await runs_of(server, deployment)
    return runs if len(runs) >= count else []
