"""``veil bench``: run the repository's benchmarks and write their report.

The benchmarks live in the source checkout (``benchmarks/`` beside ``src/``), not in the installed
package: they start real gateways and nodes on the test models and compare against baselines
measured in the same run. This module only finds the checkout and runs ``python -m benchmarks``
there with the same interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_TIMEOUT_SECONDS = 4 * 3600  # the runner bounds each benchmark; this bounds the whole run


def find_checkout(start: Path | None = None) -> Path | None:
    """The source checkout this ``veil`` was installed from (editable install), if any."""
    here = (start or Path(__file__)).resolve()
    for candidate in here.parents:
        if (candidate / "benchmarks" / "__main__.py").is_file():
            return candidate
    return None


def run_all(
    out: Path | None, quick: bool, only: list[str] | None = None, json_out: Path | None = None
) -> int:
    """Run every benchmark and write the Markdown report to ``out`` and the run's JSON to
    ``json_out`` (default: ``out`` with ``.json``); the runner's exit code (0: every benchmark ran
    cleanly; 1: one failed, still reported; 2: no checkout found)."""
    root = find_checkout()
    if root is None:
        print(
            "error: veil bench needs a source checkout of Veil (benchmarks/ beside src/); "
            "install it with `pip install -e .` from the checkout",
            file=sys.stderr,
        )
        return 2
    report = (root / "docs" / "BENCHMARKS.md") if out is None else Path(out).resolve()
    command = [sys.executable, "-m", "benchmarks", "--out", str(report)]
    if json_out is not None:
        command += ["--json", str(Path(json_out).resolve())]
    if quick:
        command.append("--quick")
    for name in only or []:
        command += ["--only", name]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            command, cwd=root, timeout=BENCH_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"error: benchmarks still running after {BENCH_TIMEOUT_SECONDS} s", file=sys.stderr)
        return 1
    return done.returncode
