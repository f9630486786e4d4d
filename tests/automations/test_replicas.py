"""Two servers on one PostgreSQL database and one broker: one rule engine is active at a time
(a single-active-consumer queue), changes made through either reach both, and the standby that
takes over continues the open windows from the database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from engine.server.app import Server
from engine.settings import load_settings
from tests.automations.test_service import JOIN_RULE, completed, deploy, runs_of, until

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    # two servers in one process need real concurrent writers: PostgreSQL, not SQLite
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", postgres_db)
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", f"memory://replicas-{uuid.uuid4().hex[:6]}")
    return load_settings()


async def test_standby_hears_changes_and_takes_over_an_open_join(settings: Any) -> None:
    first = Server(settings)
    await first.start()
    try:
        async with Server(settings) as second:  # started after: the standby
            await deploy(first, "b/main", "c/main", "d/main")
            assert first.automations is not None and second.automations is not None
            # Given a rule applied through the standby: the active one hears of it
            await second.automations.apply_automations([{"source": "j.yaml", "text": JOIN_RULE}])
            await until(lambda: _knows(first))
            # and half a join, evaluated by the active one
            await first.service.emit_event(completed("b", "B(7)", batch="7"))
            await until(lambda: _pending(first))
            # When the active server goes away
            await first.stop()
            # Then the standby takes over, with the open join from the database
            await second.service.emit_event(completed("c", "C(7)", batch="7"))
            [run] = await until(lambda: runs_of(second, "d/main"), timeout=10)
            assert run.parameters == {"b": "B(7)", "c": "C(7)"}
            assert len(await runs_of(second, "d/main")) == 1
    finally:
        if first.automations is not None and first.automations._running:
            await first.stop()


async def _knows(server: Server) -> bool:
    assert server.automations is not None
    return "join" in server.automations.automations


async def _pending(server: Server) -> list[Any]:
    assert server.automations is not None
    return list((await server.automations.read_automation("join"))["pending"])
