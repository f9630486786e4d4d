"""Schemathesis generates requests from the OpenAPI document (valid and invalid ones, with the
write token) against a real server on a socket: none may get a 5xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from engine.schemas import DeploymentSpec
from engine.server.app import Server
from engine.settings import Settings
from engine.states import Completed, Running
from tests.api.background import BackgroundServer
from tests.api.conftest import READ, WRITE

RULES = """
automations:
  - name: fuzz-rule
    trigger: {type: event, expect: [batch.ready]}
    actions:
      - {type: run-deployment, deployment: hello/fuzz}
"""


async def _seed(server: Server) -> None:
    await server.service.register_deployment(DeploymentSpec(
        name="fuzz", flow_name="hello", entrypoint="flows.py:hello", work_pool="fuzzpool",
        schedules=[{"cron": "*/5 * * * *"}],
    ))
    run = await server.service.create_flow_run("hello", {"x": 1})
    await server.service.set_flow_run_state(run.id, Running())
    await server.service.set_flow_run_state(run.id, Completed())
    assert server.automations is not None
    await server.automations.apply_automations([{"source": "fuzz.yaml", "text": RULES}])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    config = Settings(
        home=home,
        database={"url": f"sqlite+aiosqlite:///{home / 'fuzz.db'}"},
        broker={"url": f"memory://fuzz-{uuid.uuid4().hex[:6]}"},
        api={"port": 0, "tokens": {"read": [READ], "write": [WRITE]}, "max_batch": 20},
    )
    with BackgroundServer(config, seed=_seed) as server:
        yield server


def test_no_server_errors(fuzz_server: BackgroundServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"GET /api/flow-runs", "POST /api/events", "POST /api/deployments/{flow}/{name}/runs"} <= labels
    checked = []
    for operation in operations:
        if operation.path == "/api/stream":  # an endless response: tests/api/test_stream.py
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def no_5xx(case: Any) -> None:
            response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {WRITE}"},
                                 timeout=15)
            assert response.status_code < 500, (
                case.method, case.formatted_path, case.query, case.body, response.text)
            if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
                detail = response.json().get("detail")
                assert isinstance(detail, str) and detail, response.text  # always a reason

        no_5xx()
        checked.append(operation.label)
    assert len(checked) == len(operations) - 1
