"""Configuration: typed settings from defaults, a YAML file and ``FLOWRELAY_*`` variables.

Sources, later wins::

    defaults  <  YAML file  <  environment variables

The YAML file is ``$FLOWRELAY_CONFIG`` when set, else ``./config.yaml`` when it exists, else none.
Every key can be overridden by ``FLOWRELAY_<SECTION>__<KEY>``, e.g. ``FLOWRELAY_BROKER__URL``;
``FLOWRELAY_HOME`` sets ``home``. Unknown keys are errors, and every error is a `ConfigError`
naming the file (or variable), the key path and the fix::

    config.yaml: broker.prefech: unknown key (did you mean 'prefetch'?)

    from engine.settings import get_settings
    get_settings().broker.url
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from engine.errors import ConfigError

ENV_PREFIX = "FLOWRELAY_"
ENV_DELIMITER = "__"
CONFIG_ENV_VAR = "FLOWRELAY_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"

MASK = "****"
_SECRET_KEY_PARTS = ("password", "token", "secret")
# scheme://user:PASSWORD@ — the password runs to the last "@" before whitespace, so a password
# holding an unescaped "@" is masked whole (masking too much is the safe failure).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/?#@]*:)(?P<pw>[^\s]*)(?=@)"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseSettings(_Section):
    #: SQLAlchemy async URL; empty means SQLite in `home` (filled in by `Settings`).
    url: str = ""
    busy_timeout_ms: int = Field(5000, ge=0)
    #: A write that loses a deadlock or serialization failure (PostgreSQL, several servers) is
    #: run again in a fresh transaction, up to this many times, after a random pause of up to
    #: `conflict_backoff_ms` doubled at each retry (at most 1 s).
    conflict_retries: int = Field(5, ge=0)
    conflict_backoff_ms: float = Field(20, ge=0)
    #: A database that cannot be reached (connections refused or lost) is waited out this long:
    #: the server's writes wait, in order, and are run again once it is back; past it they fail.
    unavailable_timeout_seconds: float = Field(300, gt=0)


class BrokerSettings(_Section):
    url: str = "memory://"
    #: Prefix of every exchange and queue name: one per environment on a shared broker.
    prefix: str = Field("flowrelay", pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
    prefetch: int = Field(16, ge=1)
    rpc_timeout_seconds: float = Field(10, gt=0)
    publish_timeout_seconds: float = Field(10, gt=0)
    delivery_limit: int = Field(5, ge=1)
    heartbeat_seconds: int = Field(30, ge=0)


class ResultsSettings(_Section):
    max_bytes: int = Field(1_000_000, ge=0)


class ParametersSettings(_Section):
    #: The largest parameters a flow run may be created with (bytes of JSON): they travel with
    #: the run's events and dispatch messages, so data belongs elsewhere, passed by reference.
    max_bytes: int = Field(1_000_000, ge=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: ``auto``: console renderer on a terminal, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return value.upper() if info.field_name == "level" else value.lower()
        return value


class RuntimeSettings(_Section):
    task_threads: int = Field(16, ge=1)
    wait_timeout_seconds: float = Field(3600, gt=0)
    #: How long a finished flow run keeps reporting its final state, and a worker its claim,
    #: while the engine is unreachable (broker restarting) or its database down.
    report_timeout_seconds: float = Field(300, gt=0)
    #: While a flow run is running, the log lines it wrote are sent to the engine this often
    #: (the web UI shows them live); the rest go with the final state.
    log_flush_seconds: float = Field(1.0, gt=0)


class ServerSettings(_Section):
    heartbeat_timeout_seconds: float = Field(30, gt=0)
    #: A schedule's run still not started this long after its time goes Late (and still runs).
    late_after_seconds: float = Field(15, ge=0)
    #: Runs each schedule keeps created ahead (shown as Scheduled with their time).
    scheduled_runs_ahead: int = Field(3, ge=1, le=100)
    #: A due run's database work is done this long before its time; its work message is still
    #: published at its time (a cron minute of 10,000 runs costs only the publishes). 0: off.
    dispatch_ahead_seconds: float = Field(5, ge=0, le=60)
    #: Several servers on one PostgreSQL database: each renews its lease on its share of the
    #: work (dispatch timers, outbox, schedules) every third of this; a server silent for this
    #: long is dead and its share is taken over (`engine.server.leases`).
    lease_seconds: float = Field(10, ge=1, le=600)


class WorkerSettings(_Section):
    pool: str = "default"
    concurrency: int = Field(4, ge=1)
    heartbeat_interval_seconds: float = Field(5, gt=0)


class CodeSettings(_Section):
    """Code that travels with deployments (`engine.code`)."""

    #: A packed project larger than this is refused at deploy time (compressed size, MB).
    max_bundle_mb: float = Field(50, gt=0, le=1024)
    #: Where the server keeps bundles: empty = in the database; else a directory (shared by
    #: every server, such as a mounted volume).
    bundle_dir: str = ""
    #: Where a worker caches fetched bundles (verified by hash on first use); empty =
    #: ``<home>/code``.
    cache_dir: str = ""
    #: Bytes per message when a worker fetches a bundle from the server.
    fetch_chunk_kb: int = Field(512, ge=16, le=16384)


class AutomationsSettings(_Section):
    #: Rule files, or folders of *.yaml files, loaded by the server at start (relative paths are
    #: relative to the working directory).
    paths: list[str] = Field(default_factory=list)
    #: Run the rule engine inside `flowrelay server` (and the embedded mode).
    enabled: bool = True
    #: Events the rule engine takes from its queue before acknowledging them.
    prefetch: int = Field(default=256, ge=1)
    #: Hosts `call-webhook` actions may reach (exact names, or `*.example.com`). Empty: none.
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    #: The longest an action may take (run-deployment, webhook ...), in seconds.
    action_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Rule partitions: the automations are split by name into this many, each with its own
    #: queue, evaluated by one server at a time and spread over the servers (several servers on
    #: PostgreSQL; SQLite runs one). 1: one server evaluates every rule, the others stand by.
    #: Each partition receives its own copy of an event its automations can match. Every
    #: server of a database must use the same number.
    partitions: int = Field(default=1, ge=1, le=16)


class ApiTokens(_Section):
    #: Bearer tokens that may read (GET endpoints, /metrics, the event stream).
    read: list[str] = Field(default_factory=list)
    #: Bearer tokens that may read and write (run, pause, cancel, POST /api/events).
    write: list[str] = Field(default_factory=list)

    @field_validator("read", "write")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not token.strip() for token in value):
            raise ValueError("a token cannot be empty or blank")
        return value

    @property
    def any(self) -> bool:
        return bool(self.read or self.write)


class ApiSettings(_Section):
    """The HTTP API, web UI and /metrics served by `flowrelay server` (`engine.api`)."""

    #: Serve the API from `flowrelay server` and `flowrelay dev` (the embedded mode of scripts
    #: and the demo never does).
    enabled: bool = True
    #: Address to bind. Without tokens only a loopback address is allowed.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (logged at start).
    port: int = Field(4200, ge=0, le=65535)
    tokens: ApiTokens = Field(default_factory=ApiTokens)
    #: Origins allowed by CORS (e.g. ``https://grafana.example.com``); empty: CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    #: The largest event POST /api/events accepts (bytes of JSON, per event).
    max_event_bytes: int = Field(64_000, ge=256)
    #: The most events one POST /api/events may carry.
    max_batch: int = Field(100, ge=1, le=10_000)
    #: Seconds between keep-alive comments on GET /api/stream.
    stream_keepalive_seconds: float = Field(15, gt=0)
    #: Events buffered per stream client; a client that falls this far behind is dropped.
    stream_buffer: int = Field(1000, ge=1)


class Settings(BaseSettings):
    """The effective configuration. Build it with `load_settings` or `get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_assignment=True,
        case_sensitive=False,
    )

    home: Path = Path("~/.flowrelay")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    parameters: ParametersSettings = Field(default_factory=ParametersSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    automations: AutomationsSettings = Field(default_factory=AutomationsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    code: CodeSettings = Field(default_factory=CodeSettings)
    deployments: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier wins: the environment beats the YAML file, which `load_settings` passes as
        # init arguments. No .env or secrets directory: one file, one place to look.
        return (env_settings, init_settings)

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if not self.database.url:
            self.database.url = f"sqlite+aiosqlite:///{self.home}/flowrelay.db"
        return self

    def masked(self) -> dict[str, Any]:
        """The settings as JSON-ready data, with URL passwords and secret-looking keys masked."""
        masked: dict[str, Any] = mask_secrets(self.model_dump(mode="json"))
        return masked


# --- masking ----------------------------------------------------------------------------------


def mask_url_passwords(text: str) -> str:
    """``amqp://user:pw@host/`` → ``amqp://user:****@host/``, anywhere in `text`."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def mask_secrets(value: Any) -> Any:
    """A copy of `value` (dicts, lists, strings) with secrets masked: URL passwords in any string,
    and the whole value of any key containing password/token/secret."""
    if isinstance(value, Mapping):
        return {
            key: _mask_all(item) if is_secret_key(str(key)) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


def _mask_all(value: Any) -> Any:
    """Every leaf of `value` masked, its shape kept (``{"read": ["****"], "write": []}``, so an
    empty list of tokens still reads as empty)."""
    if isinstance(value, Mapping):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_all(item) for item in value]
    return MASK if value not in (None, "") else value


# --- loading ----------------------------------------------------------------------------------


def config_path() -> Path | None:
    """The YAML file in effect: ``$FLOWRELAY_CONFIG``, else ``./config.yaml`` if present."""
    explicit = os.environ.get(CONFIG_ENV_VAR)
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Build the settings from defaults, the YAML file (`path`, else `config_path()`) and the
    environment. Raise `ConfigError` naming the file, key and fix on any bad input."""
    file = Path(path) if path is not None else config_path()
    data = _read_yaml(file) if file is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file, data)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_settings_error(exc)) from None


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f" (set by {CONFIG_ENV_VAR})" if os.environ.get(CONFIG_ENV_VAR) else ""
        raise ConfigError(f"{file}: config file not found{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if (
            context
            and context_mark is not None
            and mark is not None
            and context_mark.line != mark.line
        ):
            problem += f" ({context} started on line {context_mark.line + 1})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        got = type(data).__name__ if not isinstance(data, dict) else "a non-text key"
        raise ConfigError(
            f"{file}: expected a mapping of sections (database:, broker:, ...) at the top level, "
            f"got {got}"
        )
    return data


def _describe(exc: ValidationError, file: Path | None, data: Mapping[str, Any]) -> str:
    """One line per error (usually one): `source: key.path: what is wrong (fix)`."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        source = _source_of(loc, file, data)
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key{_did_you_mean(loc)}")
            continue
        message = error["msg"]
        if "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {mask_secrets(error['input'])!r})"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def _source_of(loc: tuple[str, ...], file: Path | None, data: Mapping[str, Any]) -> str:
    """Which source supplied the value at `loc`: the env variable if set, else the file."""
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(loc[:depth]).upper()
        if any(k.upper() == name for k in os.environ):
            return name
    if file is not None and _in_mapping(data, loc):
        return str(file)
    return str(file) if file is not None else "settings"


def _in_mapping(data: Any, loc: tuple[str, ...]) -> bool:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return False
    return True


def _did_you_mean(loc: tuple[str, ...]) -> str:
    model: Any = Settings
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    known = list(getattr(model, "model_fields", {}))
    if not known:
        return ""
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})"


def _describe_settings_error(exc: SettingsError) -> str:
    # pydantic-settings: 'error parsing value for field "automations" from source "EnvSettingsSource"'
    match = re.search(r'field "([^"]+)"', str(exc))
    if match:
        prefix = f"{ENV_PREFIX}{match.group(1).upper()}"
        names = sorted(k for k in os.environ if k.upper().startswith(prefix)) or [prefix]
        return (
            f"{', '.join(names)}: value is not valid JSON (lists and mappings are given as JSON, "
            f"e.g. '[\"a.yaml\"]')"
        )
    return f"environment: {exc}"


# --- the process-wide settings ----------------------------------------------------------------

_cache: tuple[tuple[Any, ...], Settings] | None = None


def _fingerprint() -> tuple[Any, ...]:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)))
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    return (cwd, env)


def get_settings() -> Settings:
    """The settings for this process, loaded once and cached.

    The cache is keyed on the ``FLOWRELAY_*`` variables and the working directory, so a changed
    environment (a test's own ``FLOWRELAY_HOME``) is picked up; `reset_settings` forces a reload
    (after editing the YAML file, say).
    """
    global _cache
    key = _fingerprint()
    if _cache is None or _cache[0] != key:
        _cache = (key, load_settings())
    return _cache[1]


def reset_settings() -> None:
    """Forget the cached settings: the next `get_settings` reads the sources again."""
    global _cache
    _cache = None


__all__ = [
    "ApiSettings",
    "ApiTokens",
    "AutomationsSettings",
    "BrokerSettings",
    "DatabaseSettings",
    "LoggingSettings",
    "ParametersSettings",
    "ResultsSettings",
    "RuntimeSettings",
    "ServerSettings",
    "Settings",
    "WorkerSettings",
    "config_path",
    "get_settings",
    "load_settings",
    "mask_secrets",
    "mask_url_passwords",
    "reset_settings",
]
