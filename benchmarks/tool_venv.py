"""A benchmark's own tool (LiteLLM's proxy, py-spy) in a virtual environment of its own under
``.cache/``, built once, so the project's environment never gets its dependencies."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

from tests.harness import ROOT


def ensure_tool(
    requirement: str, venv_name: str, command: str, timeout: float
) -> tuple[Path | None, str]:
    """``.cache/VENV_NAME/bin/COMMAND``, installing ``requirement`` there first if it is missing;
    or None and why not (never raises: a benchmark reports a tool it cannot have as unmeasured)."""
    where = ROOT / ".cache" / venv_name
    executable = where / "bin" / command
    if executable.exists():
        return executable, f"{requirement} in .cache/{venv_name}"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
        subprocess.run(
            [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return (
            None,
            f"{requirement} could not be installed in .cache/{venv_name} ({type(exc).__name__})",
        )
    if not executable.exists():
        return None, f"{requirement} installed no `{command}` command"
    return executable, f"{requirement} installed in .cache/{venv_name}"
