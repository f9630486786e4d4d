"""Distributed execution on the real RabbitMQ: a `flowrelay server` process, `flowrelay worker`
processes, and the CLI and Python API used as a new user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import FLOWRELAY, Cluster, wait_until

pytestmark = pytest.mark.rabbitmq




def test_deploy_run_watch(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("trivial", None, "--param", "x=5")
    listing = cluster.cli_json("deployment", "ls")
    assert any(d["name"].endswith(name) for d in listing)

    proc = cluster.cli("deployment", "run", f"trivial/{name}", "--param", "x=7", "--watch")
    assert "Completed" in proc.stdout
    run = cluster.cli_json("deployment", "run", f"trivial/{name}")
    assert run["state"]["name"] in ("Scheduled", "Pending", "Running", "Completed")
    runs = cluster.cli_json("flow-run", "ls", "--flow", "trivial")
    results = sorted(r["result"] for r in runs if r["result"] is not None)
    assert 7 in results
    assert len(cluster.records("trivial")) >= 1


def test_failed_run_watch_exits_nonzero(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("failing")
    proc = cluster.cli("deployment", "run", f"failing/{name}", "--watch", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Failed" in proc.stdout


def test_invalid_parameters_go_pending_to_failed(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("typed", None, "--param", "n=1")
    proc = cluster.cli("deployment", "run", f"typed/{name}", "--param", "n=oops", "--watch", check=False)
    assert proc.returncode == 1
    [run] = cluster.cli_json("flow-run", "ls", "--flow", "typed")
    detail = cluster.cli_json("flow-run", "inspect", run["id"])
    names = [s["name"] for s in detail["states"]]
    assert "Running" not in names and names[-1] == "Failed"
    assert "valid integer" in detail["states"][-1]["message"]
    assert cluster.records("typed") == []


def test_idempotency_key_returns_the_same_run(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("trivial")
    first = cluster.cli_json("deployment", "run", f"trivial/{name}", "--idempotency-key", "k-1")
    second = cluster.cli_json("deployment", "run", f"trivial/{name}", "--idempotency-key", "k-1")
    assert first["id"] == second["id"]
    wait_until(lambda: len(cluster.records("trivial")) >= 1)
    time.sleep(0.5)
    assert len(cluster.records("trivial")) == 1


def test_future_start(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("trivial")
    started = time.time()
    run = cluster.cli_json("deployment", "run", f"trivial/{name}", "--start-in", "2s")
    assert run["state"]["name"] == "Scheduled"
    time.sleep(1.0)
    assert cluster.records("trivial") == []
    rows = wait_until(lambda: cluster.records("trivial"), timeout=20)
    assert float(rows[0][2]) - started >= 1.9


def test_concurrency_limit_runs_in_order(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker(concurrency=4)
    name = cluster.deploy("sleepy", None, "--concurrency-limit", "1", "--param", "seconds=1.0")
    # Created back to back by one process (three CLI processes in a row, on a loaded machine,
    # could take longer than a run: the third then never waited for a slot)
    made = cluster.python(
        "import json; from engine import create_flow_run; "
        f"print(json.dumps([str(create_flow_run('sleepy/{name}')) for _ in range(3)]))"
    )
    assert made.returncode == 0, made.stderr[-2000:]
    ids = json.loads(made.stdout.strip().splitlines()[-1])
    wait_until(lambda: len(cluster.records("sleepy-end")) == 3, timeout=30)
    rows = cluster.records()
    events = [r[0] for r in rows if r[0].startswith("sleepy")]
    assert events == ["sleepy-start", "sleepy-end"] * 3  # never two at once
    states = {r["id"]: r for r in cluster.cli_json("flow-run", "ls", "--flow", "sleepy")}
    order = sorted(ids, key=lambda i: states[i]["start_time"])
    assert order == ids  # in order of creation
    detail = cluster.cli_json("flow-run", "inspect", ids[2])
    assert "AwaitingConcurrencySlot" in [s["name"] for s in detail["states"]]
    # one claim, one attempt: the worker's states carry it (docs/protocol.md)
    assert detail["attempts"] == 1
    assert [s["details"].get("attempt") for s in detail["states"] if s["name"] != "Scheduled"
            and s["name"] != "AwaitingConcurrencySlot"] == [1, 1, 1]
    human = cluster.cli("flow-run", "inspect", ids[2]).stdout
    assert "attempts" in human and "1 (current state in attempt 1)" in human


def test_flow_of_flows_sequential_parallel_and_parametrised(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker(concurrency=6)
    for fn in ("flow_a", "flow_b", "flow_c", "flow_d"):
        cluster.deploy(fn, "examples")
    cluster.deploy("parent_flow", "nightly")
    cluster.deploy("parent_param", "nightly")

    proc = cluster.cli("deployment", "run", "parent-flow/nightly", "--param", "batch_id=b-17", "--watch")
    assert "Completed" in proc.stdout
    rows = {r[0]: r for r in cluster.records()}
    assert rows["D"][3] == "B(b-17)+C(b-17)"
    a_t, b_t, c_t, d_t = (float(rows[n][2]) for n in "ABCD")
    assert a_t < b_t and a_t < c_t and d_t > max(b_t, c_t)
    assert abs(b_t - c_t) < 0.4  # B and C ran at the same time (each sleeps 0.5 s)
    [parent] = cluster.cli_json("flow-run", "ls", "--flow", "parent-flow")
    assert parent["result"] == "D[B(b-17), C(b-17)]"
    detail = cluster.cli_json("flow-run", "inspect", parent["id"])
    assert len(detail["children"]) == 4
    mirrors = detail["task_runs"]
    assert {m["state"]["details"]["child_flow_run_id"] for m in mirrors} == {c["id"] for c in detail["children"]}

    proc = cluster.cli("deployment", "run", "parent-param/nightly", "--watch")
    [run] = cluster.cli_json("flow-run", "ls", "--flow", "parent-param")
    assert run["result"] == "some-random-piece-of-data"


def test_run_deployment_from_python_with_wait_timeout(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("sleepy", None, "--param", "seconds=3")
    code = f"""
