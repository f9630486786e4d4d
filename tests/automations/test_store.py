"""The automations' tables on SQLite and PostgreSQL: trigger state written without reading it first
(an upsert per row), rows of an automation deleted meanwhile dropped, not failing the write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from automations import store
from automations.loader import parse_documents
from engine.service import EngineService

RULES = """
automations:
  - name: watched
    trigger: {type: event, expect: [batch.ready]}
    actions: [{type: emit-event, event: seen}]
"""


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[EngineService]:
    svc = await EngineService.open(db_url)
    try:
        yield svc
    finally:
        await svc.close()


async def stored(service: EngineService) -> dict[tuple[str, str], dict[str, Any]]:
    async with service.read_session() as session:
        return await store.load_state(session)


async def test_state_rows_are_inserted_replaced_and_deleted(service: EngineService) -> None:
    # Given a stored automation
    [item] = parse_documents([("r.yaml", RULES)], known_deployments={})
    await service.write(lambda s: store.upsert_automations(s, [(item.automation, "r.yaml")]), events=False)

    # When its state is written, rewritten and partly deleted, and rows of an unknown one come along
    await service.write(lambda s: store.apply_state(s, {
        ("watched", "b:"): {"counted": [["e1", "t"]]}, ("watched", "s:e1"): {"until": "t"},
        ("deleted-meanwhile", "b:"): {"counted": []},
    }), events=False)
    first = await stored(service)
    await service.write(lambda s: store.apply_state(s, {
        ("watched", "b:"): {"counted": [["e1", "t"], ["e2", "t"]]}, ("watched", "s:e1"): None,
        ("watched", "s:never-written"): None,
    }), events=False)

    # Then the database holds exactly the last state of the known automation
    assert first == {("watched", "b:"): {"counted": [["e1", "t"]]}, ("watched", "s:e1"): {"until": "t"}}
    assert await stored(service) == {("watched", "b:"): {"counted": [["e1", "t"], ["e2", "t"]]}}


async def test_deleting_an_automation_deletes_its_state(service: EngineService) -> None:
    [item] = parse_documents([("r.yaml", RULES)], known_deployments={})
    await service.write(lambda s: store.upsert_automations(s, [(item.automation, "r.yaml")]), events=False)
    await service.write(lambda s: store.apply_state(s, {("watched", "b:"): {"n": 1}}), events=False)

    await service.write(lambda s: store.delete_automation(s, "watched"), events=False)
    await service.write(lambda s: store.apply_state(s, {("watched", "b:"): {"n": 2}}), events=False)

    assert await stored(service) == {}


async def test_counters_add_up_and_skip_automations_deleted_meanwhile(service: EngineService) -> None:
    [item] = parse_documents([("r.yaml", RULES)], known_deployments={})
    await service.write(lambda s: store.upsert_automations(s, [(item.automation, "r.yaml")]), events=False)

    for _ in range(2):
        await service.write(lambda s: store.bump_counters(s, {
            "watched": {"matched": 2, "fired": 1, "failed": 0}, "deleted-meanwhile": {"matched": 1},
        }), events=False)

    async with service.read_session() as session:
        rows = await store.load_automations(session)
    assert [(r.name, r.counters) for r in rows] == [("watched", {"matched": 4, "fired": 2})]
