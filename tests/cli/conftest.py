"""Fixtures for the CLI tests: run the CLI in process, and leave no global state behind."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> str:
        """The ``Error: ...`` lines on stderr (log lines of the engine may come before them)."""
        assert "Traceback" not in self.err
        return "\n".join(line for line in self.err.splitlines() if line.startswith("Error:"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """`cli("flow-run", "ls")` runs the CLI in this process (as `flowrelay flow-run ls` would,
    through `main`'s error handling) and returns its exit code, stdout and stderr."""
    from engine.cli import run_cli

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run_cli(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _restore_process_state(tmp_path: Path) -> Iterator[None]:
    """The CLI configures logging and imports flow files: undo both after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = sys.path[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def write(tmp_path: Path) -> Any:
    """`write("flows.py", source)` creates a file under the test's directory (the cwd)."""
    import textwrap

    def _write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
        return path

    return _write
