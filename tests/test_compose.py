"""compose.yaml parses, and every flowrelay command it runs exists in the CLI (Docker cannot run
here, so this is what can be checked)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from engine.api.server import check_settings
from engine.cli import run_cli
from engine.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_parses_and_has_the_services() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"rabbitmq", "postgres", "server", "worker-1", "worker-2"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    for name in ("server", "worker-1", "worker-2"):
        env = services[name]["environment"]
        assert env["FLOWRELAY_BROKER__URL"].startswith("amqp://")
        assert env["FLOWRELAY_DATABASE__URL"].startswith("postgresql+asyncpg://")
    assert (ROOT / "Dockerfile").exists()


def test_every_compose_command_exists(capsys) -> None:  # noqa: ANN001
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert len(commands) == 3
    for command in commands:
        assert command[0] == "flowrelay"
        # `--help` on the exact command line proves the command and its options parse.
        code = run_cli([*command[1:], "--help"])
        assert code == 0, command
        assert "Usage" in capsys.readouterr().out


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:?message}`` / ``${NAME:-default}`` / ``${NAME}`` substitution."""

    def one(match: re.Match[str]) -> str:
        name, _, rest = match.group(1).partition(":")
        if name in env:
            return env[name]
        if rest.startswith("?"):
            raise KeyError(f"{name} must be set: {rest[1:]}")
        return rest.removeprefix("-")

    return re.sub(r"\$\{([^}]+)\}", one, value)


def test_server_serves_the_api_on_the_published_port_with_tokens(monkeypatch) -> None:  # noqa: ANN001
    server = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["server"]
    assert "127.0.0.1:4200:4200" in server["ports"]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    # Without the token variables compose refuses to start, saying which one is missing.
    with pytest.raises(KeyError, match="FLOWRELAY_API_READ_TOKEN"):
        _interpolate(server["environment"]["FLOWRELAY_API__TOKENS__READ"], {})
    # With them, the server's settings load and pass the API's own check (all addresses: tokens).
    given = {"FLOWRELAY_API_READ_TOKEN": "r-secret", "FLOWRELAY_API_WRITE_TOKEN": "w-secret"}
    for key in list(os.environ):
        if key.startswith("FLOWRELAY_"):
            monkeypatch.delenv(key)
    for key, value in server["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value), given))
    settings = load_settings()
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 4200)
    assert settings.api.tokens.read == ["r-secret"] and settings.api.tokens.write == ["w-secret"]
    check_settings(settings.api)
