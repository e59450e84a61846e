"""How the gateway's commands answer: one ``error:`` line on stderr, JSON or a human line on stdout."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

__all__ = ["AsJson", "emit", "err", "json_or_none"]

err = Console(stderr=True, soft_wrap=True)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data) if as_json else human)


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
