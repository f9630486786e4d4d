"""Automations on the real RabbitMQ with separate server and worker processes, driven through the
CLI as a user would: rules applied with `flowrelay automation apply`, runs launched with
`flowrelay deployment run` / `flowrelay events emit`, outcomes read with `--json`."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster
from tests.integration.test_distributed import wait_until

pytestmark = pytest.mark.rabbitmq


def apply(cluster: Cluster, yaml_text: str, name: str = "rules.yaml") -> Path:
    path = cluster.workdir / name
    path.write_text(textwrap.dedent(yaml_text))
    cluster.cli("automation", "apply", str(path))
    return path


def runs_of(cluster: Cluster, flow: str) -> list[dict]:
    return cluster.cli_json("flow-run", "ls", "--flow", flow)  # type: ignore[return-value]


def completed(cluster: Cluster, flow: str, n: int = 1, timeout: float = 40) -> list[dict]:
    def done() -> list[dict] | None:
        runs = [r for r in runs_of(cluster, flow) if r["state"]["name"] == "Completed"]
        return runs if len(runs) >= n else None

    return wait_until(done, timeout=timeout)


def test_upstream_completed_runs_downstream_with_its_result(cluster: Cluster) -> None:
    """Seed 002: "upstream Completed → run downstream with parameters from upstream"."""
    cluster.start_server()
    cluster.start_worker()
    cluster.deploy("upstream", "auto")
    cluster.deploy("downstream", "auto")
    apply(cluster, """
        automations:
          - name: downstream-after-upstream
            description: run downstream with the upstream's batch
            trigger:
              type: flow-run-state-change
              match: {flow: upstream}
              expect: [Completed]
            actions:
              - type: run-deployment
                deployment: downstream/auto
                parameters:
                  upstream_batch_id: "{{ event.payload.result.batch_id }}"
    """)

    cluster.cli("deployment", "run", "upstream/auto", "--param", "batch_id=b-17", "--watch")

    [down] = completed(cluster, "downstream")
    assert down["parameters"] == {"upstream_batch_id": "b-17"}
    assert down["caused_by"]["automation"] == "downstream-after-upstream"
    shown = cluster.cli("flow-run", "inspect", down["id"]).stdout
    assert "downstream-after-upstream" in shown
    inspected = cluster.cli_json("automation", "inspect", "downstream-after-upstream")
    assert inspected["counters"]["fired"] == 1
    assert inspected["firings"][0]["results"][0]["ok"] is True
    graph = cluster.cli("graph").stdout
    assert "upstream/auto --[on Completed of flow=upstream]--> downstream/auto" in graph


def test_a_then_b_and_c_then_d_chained_only_by_automations(cluster: Cluster) -> None:
    """A → (B, C) → D as four deployments; D runs once per batch, after both B and C."""
    cluster.start_server()
    cluster.start_worker(concurrency=4)
    for flow_fn in ("flow_a", "flow_b", "flow_c", "flow_d"):
        cluster.deploy(flow_fn, "chain")
    apply(cluster, """
        automations:
          - name: fan-out
            trigger: {type: flow-run-state-change, match: {deployment: A/chain}, expect: [Completed]}
            actions:
              - type: run-deployment
                deployment: B/chain
                parameters: {batch_id: "{{ event.payload.result }}"}
              - type: run-deployment
                deployment: C/chain
                parameters: {batch_id: "{{ event.payload.result }}"}
          - name: join
            trigger:
              type: compound
              require: all
              correlate: "{{ event.payload.parameters.batch_id }}"
              within: 5m
              triggers:
                - {type: flow-run-state-change, match: {deployment: B/chain}, expect: [Completed]}
                - {type: flow-run-state-change, match: {deployment: C/chain}, expect: [Completed]}
            actions:
              - type: run-deployment
                deployment: D/chain
                parameters:
                  b: "{{ events['B/chain'].payload.result }}"
                  c: "{{ events['C/chain'].payload.result }}"
    """)
    for batch in ("b-1", "b-2"):
        cluster.cli("deployment", "run", "A/chain", "--param", f"batch_id={batch}")

    runs = completed(cluster, "D", n=2, timeout=60)
    assert sorted(r["parameters"]["b"] for r in runs) == ["B(b-1)", "B(b-2)"]
    assert sorted(r["parameters"]["c"] for r in runs) == ["C(b-1)", "C(b-2)"]
    records = cluster.records()
    for batch in ("b-1", "b-2"):
        d_at = next(float(r[2]) for r in records if r[0] == "D" and batch in r[3])
        for upstream in ("B", "C"):
            assert float(next(r[2] for r in records if r[0] == upstream and r[3] == batch)) < d_at
    assert len(cluster.records("D")) == 2  # once per batch, never again


def test_threshold_circuit_breaker_pauses_the_deployment(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    cluster.deploy("failing", "cb")
    apply(cluster, """
        automations:
          - name: circuit-breaker
            trigger:
              type: flow-run-state-change
              match: {deployment: failing/cb}
              expect: [Failed]
              threshold: 3
              within: 10m
            actions:
              - type: pause-deployment
    """)
    for _ in range(2):
        cluster.cli("deployment", "run", "failing/cb", "--watch", check=False)
    assert cluster.cli_json("deployment", "inspect", "failing/cb")["paused"] is False
    cluster.cli("deployment", "run", "failing/cb", "--watch", check=False)

    wait_until(lambda: cluster.cli_json("deployment", "inspect", "failing/cb")["paused"], timeout=20)


def test_proactive_not_completed_in_time(cluster: Cluster) -> None:
    """"downstream not Completed within 2 s after upstream Completed" fires once, from a timer."""
    cluster.start_server()
    cluster.start_worker()
    cluster.deploy("upstream", "auto")
    cluster.deploy("trivial", "alert")
    apply(cluster, """
        automations:
          - name: downstream-late
            trigger:
              type: flow-run-state-change
              posture: proactive
              after: [Completed]
              after_match: {flow: upstream}
              match: {flow: downstream}
              expect: [Completed]
              within: 2s
            actions:
              - type: run-deployment
                deployment: trivial/alert
                parameters: {x: 99}
    """)
    cluster.cli("deployment", "run", "upstream/auto", "--watch")

    [alert] = completed(cluster, "trivial", timeout=30)
    assert alert["parameters"] == {"x": 99}
    inspected = cluster.cli_json("automation", "inspect", "downstream-late")
    assert inspected["counters"]["fired"] == 1


def test_custom_event_triggers_a_deployment(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    cluster.deploy("downstream", "auto")
    apply(cluster, """
        automations:
          - name: on-batch-ready
            trigger:
              type: event
              expect: [batch.ready]
              match: {id: "batch/*"}
            actions:
              - type: run-deployment
                deployment: downstream/auto
                parameters: {upstream_batch_id: "{{ event.payload.batch_id }}"}
    """)
    cluster.cli("events", "emit", "batch.ready", "--resource", '{"id": "other/1"}', "--payload", '{"batch_id": "no"}')
    cluster.cli("events", "emit", "batch.ready", "--resource", '{"id": "batch/42"}', "--payload", '{"batch_id": "x-42"}')

    [run] = completed(cluster, "downstream")
    assert run["parameters"] == {"upstream_batch_id": "x-42"}


def test_server_restart_in_the_middle_of_a_join_fires_once(cluster: Cluster) -> None:
    server = cluster.start_server()
    cluster.start_worker()
    for flow_fn in ("flow_b", "flow_c", "flow_d"):
        cluster.deploy(flow_fn, "rs")
    apply(cluster, """
        automations:
          - name: join
            trigger:
              type: compound
              correlate: "{{ event.payload.parameters.batch_id }}"
              within: 10m
              triggers:
                - {type: flow-run-state-change, match: {deployment: B/rs}, expect: [Completed]}
                - {type: flow-run-state-change, match: {deployment: C/rs}, expect: [Completed]}
            actions:
              - type: run-deployment
                deployment: D/rs
                parameters: {b: "{{ events['B/rs'].payload.result }}", c: "{{ events['C/rs'].payload.result }}"}
    """)
    cluster.cli("deployment", "run", "B/rs", "--param", "batch_id=r-1", "--watch")
    wait_until(lambda: cluster.cli_json("automation", "inspect", "join")["pending"], timeout=20)

    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    cluster.start_server()
    pending = cluster.cli_json("automation", "inspect", "join")["pending"]
    assert len(pending) == 1 and pending[0]["correlation"] == "r-1"
    cluster.cli("deployment", "run", "C/rs", "--param", "batch_id=r-1", "--watch")

    [d] = completed(cluster, "D")
    assert d["parameters"] == {"b": "B(r-1)", "c": "C(r-1)"}
    cluster.cli("deployment", "run", "C/rs", "--param", "batch_id=r-1", "--watch")  # a late duplicate
    time.sleep(1.5)  # the rule engine has had the late event for far longer than a firing takes
    assert len(runs_of(cluster, "D")) == 1


def test_the_same_event_delivered_three_times_launches_one_run(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    cluster.deploy("downstream", "auto")
    apply(cluster, """
        automations:
          - name: on-ready
            trigger: {type: event, expect: [batch.ready]}
            actions:
              - type: run-deployment
                deployment: downstream/auto
                parameters: {upstream_batch_id: "{{ event.payload.batch_id }}"}
    """)
    event = {"id": "6f0c4a36-8f43-4c8e-bd6c-0d8c2a9b1e01", "event": "batch.ready",
             "occurred": "2026-11-23T10:00:00+00:00", "resource": {"id": "batch/1"},
             "payload": {"batch_id": "dup"}}
    code = f"""
