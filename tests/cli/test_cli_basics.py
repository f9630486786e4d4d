"""The CLI shell: one-line errors with exit code 2, `config show`, parameter parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli.run_cmd import parse_params

SENTINEL = "s3ntinel-Pa55"
FLOWRELAY = Path(sys.executable).parent / "flowrelay"


def test_config_show_masks_secrets_everywhere(
    cli: Any, write: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        "config.yaml",
        f"""
        broker:
          url: amqp://flow:{SENTINEL}@rabbit:5672/
        deployments:
          - name: nightly
            secret_key: {SENTINEL}
    """,
    )
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"postgresql+asyncpg://app:{SENTINEL}@db/x")

    human = cli("config", "show")
    as_json = cli("config", "show", "--json")

    for result in (human, as_json):
        assert result.code == 0, result.err
        assert SENTINEL not in result.out + result.err
    assert "amqp://flow:****@rabbit:5672/" in human.out
    assert "# file: config.yaml" in human.out
    assert "FLOWRELAY_DATABASE__URL" in human.out
    data = as_json.json()
    assert data["broker"]["url"] == "amqp://flow:****@rabbit:5672/"
    assert data["database"]["url"] == "postgresql+asyncpg://app:****@db/x"
    assert data["deployments"][0]["secret_key"] == "****"
    assert data["broker"]["prefetch"] == 16


def test_bad_config_is_one_line_and_exit_2(cli: Any, write: Any) -> None:
    write("config.yaml", "broker:\n  prefech: 3\n")

    result = cli("config", "show")

    assert result.code == 2
    assert result.out == ""
    assert (
        result.err == "Error: config.yaml: broker.prefech: unknown key (did you mean 'prefetch'?)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["config", "shw"],
            "Error: No such command 'shw'. Did you mean 'show'? (see 'flowrelay config --help')",
        ),
        (
            ["run", "--bogus", "x.py:f"],
            "Error: No such option: --bogus (see 'flowrelay run --help')",
        ),
        (["run", "x.py:f", "--param", "foo"], "Error: --param 'foo': expected KEY=VALUE"),
        (
            ["run", "x.py:f", "--params-json", "[1]"],
            "Error: --params-json: expected a JSON object such as '{\"n\": 3}', got list",
        ),
        (["run", "flows.py"], "Error: 'flows.py': expected 'path/file.py:flow' or 'module:flow'"),
        (
            ["flow-run", "ls", "--state", "Complted"],
            "Error: --state 'Complted': not a state (did you mean 'Completed'?)",
        ),
        (["flow-run", "ls", "--limit", "zero"], None),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    cli: Any, args: list[str], message: str | None
) -> None:
    result = cli(*args)

    assert result.code == 2
    assert result.out == ""
    assert len(result.err.splitlines()) == 1
    assert result.err.startswith("Error: ")
    if message is not None:
        assert result.err.rstrip("\n") == message


def test_missing_flow_file(cli: Any, tmp_path: Path) -> None:
    result = cli("run", "nope.py:etl")

    assert (result.code, result.out) == (2, "")
    assert result.err == f"Error: nope.py:etl: no such file 'nope.py' (in {tmp_path})\n"


def test_help_lists_the_commands(cli: Any) -> None:
    result = cli("--help")

    assert result.code == 0
    for command in ("run", "config", "flow-run"):
        assert command in result.out


def test_run_help_documents_execute(cli: Any) -> None:
    result = cli("run", "--help")

    assert result.code == 0
    assert "--execute" in result.out
    assert "worker" in result.out


@pytest.mark.parametrize(
    ("pairs", "params_json", "expected"),
    [
        (["n=3"], None, {"n": 3}),
        (["x=[1,2]", "flag=true", "ratio=0.5"], None, {"x": [1, 2], "flag": True, "ratio": 0.5}),
        (["name=Ada", "empty=", 'quoted="3"'], None, {"name": "Ada", "empty": "", "quoted": "3"}),
        (["expr=a=b"], None, {"expr": "a=b"}),
        (["n=4"], '{"n": 1, "m": {"k": null}}', {"n": 4, "m": {"k": None}}),
        (None, None, {}),
    ],
)
def test_parse_params(
    pairs: list[str] | None, params_json: str | None, expected: dict[str, Any]
) -> None:
    assert parse_params(pairs, params_json) == expected


@pytest.mark.parametrize(
    ("pairs", "params_json"), [(["foo"], None), (["=3"], None), (None, "{bad")]
)
def test_parse_params_rejects(pairs: list[str] | None, params_json: str | None) -> None:
    with pytest.raises(ValueError):
        parse_params(pairs, params_json)


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def oops(:\n", encoding="utf-8")
    env = {**os.environ, "FLOWRELAY_HOME": str(tmp_path / "home")}

    proc = subprocess.run(
        [str(FLOWRELAY), "run", "broken.py:oops"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "Error: broken.py:oops: broken.py:1: syntax error: invalid syntax\n"


def test_console_script_config_show_json(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FLOWRELAY_HOME": str(tmp_path / "home"),
        "FLOWRELAY_BROKER__URL": f"amqp://u:{SENTINEL}@h/",
    }

    proc = subprocess.run(
        [str(FLOWRELAY), "config", "show", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stderr
    assert SENTINEL not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["broker"]["url"] == "amqp://u:****@h/"
