"""`register_configured`: the `deployments:` of config.yaml, registered at server start."""

from __future__ import annotations

from typing import Any

import pytest

from engine.deployments import register_configured
from engine.errors import ConfigError
from engine.service import EngineService
from engine.settings import load_settings

pytestmark = pytest.mark.usefixtures("restore_process_state")

FLOWS = """
    from engine import flow

    @flow(name="etl")
    def etl(day: str, limit: int = 10):
        return day
"""

CONFIG = """
    deployments:
      - entrypoint: flows.py:etl
        name: nightly
        pool: etl-pool
        parameters: {{limit: {limit}}}
        schedules: [{{cron: "0 2 * * *", timezone: Europe/Paris}}]
      - entrypoint: flows.py:etl
        flow_name: etl
        name: manual
"""


async def test_only_new_or_changed_deployments_are_registered(
    service: EngineService, write: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server's own database and config.yaml sit in the project folder: never packed (a
    # live database would change the bundle's hash, so every version, at each restart)
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", db_url)
    write("flows.py", FLOWS)
    write("config.yaml", CONFIG.format(limit=5))

    first = await register_configured(service, load_settings())
    restart = await register_configured(service, load_settings())
    write("config.yaml", CONFIG.format(limit=6))
    changed = await register_configured(service, load_settings())

    assert [(d.full_name, d.version) for d in first] == [("etl/nightly", 1), ("etl/manual", 1)]
    assert restart == []  # a restart does not bump versions
    assert [(d.full_name, d.version) for d in changed] == [("etl/nightly", 2)]
    assert first[0].code is not None and first[0].code["files"] == 1  # flows.py alone
    assert changed[0].code == first[0].code
    assert (await service.read_deployment("etl/nightly")).parameters == {"limit": 6}


async def test_a_bad_entry_registers_nothing_and_names_its_line(
    service: EngineService, write: Any
) -> None:
    write("flows.py", FLOWS)
    write(
        "config.yaml",
        """
        deployments:
          - entrypoint: flows.py:etl
            name: nightly
          - entrypoint: flows.py:etl
            name: broken
            concurrency_limit: 0
        """,
    )

    with pytest.raises(ConfigError) as info:
        await register_configured(service, load_settings())

    assert str(info.value).startswith(
        "config.yaml:6: deployments[1].concurrency_limit: Input should be greater than or equal to 1"
    )
    assert await service.read_deployments() == []
