"""``veil bench``: every benchmark in the checkout's benchmarks/, and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veil.extras import SERVE_EXTRAS, require_extras

__all__ = ["bench"]


def bench(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="The Markdown report (default: docs/BENCHMARKS.md in the checkout)."
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="The run's JSON: every headline by stable id (default: --out with .json).",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer iterations and a short load run (minutes).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run just this benchmark (repeatable), e.g. crypto."),
    ] = None,
) -> None:
    """Run every benchmark in the checkout's benchmarks/ and write the report (docs/BENCHMARKS.md)."""
    require_extras("bench", *SERVE_EXTRAS)
    from veil.bench import run_all

    raise typer.Exit(run_all(out, quick, only or [], json_out))
