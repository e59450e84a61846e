"""What every ``veil`` command shares: one-line failures, settings loading, the shared options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic_settings import BaseSettings
from rich.console import Console

from veil.config import NodeSettings

S = TypeVar("S", bound=BaseSettings)

err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Keys and prepared models live here [env: VEIL_DATA_DIR]."),
]


def node_settings(config: Path | None = None, **overrides: object) -> NodeSettings:
    """Node settings: flags (``overrides`` not None) over ``VEIL_`` variables over ``config``."""
    return load_or_fail(NodeSettings, config, **overrides)


def load_or_fail(cls: type[S], config: Path | None, **overrides: object) -> S:
    """``veil.config.load_settings``, with a bad config file or value as one ``error:`` line."""
    from pydantic import ValidationError

    from veil.config import ConfigFileError, load_settings
    from veil.web import describe_validation_error

    try:
        return load_settings(cls, config, **overrides)
    except ConfigFileError as exc:
        raise fail(str(exc), 2) from None
    except ValidationError as exc:
        where = f" (from {config}, flags or VEIL_ variables)" if config else ""
        raise fail(f"invalid settings{where}: {describe_validation_error(exc)}", 2) from None


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file of settings (the names `veil config show` prints); flags and VEIL_ "
        "variables override it.",
    ),
]
LogFormatOption = Annotated[
    str | None, typer.Option(help="text, or json: one JSON object per line (never a body).")
]
DrainTimeout = Annotated[
    int | None,
    typer.Option(
        "--drain-timeout",
        help="On SIGTERM, seconds that requests and streams in flight get to finish [30].",
    ),
]


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"\0" * 4096)  # not empty: an empty file fits on a full disk
        probe.unlink()
    except OSError as exc:
        raise fail(f"data directory {path} is not writable ({exc.strerror})") from None
