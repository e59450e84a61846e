"""The ``veil`` command.

Every command a client user runs (chat, embed, models, usage, attest, release) works in a plain
``pip install veil``; the server commands (serve, node, gateway, console, users, stacks, bench)
import their modules only when they run, after ``veil.extras`` has checked that their extra is
installed.

The commands live in ``veil.commands`` (one module per command group); this module builds the
``veil`` group from them, in the order ``veil --help`` lists them.
"""

from __future__ import annotations

import typer

from veil.commands.bench import bench
from veil.commands.common import fail, load_or_fail
from veil.commands.config import config_app
from veil.commands.console import console
from veil.commands.gateway import gateway
from veil.commands.node import node_app
from veil.commands.serve import DEMO_QUESTION, DEMO_STACK_UNITS, serve
from veil.extras import VeilGroup

__all__ = ["DEMO_QUESTION", "DEMO_STACK_UNITS", "app", "fail", "load_or_fail"]

app = typer.Typer(
    cls=VeilGroup,
    help="Veil: confidential AI inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(node_app, name="node")
app.add_typer(config_app, name="config")


def _mount_client_commands() -> None:
    from veil.client.cli import register

    register(app)


_mount_client_commands()
app.command("gateway")(gateway)
app.command("serve")(serve)
app.command("console")(console)
app.command("bench")(bench)


if __name__ == "__main__":  # pragma: no cover
    app()
