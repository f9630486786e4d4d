"""The API of a real `flowrelay server` process on RabbitMQ, with a `flowrelay worker` process:
a run started over HTTP executes on the worker, its events arrive on the stream, /metrics
counts it, and SIGTERM stops the server cleanly with a stream still open."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Cluster, _delete_topology, cluster_env

pytestmark = pytest.mark.rabbitmq

TOKEN = "rabbit-write-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api_cluster(amqp_url: str, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    env = cluster_env(amqp_url, tmp_path)
    port = free_port()
    env.update({
        "FLOWRELAY_API__ENABLED": "true",
        "FLOWRELAY_API__PORT": str(port),
        "FLOWRELAY_API__TOKENS__WRITE": json.dumps([TOKEN]),
        "FLOWRELAY_API__STREAM_KEEPALIVE_SECONDS": "1",
    })
    cluster = Cluster(env, tmp_path)
    try:
        yield cluster, f"http://127.0.0.1:{port}"
    finally:
        cluster.stop()
        _delete_topology(amqp_url, env["FLOWRELAY_BROKER__PREFIX"], [cluster.pool, "default"])


def wait_for(predicate, timeout: float = 60, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        time.sleep(0.2)


def test_api_on_a_real_server(api_cluster: tuple[Cluster, str]) -> None:
    cluster, url = api_cluster
    server = cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("trivial")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:

        assert client.get("/api/health").json()["status"] == "ok"
        assert httpx.get(f"{url}/api/flow-runs").status_code == 401

        # A stream reader in a thread collects the events it sees
        seen: list[dict] = []
        ended = threading.Event()

        def read_stream() -> None:
            with httpx.stream("GET", f"{url}/api/stream", params={"match": "flow-run.*", "access_token": TOKEN},
                              timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[len("data: "):]))
            ended.set()

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        time.sleep(0.5)

        key = f"api-{uuid.uuid4().hex[:8]}"
        created = client.post(f"/api/deployments/trivial/{name}/runs", json={"parameters": {"x": 7}, "idempotency_key": key})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert client.post(f"/api/deployments/trivial/{name}/runs", json={"idempotency_key": key}).status_code == 200

        run = wait_for(lambda: (r := client.get(f"/api/flow-runs/{run_id}").json())["state_name"] == "Completed" and r,
                       what="the run Completed")
        assert run["result"] == 7 and run["deployment"] == f"trivial/{name}"
        mine = wait_for(lambda: [e["event"] for e in seen if e["resource"]["id"] == f"flow-run/{run_id}"
                                 and e["event"] == "flow-run.Completed"] and
                        [e["event"] for e in seen if e["resource"]["id"] == f"flow-run/{run_id}"],
                        what="the run's events on the stream")
        assert mine[0] == "flow-run.Scheduled" and mine[-1] == "flow-run.Completed" and "flow-run.Running" in mine

        metrics = client.get("/metrics").text
        assert 'flowrelay_flow_runs{state="Completed",state_type="COMPLETED"} 1.0' in metrics
        assert 'flowrelay_dispatch_latency_seconds_count{pool="' + cluster.pool + '"} 1.0' in metrics
        assert "flowrelay_workers{pool=" in metrics

        # SIGTERM: the open stream ends, the server exits on its own
        os.killpg(server.pid, signal.SIGTERM)
        assert ended.wait(20), "the stream was not closed by the server's shutdown"
        assert server.wait(timeout=30) == 0
        assert "Traceback" not in cluster.log_of("server-0")
