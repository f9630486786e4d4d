"""``flowrelay config``: inspect the effective configuration."""

from __future__ import annotations

import os
from typing import Annotated

import typer
import yaml

from engine.cli.output import print_json
from engine.settings import ENV_PREFIX, config_path, get_settings

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)

_NOT_SETTINGS = ("FLOWRELAY_CONFIG", "FLOWRELAY_TEST_")


@app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Show the effective configuration (defaults < YAML file < FLOWRELAY_* variables), with
    passwords and tokens masked."""
    data = get_settings().masked()
    if as_json:
        print_json(data)
        return
    file = config_path()
    overrides = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and not name.upper().startswith(_NOT_SETTINGS)
    )
    typer.echo(f"# file: {file if file is not None else '(none: defaults)'}")
    if overrides:
        typer.echo(f"# from the environment: {', '.join(overrides)}")
    typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
