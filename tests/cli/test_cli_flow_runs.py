"""`flowrelay flow-run ls / inspect / logs`: tables for people, JSON for scripts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

FLOWS = """
from engine import flow, task, get_run_logger


@task
def add(x: int, y: int) -> int:
    get_run_logger().info("adding %s and %s", x, y)
    return x + y


@flow
def child(n: int) -> int:
    get_run_logger().info("child got %s", n)
    return n * 2


@flow
def parent(n: int = 1) -> int:
    get_run_logger().info("parent starts")
    return child(add(n, 1))


@flow
def other() -> str:
    return "ok"


@flow
def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def runs(cli: Any, write: Any) -> dict[str, dict[str, Any]]:
    """Given a parent run (with a task and a subflow), another run and a failed run."""
    write("flows.py", FLOWS)
    made = {}
    for name, args in (("parent", ["-p", "n=2"]), ("other", []), ("broken", [])):
        result = cli("run", f"flows.py:{name}", "--json", *args)
        assert result.code in (0, 1), result.err
        made[name] = result.json()
    return made


def test_ls_table(cli: Any, runs: dict[str, dict[str, Any]]) -> None:
    result = cli("flow-run", "ls")

    assert result.code == 0, result.err
    for column in ("id", "name", "flow", "state", "start", "duration"):
        assert column in result.out
    for made in runs.values():
        assert made["id"] in result.out
        assert made["name"] in result.out
    assert "Failed" in result.out and "Completed" in result.out


def test_ls_json_and_filters(cli: Any, runs: dict[str, dict[str, Any]]) -> None:
    everything = cli("flow-run", "ls", "--json").json()
    failed = cli("flow-run", "ls", "--state", "failed", "--json").json()
    finished = cli("flow-run", "ls", "-s", "Completed", "-s", "Failed", "--json").json()
    of_other = cli("flow-run", "ls", "--flow", "other", "--json").json()
    limited = cli("flow-run", "ls", "--limit", "1", "--json").json()

    assert {r["flow_name"] for r in everything} == {"parent", "child", "other", "broken"}
    assert [r["id"] for r in failed] == [runs["broken"]["id"]]
    assert len(finished) == 4
    assert [r["id"] for r in of_other] == [runs["other"]["id"]]
    assert len(limited) == 1
    assert {"id", "name", "flow_name", "state", "parameters", "start_time"} <= set(everything[0])


def test_ls_when_there_are_no_runs(cli: Any) -> None:
    assert cli("flow-run", "ls").out.strip() == "No flow runs."
    assert cli("flow-run", "ls", "--json").json() == []


def test_inspect_shows_states_tasks_parent_and_children(
    cli: Any, runs: dict[str, dict[str, Any]]
) -> None:
    parent_id = runs["parent"]["id"]

    data = cli("flow-run", "inspect", parent_id, "--json").json()

    assert data["id"] == parent_id
    assert data["parameters"] == {"n": 2}
    assert data["result"] == 6
    assert [s["name"] for s in data["states"]] == ["Pending", "Running", "Completed"]
    assert data["parent"] is None
    assert len(data["task_runs"]) == 2  # the task and the subflow's task run
    assert {t["state"]["name"] for t in data["task_runs"]} == {"Completed"}
    [child] = data["children"]
    assert child["flow_name"] == "child"

    child_data = cli("flow-run", "inspect", child["id"], "--json").json()
    assert child_data["parent"]["id"] == parent_id
    assert child_data["parent_flow_run_id"] == parent_id
    assert child_data["children"] == []

    human = cli("flow-run", "inspect", parent_id)
    assert human.code == 0, human.err
    for text in (
        runs["parent"]["name"],
        "parent",
        "Completed",
        "States",
        "Task runs",
        "Subflow runs",
        child["name"],
        '{"n": 2}',
    ):
        assert text in human.out


def test_logs(cli: Any, runs: dict[str, dict[str, Any]]) -> None:
    parent_id = runs["parent"]["id"]

    records = cli("flow-run", "logs", parent_id, "--json").json()
    human = cli("flow-run", "logs", parent_id)

    messages = [r["message"] for r in records]
    assert "parent starts" in messages
    assert "adding 2 and 1" in messages
    assert all(r["flow_run_id"] == parent_id for r in records)
    assert human.code == 0
    assert "parent starts" in human.out and "INFO" in human.out


@pytest.mark.parametrize("command", ["inspect", "logs"])
@pytest.mark.parametrize("run_id", ["not-a-uuid", str(uuid.UUID(int=7))])
def test_unknown_or_malformed_id_is_exit_2(cli: Any, command: str, run_id: str) -> None:
    result = cli("flow-run", command, run_id)

    assert (result.code, result.out) == (2, "")
    assert result.error == f"Error: flow run '{run_id}' not found"
