"""Settings: defaults < YAML file < FLOWRELAY_* variables, and errors that name file, key and fix."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.settings import (
    Settings,
    get_settings,
    load_settings,
    mask_url_passwords,
    reset_settings,
)

SENTINEL = "s3ntinel-Pa55"


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


# --- sources --------------------------------------------------------------------------------


def test_defaults(_isolated_home: Path) -> None:
    settings = load_settings()

    assert settings.home == _isolated_home
    assert settings.database.url == f"sqlite+aiosqlite:///{_isolated_home}/flowrelay.db"
    assert settings.database.busy_timeout_ms == 5000
    assert settings.broker.url == "memory://"
    assert settings.broker.prefetch == 16
    assert settings.broker.delivery_limit == 5
    assert settings.results.max_bytes == 1_000_000
    assert (settings.logging.level, settings.logging.format) == ("INFO", "auto")
    assert settings.runtime.task_threads == 16
    assert settings.worker.pool == "default"
    assert settings.automations.paths == []
    assert settings.deployments == []


def test_home_defaults_to_dot_flowrelay_in_the_user_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FLOWRELAY_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))

    settings = load_settings()

    assert settings.home == tmp_path / "me" / ".flowrelay"
    assert settings.database.url.endswith(f"{tmp_path}/me/.flowrelay/flowrelay.db")


def test_config_yaml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    write_config(
        tmp_path / "config.yaml",
        """
        broker:
          prefetch: 64
        worker:
          pool: gpu
        automations:
          paths: [automations/etl.yaml]
        deployments:
          - name: nightly
            entrypoint: flows.py:etl
    """,
    )

    settings = load_settings()

    assert settings.broker.prefetch == 64
    assert settings.broker.url == "memory://"  # untouched keys keep their defaults
    assert settings.worker.pool == "gpu"
    assert settings.automations.paths == ["automations/etl.yaml"]
    assert settings.deployments == [{"name": "nightly", "entrypoint": "flows.py:etl"}]


def test_flowrelay_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "config.yaml", "broker: {prefetch: 1}\n")
    other = write_config(tmp_path / "elsewhere.yaml", "broker: {prefetch: 2}\n")
    monkeypatch.setenv("FLOWRELAY_CONFIG", str(other))

    assert load_settings().broker.prefetch == 2
    assert load_settings(tmp_path / "config.yaml").broker.prefetch == 1  # explicit path wins


def test_missing_flowrelay_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_CONFIG", "nope.yaml")

    with pytest.raises(
        ConfigError, match=r"^nope.yaml: config file not found \(set by FLOWRELAY_CONFIG\)"
    ):
        load_settings()


def test_env_overrides_nested_keys_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path / "config.yaml",
        """
        broker:
          url: amqp://guest:guest@yaml-host/
          prefetch: 8
        database:
          busy_timeout_ms: 100
    """,
    )
    monkeypatch.setenv("FLOWRELAY_BROKER__URL", "amqp://guest:guest@env-host/")
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", "postgresql+asyncpg://db/flowrelay")
    monkeypatch.setenv("FLOWRELAY_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("FLOWRELAY_AUTOMATIONS__PATHS", '["a.yaml", "b.yaml"]')

    settings = load_settings()

    assert settings.broker.url == "amqp://guest:guest@env-host/"
    assert settings.broker.prefetch == 8  # the rest of the YAML section stays
    assert settings.database.url == "postgresql+asyncpg://db/flowrelay"
    assert settings.database.busy_timeout_ms == 100
    assert settings.logging.level == "DEBUG"
    assert settings.automations.paths == ["a.yaml", "b.yaml"]


def test_database_url_follows_a_home_set_in_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWRELAY_HOME")
    write_config(tmp_path / "config.yaml", f"home: {tmp_path / 'h'}\n")

    assert load_settings().database.url == f"sqlite+aiosqlite:///{tmp_path / 'h'}/flowrelay.db"


# --- errors ---------------------------------------------------------------------------------


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    write_config(
        tmp_path / "config.yaml",
        """
        broker:
          url: memory://
          prefetch: [16
        worker:
          pool: default
    """,
    )

    with pytest.raises(ConfigError) as info:
        load_settings()

    # YAML notices the problem on line 4 and points back at where the bad list began
    assert str(info.value) == (
        "config.yaml:4: not valid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started on line 3)"
    )


def test_bad_value_names_file_key_and_value(tmp_path: Path) -> None:
    write_config(tmp_path / "config.yaml", "broker:\n  prefetch: lots\n")

    with pytest.raises(ConfigError) as info:
        load_settings()

    message = str(info.value)
    assert message.startswith("config.yaml: broker.prefetch: Input should be a valid integer")
    assert message.endswith("(got 'lots')")


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_BROKER__PREFETCH", "many")

    with pytest.raises(
        ConfigError, match=r"^FLOWRELAY_BROKER__PREFETCH: broker.prefetch: .*'many'"
    ):
        load_settings()


def test_env_list_that_is_not_json_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_AUTOMATIONS__PATHS", "a.yaml")

    with pytest.raises(
        ConfigError, match=r"^FLOWRELAY_AUTOMATIONS__PATHS: value is not valid JSON"
    ):
        load_settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "broker:\n  prefech: 3\n",
            "config.yaml: broker.prefech: unknown key (did you mean 'prefetch'?)",
        ),
        (
            "bruker:\n  url: memory://\n",
            "config.yaml: bruker: unknown key (did you mean 'broker'?)",
        ),
        (
            "logging:\n  colour: true\n",
            "config.yaml: logging.colour: unknown key (known keys: level, format)",
        ),
    ],
)
def test_unknown_key_suggests_the_known_one(tmp_path: Path, text: str, expected: str) -> None:
    write_config(tmp_path / "config.yaml", text)

    with pytest.raises(ConfigError) as info:
        load_settings()

    assert str(info.value) == expected


def test_unknown_env_key_is_an_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRELAY_WORKER__CONCURENCY", "3")

    with pytest.raises(
        ConfigError,
        match=r"FLOWRELAY_WORKER__CONCURENCY: worker.concurency: unknown key \(did you mean 'concurrency'\?\)",
    ):
        load_settings()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    write_config(tmp_path / "config.yaml", text)

    with pytest.raises(ConfigError, match=r"^config.yaml: expected a mapping of sections"):
        load_settings()


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    write_config(tmp_path / "config.yaml", "# nothing yet\n")

    assert load_settings().broker.prefetch == 16


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    write_config(tmp_path / "config.yaml", "home: !!python/object/apply:os.getcwd []\n")

    with pytest.raises(ConfigError, match=r"^config.yaml:1: not valid YAML"):
        load_settings()


# --- masking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://user:pw@host/", "amqp://user:****@host/"),
        ("postgresql+asyncpg://app:p%40ss@db:5432/x", "postgresql+asyncpg://app:****@db:5432/x"),
        ("redis://:pw@h", "redis://:****@h"),
        ("connect to amqp://u:a@b@host/ now", "connect to amqp://u:****@host/ now"),
        ("amqp://guest@host/", "amqp://guest@host/"),
        ("memory://", "memory://"),
        ("http://host:8080/path", "http://host:8080/path"),
        ("no url here: a:b@c", "no url here: a:b@c"),
    ],
)
def test_mask_url_passwords(text: str, expected: str) -> None:
    assert mask_url_passwords(text) == expected


def test_masked_hides_url_passwords_and_secret_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path / "config.yaml",
        f"""
        broker:
          url: amqp://flow:{SENTINEL}@rabbit:5672/
        deployments:
          - name: nightly
            api_token: {SENTINEL}
            webhook: {{password: {SENTINEL}, url: "https://hooks:{SENTINEL}@example.com/x"}}
    """,
    )
    monkeypatch.setenv("FLOWRELAY_DATABASE__URL", f"postgresql+asyncpg://app:{SENTINEL}@db/x")

    settings = load_settings()
    masked = settings.masked()

    assert SENTINEL not in json.dumps(masked)
    assert masked["broker"]["url"] == "amqp://flow:****@rabbit:5672/"
    assert masked["database"]["url"] == "postgresql+asyncpg://app:****@db/x"
    assert masked["deployments"][0]["api_token"] == "****"
    assert masked["deployments"][0]["webhook"] == {
        "password": "****",
        "url": "https://hooks:****@example.com/x",
    }
    assert settings.broker.url == f"amqp://flow:{SENTINEL}@rabbit:5672/"  # the real value is intact


# --- the process-wide settings --------------------------------------------------------------


def test_get_settings_is_cached_until_reset(tmp_path: Path) -> None:
    first = get_settings()
    assert get_settings() is first

    write_config(tmp_path / "config.yaml", "broker: {prefetch: 3}\n")
    assert get_settings() is first  # files are read once ...
    reset_settings()
    assert get_settings().broker.prefetch == 3  # ... until reset


def test_get_settings_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().broker.prefetch == 16

    monkeypatch.setenv("FLOWRELAY_BROKER__PREFETCH", "2")

    assert get_settings().broker.prefetch == 2


def test_settings_are_typed_objects() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.broker.prefetch = "lots"  # type: ignore[assignment]
