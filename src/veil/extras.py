"""Veil's extras, and the ``veil`` command in an install without them.

``pip install veil`` is the client; ``veil[node]``, ``veil[gateway]`` and ``veil[all]`` add what a
node or a gateway runs on (pyproject.toml). A server command first checks its extra against veil's
own metadata, before anything heavy is imported, and without it prints one line naming the extra
to install and exits 2: not a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # typer vendors click; these are the types its groups are built from
    from typer._click import Command, Context

# The exit status of a command whose extra is not installed (click's own for a usage error).
EXIT_NEEDS_EXTRA = 2
SERVE_EXTRAS = ("node", "gateway")

_err = Console(stderr=True, soft_wrap=True)


def missing_distributions(extras: tuple[str, ...]) -> list[str]:
    """The distributions that these extras of veil require and that are not installed.

    Read from veil's own metadata (the extras as pyproject.toml declares them), so this list is
    never a second copy. Veil run from a source tree without metadata reports none: there a
    missing module fails on import, as it always did.
    """
    try:
        requirements = metadata.requires("veil") or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
        if extra is None or extra.group(1) not in extras or name is None:
            continue
        if name.group(0).lower() == "veil":  # `all` names the other extras
            continue
        try:
            metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:
            missing.append(name.group(0))
    return missing


def needs_extras_message(command: str, extras: tuple[str, ...]) -> str:
    install = "all" if set(extras) == set(SERVE_EXTRAS) else ",".join(extras)
    which = " and ".join(extras) + (" extras" if len(extras) > 1 else " extra")
    return f"`veil {command}` needs the {which}: pip install 'veil[{install}]'"


def needs_extras(command: str, extras: tuple[str, ...]) -> typer.Exit:
    _err.print(
        f"[bold red]error:[/] {escape(needs_extras_message(command, extras))}", highlight=False
    )
    return typer.Exit(EXIT_NEEDS_EXTRA)


def require_extras(command: str, *extras: str) -> None:
    """Stop a server command, before it imports anything heavy, if its extra is missing."""
    if missing_distributions(extras):
        raise needs_extras(command, extras)


# Command groups defined in other modules, imported on first use: `veil chat` never pays for the
# gateway's imports, and a client-only install still lists (and explains) the server groups.
LAZY_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": ("veil.gateway.cli:users_app", ("gateway",)),
    "stacks": ("veil.gateway.cli:stacks_app", ("gateway",)),
    "nodes": ("veil.gateway.cli:nodes_app", ("gateway",)),
    "attest": ("veil.attestation.cli:attest_app", ()),
    "release": ("veil.attestation.release_cli:release_app", ()),
}


@cache
def _lazy_group(name: str) -> Command:
    where, extras = LAZY_GROUPS[name]
    if extras and missing_distributions(extras):
        return _needs_extras_command(name, extras)
    module, _, attribute = where.partition(":")
    # Mounted in a throwaway parent, so the group is built exactly as `add_typer` builds it.
    parent = typer.Typer(add_completion=False)
    parent.add_typer(getattr(importlib.import_module(module), attribute), name=name)
    return typer.main.get_group(parent).commands[name]


def _needs_extras_command(name: str, extras: tuple[str, ...]) -> TyperCommand:
    """Stands in for a group whose extra is missing: any arguments, even --help, get the line."""

    def explain() -> None:
        raise needs_extras(name, extras)

    return TyperCommand(
        name,
        callback=explain,
        help=f"Not installed here: needs the {' and '.join(extras)} extra.",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class VeilGroup(TyperGroup):
    """The top-level group: its own commands, then the lazily imported ones."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_GROUPS]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in LAZY_GROUPS:
            return _lazy_group(cmd_name)
        return super().get_command(ctx, cmd_name)
