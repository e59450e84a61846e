"""py-spy for the streaming benchmark: installed into a venv of its own, never into the project's.

``py-spy`` (PyPI) is a sampling profiler that reads another Python process's stacks from outside.
:func:`ensure_py_spy` builds ``.cache/py-spy-venv`` once with the interpreter that runs the
benchmark and installs py-spy there (or says why it could not); :func:`record` samples processes
for a while in raw (collapsed-stack) form; :func:`summary` turns that into the flame summary the
report prints: the functions where the samples' own time goes (leaf frames), and the share of
samples under each of a few named parts of Veil.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.tool_venv import ensure_tool

RATE_HZ = 97

# Inclusive shares: a sample counts for a part when any frame of its stack matches the part.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("veil-v3 crypto (veil/hazmat)", ("veil/hazmat/",)),
    ("Ed25519 signing", ("sign (", "ed25519")),
    ("pydantic (validate / dump)", ("pydantic",)),
    ("httpx / httpcore (HTTP client)", ("httpx/", "httpcore/")),
    ("h11 / uvicorn (HTTP server)", ("h11/", "uvicorn/")),
    ("JSON", ("json/", "orjson")),
    ("ledger (SQLAlchemy / aiosqlite)", ("sqlalchemy/", "aiosqlite/")),
    ("asyncio event loop", ("asyncio/",)),
)


def ensure_py_spy() -> tuple[Path | None, str]:
    """The py-spy executable, or None and why not."""
    return ensure_tool("py-spy", "py-spy-venv", "py-spy", timeout=600)


def start(py_spy: Path, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks), in the background."""
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(RATE_HZ), "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """Wait for a recording; its error output if it failed, else ''."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return "py-spy did not finish"
    return "" if process.returncode == 0 else err.decode(errors="replace")[-300:]


def _stacks(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summary(
    raw: Path, top: int = 8
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(leaf function, % of samples)], [(part, % of samples under it)])."""
    stacks = _stacks(raw) if raw.exists() else []
    total = sum(count for _, count in stacks)
    if not total:
        return 0, [], []
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for frames, count in stacks:
        leaves[_short(frames[-1])] += count
        for name, needles in PARTS:
            if any(n in frame for frame in frames for n in needles):
                parts[name] += count
    return (
        total,
        [(name, count / total * 100) for name, count in leaves.most_common(top)],
        [(name, parts[name] / total * 100) for name, _ in PARTS if parts[name]],
    )


def _short(frame: str) -> str:
    """``function (path/to/file.py:line)`` -> ``function (file.py)``; the path's tail only."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    tail = "/".join(where.split("/")[-2:])
    return f"{name} ({tail})" if tail else name


if __name__ == "__main__":
    found, why = ensure_py_spy()
    print(found or why, file=sys.stderr)
