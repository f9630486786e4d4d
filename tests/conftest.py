"""Shared fixtures.

Services: RabbitMQ tests carry `@pytest.mark.rabbitmq`, PostgreSQL tests `@pytest.mark.postgres`.
Locally they skip when the service is missing; with CI set they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import structlog

CI = bool(os.environ.get("CI"))
AMQP_URL = os.environ.get("FLOWRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "FLOWRELAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), 2):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, port: int) -> None:
    if _reachable(url, port):
        return
    message = f"{name} is not reachable at {url}"
    if CI:
        pytest.fail(f"{message} (CI is set: service tests fail instead of skipping)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own FLOWRELAY_HOME (and so its own embedded SQLite database)."""
    home = tmp_path / "flowrelay-home"
    home.mkdir()
    monkeypatch.setenv("FLOWRELAY_HOME", str(home))
    monkeypatch.delenv("FLOWRELAY_CONFIG", raising=False)
    for key in list(os.environ):
        if key.startswith("FLOWRELAY_") and key not in ("FLOWRELAY_HOME",) and not key.startswith("FLOWRELAY_TEST_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    yield home
    try:
        from engine.runtime import embedded

        embedded.reset()
    except ImportError:
        pass


@pytest.fixture
def amqp_url() -> str:
    require_service("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: a temp-file SQLite database, or a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    with fresh_postgres_database() as url:
        yield url


def amqp_vhost(url: str = AMQP_URL) -> str:
    """The RabbitMQ virtual host of an AMQP URL (`rabbitmqctl -p` form): "/" when none."""
    from urllib.parse import unquote

    path = urlparse(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def postgres_admin(sql: str) -> None:
    """Run one statement on the test PostgreSQL server, outside any test database."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def refuse_connections(dbname: str) -> None:
    """Make database `dbname` refuse new connections and end its sessions (what an operator,
    a failover or a restart does); `allow_connections` undoes it."""
    await postgres_admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    await postgres_admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    )


async def allow_connections(dbname: str) -> None:
    await postgres_admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "flowrelay_test") -> Iterator[str]:
    """Create a uniquely named database on the test PostgreSQL server, yield its SQLAlchemy URL,
    drop it afterwards (with any connections still open)."""
    import asyncio

    dbname = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_admin(f'CREATE DATABASE "{dbname}"'))
    try:
        yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{dbname}"
    finally:
        asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database (its URL), dropped after the test."""
    with fresh_postgres_database() as url:
        yield url


# --- running the CLI in process (tests/cli, tests/deployments) ---------------------------------
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


@pytest.fixture
def restore_process_state(tmp_path: Path) -> Iterator[None]:
    """The CLI configures logging and imports flow files: undo both after the test."""
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
