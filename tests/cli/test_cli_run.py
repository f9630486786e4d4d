"""`flowrelay run`: run a flow here, print states and logs, exit 1 when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FLOWS = """
import asyncio

from engine import flow, task, get_run_logger


@task
def double(x: int) -> int:
    get_run_logger().info("doubling %s", x)
    return 2 * x


@flow
def hello(name: str = "world", n: int = 2):
    get_run_logger().info("hello %s", name)
    print("a print from the flow")
    return {"name": name, "doubled": double(n)}


@flow
def echo(n: int, xs: list[int], s: str, opts: dict = {}):
    return {"n": n, "xs": xs, "s": s, "opts": opts}


@flow
def broken():
    raise ValueError("the input was bad")


@flow
async def later(n: int = 1) -> int:
    await asyncio.sleep(0)
    return n * 10
"""


@pytest.fixture
def flows(write: Any) -> Path:
    return write("flows.py", FLOWS)


def test_run_prints_states_logs_and_result(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:hello", "--param", "name=Ada", "-p", "n=5")

    assert result.code == 0, result.err
    out = result.out
    assert "of flow hello" in out
    for state in ("Pending", "Running", "Completed"):
        assert state in out
    assert (
        out.index("Pending")
        < out.index("Running")
        < out.index("hello Ada")
        < out.index("Finished in state Completed")
    )
    assert "doubling 5" in out
    assert 'Result: {"name": "Ada", "doubled": 10}' in out


def test_run_json(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:hello", "--param", "n=3", "--json")

    assert result.code == 0, result.err
    data = result.json()  # the flow's print() went to stderr, not into the JSON
    assert set(data) == {"id", "name", "flow_name", "state", "message", "parameters", "result"}
    assert data["flow_name"] == "hello"
    assert data["state"] == "Completed"
    assert data["parameters"] == {"name": "world", "n": 3}
    assert data["result"] == {"name": "world", "doubled": 6}
    assert "a print from the flow" in result.err


def test_param_values_are_json_when_they_parse(cli: Any, flows: Path) -> None:
    result = cli(
        "run",
        "flows.py:echo",
        "--params-json",
        '{"n": 1, "opts": {"k": null}}',
        "--param",
        "n=3",
        "--param",
        "xs=[1,2]",
        "--param",
        "s=abc",
        "--execute",
        "--json",
    )

    assert result.code == 0, result.err
    assert result.json()["result"] == {"n": 3, "xs": [1, 2], "s": "abc", "opts": {"k": None}}


def test_failed_run_exits_1(cli: Any, flows: Path) -> None:
    human = cli("run", "flows.py:broken")
    as_json = cli("run", "flows.py:broken", "--json")

    assert human.code == 1
    assert "Finished in state Failed" in human.out
    assert "ValueError: the input was bad" in human.out
    assert as_json.code == 1
    data = as_json.json()
    assert data["state"] == "Failed"
    assert "the input was bad" in data["message"]
    assert data["result"] is None


def test_invalid_parameters_fail_the_run(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:hello", "--param", "n=lots", "--json")

    assert result.code == 1
    data = result.json()
    assert data["state"] == "Failed"
    assert "n" in data["message"] and "lots" in data["message"]


def test_async_flow(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:later", "-p", "n=4", "--json")

    assert result.code == 0, result.err
    assert result.json()["result"] == 40


def test_not_a_flow_is_exit_2(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:double")

    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "Error: flows.py:double: a task, not a flow (tasks run inside flows: call it from a @flow)\n"
    )


def test_unknown_flow_name_suggests(cli: Any, flows: Path) -> None:
    result = cli("run", "flows.py:helo")

    assert result.code == 2
    assert (
        result.err
        == "Error: flows.py:helo: flows.py has no attribute 'helo' (did you mean 'hello'?)\n"
    )


def test_console_script_run_json(flows: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FLOWRELAY_HOME": str(tmp_path / "home")}
    flowrelay = Path(sys.executable).parent / "flowrelay"

    proc = subprocess.run(
        [str(flowrelay), "run", "flows.py:hello", "--param", "name=Bo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"name": "Bo", "doubled": 4}
