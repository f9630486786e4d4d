"""Logging: JSON lines or console, bound run ids on every line, passwords masked, idempotent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from engine.logging import configure_logging, get_logger
from engine.settings import load_settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(f"FLOWRELAY_LOGGING__{key.upper()}", value)
    configure_logging(load_settings())


def json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_bound_run_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, format="json")
    structlog.contextvars.bind_contextvars(flow_run_id="run-1", task_run_id="task-9")

    get_logger("engine.test").info("task started", attempt=2)
    logging.getLogger("some.library").warning("stdlib says %s", "hi")

    first, second = json_lines(capsys.readouterr().err)
    assert first["event"] == "task started"
    assert first["flow_run_id"] == "run-1" and first["task_run_id"] == "task-9"
    assert (first["level"], first["logger"], first["attempt"]) == ("info", "engine.test", 2)
    assert "timestamp" in first
    # stdlib records are formatted the same way, with the same context
    assert second["event"] == "stdlib says hi"
    assert (second["level"], second["logger"], second["flow_run_id"]) == (
        "warning",
        "some.library",
        "run-1",
    )


def test_passwords_are_masked_in_every_string(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, format="json")

    get_logger("x").info(
        "connecting to amqp://flow:hunter2@rabbit/",
        url="postgresql://a:hunter2@db/x",
        password="hunter2",
        token=12345,
    )
    logging.getLogger("aio_pika").error("lost amqp://flow:hunter2@rabbit/")
    try:
        raise RuntimeError("cannot reach amqp://flow:hunter2@rabbit/")
    except RuntimeError:
        get_logger("x").exception("failed")

    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "12345" not in err
    lines = json_lines(err)
    assert lines[0]["event"] == "connecting to amqp://flow:****@rabbit/"
    assert lines[0]["url"] == "postgresql://a:****@db/x"
    assert lines[0]["password"] == "****"
    assert lines[1]["event"] == "lost amqp://flow:****@rabbit/"
    assert "amqp://flow:****@rabbit/" in lines[2]["exception"]


def test_level_comes_from_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, format="json", level="warning")

    get_logger("x").info("quiet")
    get_logger("x").warning("loud")
    logging.getLogger("lib").info("quiet too")

    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["loud"]


def test_console_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, format="console")
    structlog.contextvars.bind_contextvars(flow_run_id="run-1")

    get_logger("x").info("hello amqp://u:secretpw@h/")

    err = capsys.readouterr().err
    assert "hello amqp://u:****@h/" in err
    assert "flow_run_id=run-1" in err
    assert "secretpw" not in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_auto_format_is_json_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch)  # format: auto; pytest's captured stderr is not a TTY

    get_logger("x").info("plain")

    assert json_lines(capsys.readouterr().err)[0]["event"] == "plain"


def test_configure_twice_does_not_duplicate_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, format="json")
    configure(monkeypatch, format="json")
    configure_logging(load_settings())

    get_logger("x").info("once")
    logging.getLogger("lib").warning("once too")

    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["once", "once too"]
