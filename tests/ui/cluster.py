"""A `flowrelay server` (with its HTTP API and web UI on a free port) and a `flowrelay worker`
on the real RabbitMQ, for the browser tests and `docs/make_screenshots.py`.

It is the integration tests' `Cluster` (own broker prefix, own SQLite database, processes in
their own sessions) plus what a browser test needs: the UI's address, JSON calls to the API and
waiting on it.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.integration.conftest import Cluster, _delete_topology, cluster_env, wait_until

FLOWS = Path(__file__).parent / "flows.py"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UiCluster(Cluster):
    def __init__(self, amqp_url: str, workdir: Path, flows: Path = FLOWS) -> None:
        env = cluster_env(amqp_url, workdir)
        self.port = free_port()
        env["FLOWRELAY_API__ENABLED"] = "true"  # cluster_env turns it off for other tests
        env["FLOWRELAY_API__PORT"] = str(self.port)
        env["FLOWRELAY_LOGGING__LEVEL"] = "WARNING"
        super().__init__(env, workdir, flows=flows)
        self.amqp_url = amqp_url
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=15)

    def start(self, worker: bool = True) -> None:
        """Server (waits until its API answers) and one worker for the cluster's pool."""
        self.spawn("server", log_name="server")
        wait_until(self._healthy, timeout=40, what=f"the API at {self.url}/api/health")
        if worker:
            self.start_worker(concurrency=4)

    def _healthy(self) -> bool:
        try:
            return self.http.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self.http.close()
        self.stop()
        # On a thread of its own: Playwright's sync API keeps an event loop running on this one,
        # and the clean-up calls asyncio.run.
        cleanup = threading.Thread(target=_delete_topology, args=(
            self.amqp_url, self.env["FLOWRELAY_BROKER__PREFIX"], [self.pool, "default", *self.extra_pools]))
        cleanup.start()
        cleanup.join(timeout=60)

    # --- set-up through the CLI, as a user would --------------------------------------------
    def deploy_all(self, name: str, flows: list[str], **extra: dict[str, Any]) -> None:
        """Deploy each flow function of the flows file as `<flow>/<name>` in one registration."""
        lines = ["deployments:"]
        for fn in flows:
            lines += [f"  - entrypoint: {self.flows}:{fn}", f"    name: {name}", f"    pool: {self.pool}"]
            for key, value in extra.get(fn, {}).items():
                lines.append(f"    {key}: {json.dumps(value)}")
        path = self.workdir / f"deployments-{name}.yaml"
        path.write_text("\n".join(lines) + "\n")
        self.cli("deploy", "--file", str(path))

    def apply(self, yaml_text: str, name: str = "rules.yaml") -> None:
        path = self.workdir / name
        path.write_text(textwrap.dedent(yaml_text))
        self.cli("automation", "apply", str(path))

    # --- the API ----------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def post(self, path: str, body: Any = None) -> Any:
        response = self.http.post(path, json=body)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    def run(self, deployment: str, parameters: dict[str, Any] | None = None) -> str:
        """Create a run of `FLOW/NAME` through the API; its id."""
        run = self.post(f"/api/deployments/{deployment}/runs", {"parameters": parameters or {}})
        return str(run["id"])

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("/api/flow-runs", limit=200, **filters)["items"]
        return items

    def wait_final(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

        def done() -> dict[str, Any] | None:
            run: dict[str, Any] = self.get(f"/api/flow-runs/{run_id}")
            return run if run["state_type"] in final else None

        return wait_until(done, timeout=timeout, what=f"run {run_id} final")
