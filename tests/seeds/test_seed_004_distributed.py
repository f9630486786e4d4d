"""Seed 004 — the "Flows" page's statements about deployment runs, on RabbitMQ with
`flowrelay server` and `flowrelay worker` processes (tests/seeds/conftest.py); flows in
tests/seeds/flows/seeds.py. The page's in-process examples are in test_seed_004_flows.py.

- "When creating flow runs from the API, parameter names must be specified": `--param NAME=VALUE`
  (there is no positional form); an unknown name fails the run, saying which names the flow takes.
- "Type hints ... automatically coercing JSON provided values": a JSON object becomes the pydantic
  model, an ISO string a datetime, on the worker.
- "If a flow run for a deployment receives invalid parameters, it will move from a Pending state
  to a Failed without entering a Running state."
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.rabbitmq


def watch(cluster: Cluster, deployment: str, *params: str, ok: bool = True) -> dict:
    args = [a for p in params for a in ("--param", p)]
    proc = cluster.cli("deployment", "run", deployment, *args, "--watch", "--json", check=False)
    assert proc.returncode == (0 if ok else 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    return cluster.cli_json("flow-run", "inspect", json.loads(proc.stdout)["id"])  # type: ignore[return-value]


def test_json_parameters_are_coerced_by_the_type_hints(seed_cluster: Cluster) -> None:
    run = watch(seed_cluster, "model_validator/seeds", 'model={"a": "1", "b": 2, "c": "x"}')
    assert run["result"] == "1 2.0 'x'"
    day = watch(seed_cluster, "what_day_is_it/seeds", "date=2021-01-01T02:00:19.180906")
    assert day["result"] == "It was Friday on 2021-01-01T02:00:19.180906"
    today = watch(seed_cluster, "what_day_is_it/seeds")  # `date: datetime = None` left out
    assert today["state"]["name"] == "Completed" and today["result"].startswith("It was ")


@pytest.mark.parametrize(("param", "message"), [
    ('model={"a": "not a number", "b": 1, "c": "x"}', "model.a"),
    ("modle=1", "unknown parameter"),
])
def test_invalid_parameters_go_pending_to_failed_without_running(seed_cluster: Cluster, param: str,
                                                                  message: str) -> None:
    before = len(seed_cluster.records("model_validator"))
    run = watch(seed_cluster, "model_validator/seeds", param, ok=False)
    names = [s["name"] for s in run["states"]]
    assert "Pending" in names and "Running" not in names and names[-1] == "Failed"
    assert message in run["states"][-1]["message"]
    assert len(seed_cluster.records("model_validator")) == before  # the body never ran