import asyncio, json
from engine.broker import from_url
from engine.broker.topology import Names
async def main():
    async with from_url({cluster.env['FLOWRELAY_BROKER__URL']!r}) as broker:
        for _ in range(3):
            await broker.publish(Names().events, "batch.ready", json.dumps({event!r}).encode(),
                                 message_id="dup")
asyncio.run(main())
"""
    proc = cluster.python(code)
    assert proc.returncode == 0, proc.stderr

    completed(cluster, "downstream")
    wait_until(lambda: cluster.cli_json("automation", "inspect", "on-ready")["counters"]["matched"] >= 1, timeout=10)
    assert len(runs_of(cluster, "downstream")) == 1
    assert len(cluster.records("downstream")) == 1


def test_bad_rule_file_is_refused_whole_and_malformed_events_are_dead_lettered(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.deploy("downstream", "auto")
    bad = cluster.workdir / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        automations:
          - name: good
            trigger: {type: event, expect: [x.y]}
            actions: [{type: run-deployment, deployment: downstream/auto}]
          - name: bad
            trigger: {type: flow-run-state-change, expect: [Complted]}
            actions: [{type: run-deployment, deployment: downsteam/auto}]
    """))
    proc = cluster.cli("automation", "apply", str(bad), check=False)
    assert proc.returncode == 1
    assert f"{bad}:7:" in proc.stderr and "did you mean 'Completed'" in proc.stderr
    assert "did you mean 'downstream/auto'" in proc.stderr
    assert cluster.cli_json("automation", "ls") == []
    validate = cluster.cli("automation", "validate", str(bad), check=False)
    assert validate.returncode == 1

    apply(cluster, """
        automations:
          - name: any-x
            trigger: {type: event, expect: [x.*]}
            actions: [{type: emit-event, event: seen.x}]
    """)
    code = f"""
import asyncio
from engine.broker import from_url
from engine.broker.topology import Names
async def main():
    async with from_url({cluster.env['FLOWRELAY_BROKER__URL']!r}) as broker:
        await broker.publish(Names().events, "x.bad", b"this is not json")
asyncio.run(main())
"""
    assert cluster.python(code).returncode == 0
    cluster.cli("events", "emit", "x.ok")
    wait_until(lambda: cluster.cli_json("automation", "inspect", "any-x")["counters"]["fired"] >= 1, timeout=20)
    assert "event dead-lettered" in cluster.log_of("server-0")
    assert json.loads(cluster.cli("automation", "ls", "--json").stdout)[0]["name"] == "any-x"
