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
    assert {"rabbitmq", "postgres", "server-1", "server-2", "worker-1", "worker-2"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    given = {"FLOWRELAY_AMQP_PASSWORD": "a-secret", "FLOWRELAY_DB_PASSWORD": "d-secret"}
    for name in ("server-1", "server-2", "worker-1", "worker-2"):
        env = services[name]["environment"]
        assert _interpolate(env["FLOWRELAY_BROKER__URL"], given) == "amqp://flowrelay:a-secret@rabbitmq:5672/"
        assert _interpolate(env["FLOWRELAY_DATABASE__URL"], given).startswith(
            "postgresql+asyncpg://flowrelay:d-secret@postgres:5432/")
    assert (ROOT / "Dockerfile").exists()


def test_compose_keeps_its_data_and_secrets_and_publishes_on_loopback_only() -> None:
    text = (ROOT / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    # Data on named volumes: a `docker compose down` (without -v) keeps the runs and the queues.
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "rabbitmq-data:/var/lib/rabbitmq" in services["rabbitmq"]["volumes"]
    assert set(compose["volumes"]) == {"postgres-data", "rabbitmq-data"}
    # No fixed password: compose refuses to start without the secrets, saying which is missing.
    with pytest.raises(KeyError, match="FLOWRELAY_DB_PASSWORD"):
        _interpolate(services["postgres"]["environment"]["POSTGRES_PASSWORD"], {})
    with pytest.raises(KeyError, match="FLOWRELAY_AMQP_PASSWORD"):
        _interpolate(services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"], {})
    assert "flowrelay:flowrelay@" not in text
    # Every published port is bound to the host's loopback address.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_compose_command_exists(capsys) -> None:  # noqa: ANN001
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert len(commands) == 4  # two servers, two workers
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


@pytest.mark.parametrize(("name", "host_port"), [("server-1", 4200), ("server-2", 4201)])
def test_servers_serve_the_api_on_their_published_port_with_tokens(monkeypatch, name: str, host_port: int) -> None:  # noqa: ANN001
    server = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][name]
    assert f"127.0.0.1:{host_port}:4200" in server["ports"]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    # Without the token variables compose refuses to start, saying which one is missing.
    with pytest.raises(KeyError, match="FLOWRELAY_API_READ_TOKEN"):
        _interpolate(server["environment"]["FLOWRELAY_API__TOKENS__READ"], {})
    # With them, the server's settings load and pass the API's own check (all addresses: tokens).
    given = {"FLOWRELAY_API_READ_TOKEN": "r-secret", "FLOWRELAY_API_WRITE_TOKEN": "w-secret",
             "FLOWRELAY_AMQP_PASSWORD": "a", "FLOWRELAY_DB_PASSWORD": "d"}
    for key in list(os.environ):
        if key.startswith("FLOWRELAY_"):
            monkeypatch.delenv(key)
    for key, value in server["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value), given))
    settings = load_settings()
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 4200)
    assert settings.api.tokens.read == ["r-secret"] and settings.api.tokens.write == ["w-secret"]
    assert settings.database.url.startswith("postgresql+asyncpg://")  # leases: several servers
    check_settings(settings.api)
