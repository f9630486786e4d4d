"""compose.yaml parses, and every flowrelay command it runs exists in the CLI (Docker cannot run
here, so this is what can be checked)."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.cli import run_cli

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
