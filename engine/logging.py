"""Process logging: structlog for our code, the same formatting for stdlib `logging`.

`configure_logging(settings)` picks the renderer (console on a terminal or ``format: console``,
JSON lines otherwise or ``format: json``) and the level, and routes the stdlib root logger
through the same processors, so aio-pika's or SQLAlchemy's records look like ours. Ids bound with
``structlog.contextvars.bind_contextvars(flow_run_id=..., task_run_id=...)`` appear on every line
logged in that context. Passwords in URLs are masked in every string value.

    log = get_logger(__name__)
    log.info("run started", flow_run_id=str(run.id))

Library code logs through `get_logger`; it never prints.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from engine.settings import Settings, get_settings, is_secret_key, mask_url_passwords

_HANDLER_MARK = "_flowrelay_handler"
_QUIET_LIBRARIES = ("alembic", "aiormq", "aio_pika", "sqlalchemy", "aiosqlite", "asyncio")


def mask_secrets_processor(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Mask URL passwords in every string value, and the value of secret-looking keys."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = "****" if is_secret_key(key) and value else mask_url_passwords(value)
        elif is_secret_key(key) and value is not None:
            event_dict[key] = "****"
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever `sys.stderr` is at the time (pytest and CliRunner swap it)."""

    def __init__(self) -> None:
        super().__init__()
        setattr(self, _HANDLER_MARK, True)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:  # StreamHandler.__init__ assigns it
        pass


def _use_console(fmt: str) -> bool:
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    return _stderr_is_tty()


def configure_logging(settings: Settings | None = None) -> None:
    """Configure structlog and the stdlib root logger from `settings.logging`. Idempotent:
    calling it again replaces the previous configuration instead of adding handlers."""
    settings = settings or get_settings()
    level = logging.getLevelNamesMapping()[settings.logging.level]
    console = _use_console(settings.logging.format)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=_stderr_is_tty())
    else:
        final.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(default=str)
    # Masking runs last before rendering so it also covers formatted tracebacks and stdlib records.
    final += [mask_secrets_processor, renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=final,
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries chatty at INFO (alembic announces every plugin) speak up only at DEBUG.
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level <= logging.DEBUG else logging.WARNING
        )


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (use ``__name__``), bound to `initial_values`."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial_values)
    return logger


__all__ = ["configure_logging", "get_logger", "mask_secrets_processor"]
