"""`flowrelay deploy` and `flowrelay deployment ...`, in process, in embedded mode (each test has
its own FLOWRELAY_HOME, so its own SQLite database)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.runtime import embedded

pytestmark = pytest.mark.usefixtures("restore_process_state")

FLOWS = """
    from engine import flow

    @flow(name="etl")
    def etl(day: str, limit: int = 10, dry: bool = False):
        return day

    @flow
    def report():
        return 1
"""


@pytest.fixture
def flows(write: Any) -> None:
    write("flows.py", FLOWS)


def test_deploy_registers_and_redeploy_bumps_the_version(cli: Any, flows: None) -> None:
    first = cli(
        "deploy",
        "flows.py:etl",
        "--name",
        "nightly",
        "--pool",
        "pool-a",
        "--param",
        "limit=5",
        "--param",
        "day=2026-11-22",
        "--tag",
        "prod",
        "--description",
        "nightly load",
        "--concurrency-limit",
        "2",
        "--cron",
        "0 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--json",
    )
    second = cli("deploy", "flows.py:etl", "--name", "nightly", "--pool", "pool-b")

    assert first.code == 0, first.err
    data = first.json()
    assert data["flow_name"] == "etl" and data["name"] == "nightly" and data["version"] == 1
    assert data["parameters"] == {"limit": 5, "day": "2026-11-22"}
    assert data["work_pool"] == "pool-a" and data["tags"] == ["prod"]
    assert data["concurrency_limit"] == 2 and data["description"] == "nightly load"
    assert data["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Paris", "active": True}]
    # the project (the test's folder: flows.py only; its own home is never packed) travels
    assert data["code"]["bundle"].startswith("sha256:") and data["code"]["files"] == 1
    assert data["entrypoint"] == "flows.py:etl"
    assert second.code == 0, second.err
    assert "Deployed etl/nightly version 2 (pool pool-b, flows.py:etl, bundle sha256:" in second.out
    assert "(1 files, 1 KB)" in second.out
    assert "flowrelay deployment run 'etl/nightly'" in second.out


def test_deploy_checks_the_given_parameters_only(cli: Any, flows: None) -> None:
    ok = cli("deploy", "flows.py:etl", "-n", "a", "-p", "default", "--param", "limit=3")
    bad_type = cli("deploy", "flows.py:etl", "-n", "a", "-p", "default", "--param", "limit=many")
    unknown = cli("deploy", "flows.py:etl", "-n", "a", "-p", "default", "--param", "limt=3")

    assert ok.code == 0, ok.err  # `day` is required by the flow, left to each run
    assert bad_type.code == 2
    assert bad_type.err.startswith("Error: invalid parameters for flow 'etl': limit: ")
    assert "(got 'many')" in bad_type.err
    assert unknown.code == 2
    assert "limt: unknown parameter (the flow takes: day, limit, dry)" in unknown.err
    assert len(cli("deployment", "ls", "--json").json()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flows.py:etl", "--pool", "p"], "Error: --name is required"),
        (["flows.py:etl", "--name", "n"], "Error: --pool is required"),
        (["flows.py:etl", "-n", "a/b", "-p", "p"], "Error: --name: 'a/b': a name cannot"),
        (["flows.py:etl", "-n", "a", "-p", "bad pool"], "Error: --pool: String should match"),
        (
            ["flows.py:nope", "-n", "a", "-p", "p"],
            "Error: flows.py:nope: flows.py has no attribute 'nope'",
        ),
        (
            ["flows.py:etl", "-n", "a", "-p", "p", "--cron", "61 * * * *"],
            "Error: --cron/--interval: schedules[0]: cron '61 * * * *' is not",
        ),
        (
            ["flows.py:etl", "-n", "a", "-p", "p", "--interval", "2x"],
            "Error: --cron/--interval: schedules[0]: interval '2x'",
        ),
        (
            ["flows.py:etl", "-n", "a", "-p", "p", "--timezone", "UTC"],
            "Error: --timezone applies to --cron or --interval",
        ),
        (
            ["flows.py:etl", "-n", "a", "-p", "p", "--param", "x"],
            "Error: --param 'x': expected KEY=VALUE",
        ),
        (["--file", "d.yaml", "-n", "a"], "Error: --file cannot be combined with --name"),
        ([], "Error: give an ENTRYPOINT"),
    ],
)
def test_deploy_errors_are_one_line_exit_2(
    cli: Any, flows: None, args: list[str], message: str
) -> None:
    result = cli("deploy", *args)

    assert result.code == 2
    assert result.err.startswith(message), result.err
    assert result.err.count("\n") == 1


def test_deploy_file_registers_all(cli: Any, flows: None, write: Any) -> None:
    write(
        "deployments.yaml",
        """
        deployments:
          - entrypoint: flows.py:etl
            name: nightly
            pool: etl-pool
            parameters: {day: today}
            schedules:
              - interval: 2h
          - entrypoint: flows.py:report
            name: weekly
            concurrency_limit: 1
        """,
    )

    result = cli("deploy", "--file", "deployments.yaml", "--json")

    assert result.code == 0, result.err
    data = result.json()
    assert [(d["flow_name"], d["name"], d["work_pool"]) for d in data] == [
        ("etl", "nightly", "etl-pool"),
        ("report", "weekly", "default"),
    ]
    assert data[0]["schedules"] == [{"interval": 7200.0, "timezone": "UTC", "active": True}]
    listed = cli("deployment", "ls")
    assert (
        "etl/nightly" in listed.out and "every 2h" in listed.out and "report/weekly" in listed.out
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            """
            deployments:
              - entrypoint: flows.py:etl
                name: ok
              - entrypoint: flows.py:etl
                name: bad
                pool: "no spaces"
            """,
            "d.yaml:6: deployments[1].pool: String should match pattern",
        ),
        (
            """
            deployments:
              - entrypoint: flows.py:etl
                name: a
                parameters:
                  limit: lots
            """,
            "d.yaml:4: deployments[0].parameters: invalid parameters for flow 'etl': limit:",
        ),
        (
            """
            deployments:
              - entrypoint: flows.py:etl
                name: a
                schedules:
                  - cron: "0 2 * * *"
                  - cron: "every day"
            """,
            "d.yaml:6: deployments[0].schedules[1]: cron 'every day' is not a valid cron",
        ),
        (
            """
            deployments:
              - entrypoint: flows.py:etl
                name: a
                colour: blue
            """,
            "d.yaml:4: deployments[0].colour: unknown key",
        ),
        (
            """
            deployments:
              - entrypoint: flows.py:etl
                name: a
              - entrypoint: flows.py:etl
                name: a
            """,
            "d.yaml:5: deployments[1].name: deployment 'etl/a' is already defined by deployments[0]",
        ),
        (
            """
            deployments:
              - entrypoint: missing.py:etl
                name: a
            """,
            "d.yaml:2: deployments[0].entrypoint: missing.py:etl: no such file",
        ),
        ("deployments:\n  - name: [unclosed\n", "d.yaml:3: not valid YAML"),
        ("deploys: []\n", "d.yaml: expected a top-level 'deployments:' list"),
    ],
)
def test_bad_deployment_file_registers_nothing(
    cli: Any, flows: None, write: Any, body: str, message: str
) -> None:
    write("d.yaml", body)

    result = cli("deploy", "--file", "d.yaml")

    assert result.code == 2
    assert result.err.startswith(f"Error: {message}"), result.err
    assert cli("deployment", "ls", "--json").json() == []


def test_inspect_pause_resume(cli: Any, flows: None) -> None:
    assert cli("deploy", "flows.py:etl", "-n", "nightly", "-p", "default").code == 0
    # A run for tomorrow: listed, and not dispatched to the in-process worker of embedded mode.
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    run = embedded.call_sync(
        lambda api: api.create_deployment_run("etl/nightly", {"day": "x"}, scheduled_time=tomorrow)
    )

    paused = cli("deployment", "pause", "etl/nightly")
    inspected = cli("deployment", "inspect", "etl/nightly", "--json")
    human = cli("deployment", "inspect", "etl/nightly")
    resumed = cli("deployment", "resume", "etl/nightly", "--json")

    assert paused.code == 0 and "etl/nightly is paused" in paused.out
    data = inspected.json()
    assert data["paused"] is True and data["version"] == 1 and data["full_name"] == "etl/nightly"
    assert [r["id"] for r in data["latest_runs"]] == [str(run.id)]
    assert "Latest runs" in human.out and run.name in human.out and "paused" in human.out
    assert resumed.json()["paused"] is False
    events = embedded.call_sync(lambda api: api.read_events())
    assert [e.event for e in events if e.event.startswith("deployment.")] == [
        "deployment.registered",
        "deployment.paused",
        "deployment.resumed",
    ]


def test_unknown_deployment_is_one_line(cli: Any, flows: None) -> None:
    cli("deploy", "flows.py:etl", "-n", "nightly", "-p", "default")

    missing = cli("deployment", "inspect", "etl/nigthly")
    malformed = cli("deployment", "pause", "nightly")

    assert missing.code == 2
    assert (
        missing.err == "Error: deployment 'etl/nigthly' not found (did you mean 'etl/nightly'?)\n"
    )
    assert malformed.code == 2
    assert "expected FLOW/DEPLOYMENT" in malformed.err


def test_ls_when_empty(cli: Any) -> None:
    result = cli("deployment", "ls")

    assert result.code == 0 and "No deployments" in result.out
