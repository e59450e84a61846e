"""``veil config show``: the settings a node or gateway would run with."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic_settings import BaseSettings

from veil.commands.common import ConfigFile, fail, load_or_fail
from veil.config import NodeSettings

config_app = typer.Typer(
    help="Settings: what a node or gateway would run with.", no_args_is_help=True
)


@config_app.command("show")
def config_show(
    component: Annotated[str, typer.Argument(help="node or gateway")],
    config: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings (defaults, then CONFIG, then VEIL_ variables), secrets masked."""
    from veil.config import GatewaySettings, masked_settings

    classes: dict[str, type[BaseSettings]] = {"node": NodeSettings, "gateway": GatewaySettings}
    if component not in classes:
        raise fail(f"unknown component {component!r}: give node or gateway", 2)
    effective = masked_settings(load_or_fail(classes[component], config))
    if as_json:
        typer.echo(json.dumps(effective, indent=2, default=str))
        return
    for name, value in effective.items():
        typer.echo(f"{name} = {json.dumps(value, default=str)}")
