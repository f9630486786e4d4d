"""One RabbitMQ cluster (`flowrelay server` + `flowrelay worker` processes, the CLI as a user runs
it) shared by the seed tests that need deployments, with every seed flow deployed as
`<flow>/seeds` in one registration. Fails instead of skipping when CI is set and RabbitMQ is
missing (tests/conftest.py's `require_service`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL, require_service
from tests.integration.conftest import Cluster, _delete_topology, cluster_env

FLOWS = Path(__file__).parent / "flows" / "seeds.py"

#: Every flow of flows/seeds.py, deployed as `<flow name>/seeds`.
SEED_FLOWS = [
    "example", "parent_create", "parent_start", "flow_a", "flow_b", "flow_c", "flow_d",
    "parent_flow_of_flows", "parent_start_flow_run_wait", "broken", "parent_of_broken",
    "parent_retried", "trigger", "waits_for_upstream", "flaky", "hello_world", "parent_of_hello",
    "model_validator", "what_day_is_it",
]


@pytest.fixture(scope="session")
def seed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service("RabbitMQ", AMQP_URL, 5672)
    workdir = tmp_path_factory.mktemp("seed-cluster")
    env = cluster_env(AMQP_URL, workdir)
    cluster = Cluster(env, workdir, flows=FLOWS)
    try:
        cluster.start_server()
        cluster.start_worker(concurrency=8)
        lines = ["deployments:"]
        for fn in SEED_FLOWS:
            lines += [f"  - entrypoint: {FLOWS}:{fn}", "    name: seeds", f"    pool: {cluster.pool}"]
        (workdir / "seeds.yaml").write_text("\n".join(lines) + "\n")
        cluster.cli("deploy", "--file", str(workdir / "seeds.yaml"))
        yield cluster
    finally:
        cluster.stop()
        _delete_topology(AMQP_URL, env["FLOWRELAY_BROKER__PREFIX"], [cluster.pool, "default"])
