"""The ``flowrelay`` command line.

Each command group lives in its own module and is registered in `build_app`. `main` runs the app
and turns every error we raise on purpose (`FlowrelayError`, `ValueError`) and every usage error
into one line on stderr, ``Error: ...``, with exit code 2: no traceback, ever. A run that ends
Failed exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from engine.errors import FlowrelayError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _root(ctx: typer.Context) -> None:
    """flowrelay: event-driven workflows. Flows and tasks are Python functions; runs, states and
    events flow through RabbitMQ (or in memory, for trying things out)."""
    from engine.logging import configure_logging
    from engine.settings import get_settings

    configure_logging(get_settings())
    from engine.runtime import embedded

    # Embedded mode: CLI commands don't execute queued deployment runs, except those that say
    # so (`run`, `deployment run --watch`, `dev`).
    embedded.run_inline_workers(ctx.invoked_subcommand in ("run", "dev"))


def build_app() -> typer.Typer:
    """The Typer application with every command group registered."""
    from engine.cli import config_cmd, flow_runs, run_cmd

    app = typer.Typer(
        name="flowrelay",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    run_cmd.register(app)
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(flow_runs.app, name="flow-run")
    _register_optional(app)
    return app


def _register_optional(app: typer.Typer) -> None:
    """Command groups of the distributed mode: server, dev, events, deployments, workers."""
    from engine.cli import events_cmd, server_cmd

    server_cmd.register(app)
    from engine.cli import automation_cmd

    automation_cmd.register(app, events_cmd.app)
    app.add_typer(events_cmd.app, name="events")
    try:
        from engine.cli import deploy_cmd
    except ImportError:  # pragma: no cover - during development only
        deploy_cmd = None  # type: ignore[assignment]
    if deploy_cmd is not None:
        from engine.cli import deployment_run, schedule_cmd

        deployment_run.register(deploy_cmd.deployment_app)
        schedule_cmd.register(deploy_cmd.deployment_app)
        deploy_cmd.register(app)
    try:
        from engine.cli import worker_cmd
    except ImportError:  # pragma: no cover
        worker_cmd = None  # type: ignore[assignment]
    if worker_cmd is not None:
        worker_cmd.register(app)
    from engine.cli import pool_cmd

    pool_cmd.register(app)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default ``sys.argv[1:]``) and return the exit code."""
    command = typer.main.get_command(build_app())
    try:
        result = command.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="flowrelay",
            standalone_mode=False,
        )
    except typer.TyperException as exc:
        # Usage errors (typer's vendored click raises them; matched by shape, not private names).
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 0  # typer has printed the help already
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _error(f"{exc.format_message()}{hint}", getattr(exc, "exit_code", EXIT_USAGE))
    except (FlowrelayError, ValueError) as exc:
        return _error(str(exc), EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        return _error("interrupted", EXIT_INTERRUPTED)
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # a bug of ours: still one line, the traceback at DEBUG level
        _log_unexpected(exc)
        return _error(f"unexpected {type(exc).__name__}: {exc}", 1)
    return result if isinstance(result, int) else 0


def _error(message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    sys.stderr.write(f"Error: {first}\n")
    sys.stderr.flush()
    return code


def _log_unexpected(exc: BaseException) -> None:
    from engine.logging import get_logger

    get_logger("engine.cli").debug("unexpected error", exc_info=exc)


def main() -> None:
    """Console-script entry point: ``flowrelay = "engine.cli:main"``."""
    sys.exit(run_cli())


__all__ = ["build_app", "main", "run_cli"]
