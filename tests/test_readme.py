"""The README stays true: every python example runs and prints what its comments say, and every
`flowrelay` command line in it runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
CONSOLE_BLOCKS = re.findall(r"```console\n(.*?)```", README, re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
    env["FLOWRELAY_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(ROOT)
    env["FLOWRELAY_LOGGING__FORMAT"] = "json"
    return env


def _expected_lines(code: str) -> list[str]:
    """`print(...)   # prints 14 (why)` → "14": what the example promises to print."""
    out = []
    for line in code.splitlines():
        m = re.match(r"\s*print\(.*\)\s+# prints (.+?)(?: \(.*\))?$", line)
        if m:
            out.append(m.group(1).strip())
    return out


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index: int, tmp_path: Path) -> None:
    code = PYTHON_BLOCKS[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env=_env(tmp_path), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout
    expected_lines = _expected_lines(code)
    assert expected_lines, "every README python example says what it prints"
    for expected in expected_lines:
        assert expected in printed, (expected, printed)


def _commands() -> list[str]:
    cmds = []
    for block in CONSOLE_BLOCKS:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if "flowrelay " in line and not line.startswith("make"):
                cmds.append(line)
    return cmds


def test_readme_has_commands() -> None:
    assert len(_commands()) >= 5


def test_quick_start_has_exactly_two_setup_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```console\n(.*?)```", quick, re.S).group(1)
    assert [line.split()[0:2] for line in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


@pytest.mark.timeout(360)  # dozens of CLI processes, each paying its interpreter start
def test_readme_commands_run(tmp_path: Path) -> None:
    env = _env(tmp_path)
    flowrelay = str(Path(sys.executable).with_name("flowrelay"))
    run_id = None
    for line in _commands():
        parts = shlex.split(line)
        assignments = {}
        while parts and "=" in parts[0] and not parts[0].startswith("-"):
            key, value = parts.pop(0).split("=", 1)
            assignments[key] = value
        assert parts[0] == "flowrelay", line
        if "ID" in parts:
            assert run_id, "a run must exist before inspect/logs"
            parts = [run_id if p == "ID" else p for p in parts]
        if assignments.get("FLOWRELAY_DATABASE__URL", "").startswith("postgresql"):
            assignments["FLOWRELAY_DATABASE__URL"] = env.get("FLOWRELAY_TEST_POSTGRES_URL", assignments["FLOWRELAY_DATABASE__URL"])
        proc = subprocess.run(
            [flowrelay, *parts[1:]], capture_output=True, text=True, timeout=120,
            env={**env, **assignments}, cwd=ROOT,
        )
        assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
        if parts[1] == "run":
            listing = subprocess.run(
                [flowrelay, "flow-run", "ls", "--json"], capture_output=True, text=True,
                env=env, cwd=ROOT, timeout=60,
            )
            import json

            run_id = json.loads(listing.stdout)[0]["id"]