import asyncio
from engine import run_deployment
from engine.errors import WaitTimeout
try:
    run_deployment("sleepy/{name}", timeout=0.5)
except WaitTimeout as exc:
    print("TIMEOUT", exc)
async def main():
    a, b = await asyncio.gather(run_deployment("sleepy/{name}", {{"seconds": 0.2}}),
                                run_deployment("sleepy/{name}", {{"seconds": 0.2}}))
    print("BOTH", a.state.name, b.state.name)
asyncio.run(main())
"""
    proc = cluster.python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TIMEOUT" in proc.stdout and "did not finish within 0.5 s" in proc.stdout
    assert "BOTH Completed Completed" in proc.stdout


def test_worker_sigkill_crashes_and_retries(cluster: Cluster) -> None:
    cluster.start_server()
    victim = cluster.start_worker(concurrency=1, name="victim")
    name = cluster.deploy("crashy")
    run = cluster.cli_json("deployment", "run", f"crashy/{name}")
    wait_until(lambda: cluster.records("crashy"), timeout=30)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    cluster.start_worker(concurrency=1, name="rescuer")

    def final():
        detail = cluster.cli_json("flow-run", "inspect", run["id"])
        return detail if detail["state"]["name"] == "Completed" else None

    detail = wait_until(final, timeout=40)
    names = [s["name"] for s in detail["states"]]
    assert "Crashed" in names and names[-1] == "Completed"
    assert len(cluster.records("crashy")) == 2
    pids = {r[1] for r in cluster.records("crashy")}
    assert len(pids) == 2  # never on the same process twice... and never twice at once


def test_broker_connections_closed_mid_run(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("sleepy", None, "--param", "seconds=2")
    run = cluster.cli_json("deployment", "run", f"sleepy/{name}")
    wait_until(lambda: cluster.records("sleepy-start"), timeout=30)
    subprocess.run(["rabbitmqctl", "close_all_connections", "integration test"], check=True,
                   capture_output=True, timeout=60)

    def completed():
        proc = cluster.cli("flow-run", "inspect", run["id"], "--json", check=False)
        if proc.returncode != 0:
            return None
        detail = json.loads(proc.stdout)
        return detail if detail["state"]["name"] == "Completed" else None

    wait_until(completed, timeout=60, interval=0.5)
    # and new work still flows after the reconnect
    proc = cluster.cli("deployment", "run", f"sleepy/{name}", "--param", "seconds=0.1", "--watch")
    assert "Completed" in proc.stdout
    assert len(cluster.records("sleepy-end")) == 2


def test_events_tail_and_custom_events(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.start_worker()
    name = cluster.deploy("trivial")
    tail = subprocess.Popen(
        [FLOWRELAY, "events", "tail", "--json", "--count", "4", "--timeout", "30"],
        env=cluster.env, cwd=cluster.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)  # the tail's queue is bound
    emitted = cluster.cli_json("events", "emit", "batch.ready", "--resource", '{"id": "batch/17"}',
                               "--payload", '{"rows": 3}')
    cluster.cli("deployment", "run", f"trivial/{name}", "--watch")
    out, err = tail.communicate(timeout=40)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert names[0] == "batch.ready" and events[0]["id"] == emitted["id"]
    assert events[0]["payload"] == {"rows": 3}
    assert any(n.startswith("flow-run.") for n in names[1:])


def test_bad_commands_never_crash_the_server(cluster: Cluster) -> None:
    cluster.start_server()
    code = """
import asyncio, os
from engine.broker import from_url
from engine.broker.rpc import RpcClient
from engine.broker.errors import RpcError
from engine.broker.topology import Names
async def main():
    async with from_url(os.environ["FLOWRELAY_BROKER__URL"]) as broker:
        names = Names()
        await broker.publish("", names.commands, b"\\x00 not json")
        async with RpcClient(broker, names.commands, timeout=10) as rpc:
            for method, params in [("drop_database", {}), ("read_flow_run", {"flow_run_id": 5})]:
                try:
                    await rpc.call(method, params)
                except RpcError as exc:
                    print("ERROR", exc.type, exc.message)
            print("OK", await rpc.call("read_flow_runs", {}))
asyncio.run(main())
"""
    proc = cluster.python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR BadCommand unknown command 'drop_database'" in proc.stdout
    assert "ERROR BadCommand command 'read_flow_run' has bad parameters" in proc.stdout
    assert "OK {'value': []}" in proc.stdout
