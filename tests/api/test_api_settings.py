"""The ``api:`` settings: defaults, the environment (FLOWRELAY_API__...), errors naming the key,
tokens masked in `flowrelay config show`, and the server failing clearly on a port in use."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.server.app import Server
from engine.settings import Settings, load_settings


def test_defaults() -> None:
    api = load_settings().api
    assert (api.enabled, api.host, api.port) == (True, "127.0.0.1", 4200)
    assert api.tokens.read == api.tokens.write == [] and api.cors_origins == []
    assert api.max_event_bytes > 0 and api.max_batch > 0


def test_repo_config_yaml_has_the_section() -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config.yaml"
    api = load_settings(repo_config).api
    assert api.port == 4200 and api.enabled and not api.tokens.any


def test_environment_overrides_and_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_API__PORT", "8088")
    monkeypatch.setenv("FLOWRELAY_API__TOKENS__WRITE", '["s3cret-w"]')
    monkeypatch.setenv("FLOWRELAY_API__TOKENS__READ", '["s3cret-r1", "s3cret-r2"]')
    settings = load_settings()
    assert settings.api.port == 8088 and settings.api.tokens.write == ["s3cret-w"]
    shown = settings.masked()["api"]
    assert shown["tokens"] == {"read": ["****", "****"], "write": ["****"]}
    assert "s3cret" not in json.dumps(settings.masked())
    monkeypatch.delenv("FLOWRELAY_API__TOKENS__WRITE")
    monkeypatch.delenv("FLOWRELAY_API__TOKENS__READ")
    assert Settings().masked()["api"]["tokens"] == {"read": [], "write": []}  # none reads as none


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("FLOWRELAY_API__PORT", "70000", ["FLOWRELAY_API__PORT", "api.port"]),
    ("FLOWRELAY_API__PROT", "1", ["FLOWRELAY_API__PROT"]),
    ("FLOWRELAY_API__TOKENS__READ", '[""]', ["api.tokens.read", "empty"]),
])
def test_bad_values_name_the_key(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: list[str]) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    for word in words:
        assert word in str(refused.value)


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("api:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"api\.prot: unknown key \(did you mean 'port'\?\)"):
        load_settings(config)


async def test_a_port_in_use_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        monkeypatch.setenv("FLOWRELAY_API__PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("FLOWRELAY_BROKER__URL", "memory://port-in-use")
        server = Server(load_settings(), serve_api=True)
        with pytest.raises(ConfigError) as refused:
            await server.start()  # refused before anything started: nothing to stop
        assert "api.port" in str(refused.value) and str(taken.getsockname()[1]) in str(refused.value)
        with pytest.raises(RuntimeError, match="not started"):
            server.service.engine  # noqa: B018 - the database was never opened
    finally:
        taken.close()
