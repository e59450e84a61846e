"""Resident memory of a benchmarked process (and of its children), from ``/proc``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _kilobytes(value: str | None) -> int:
    return int(value.split()[0]) * 1024 if value else 0  # /proc reports kB (1024 bytes)


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes, the node process + its descendants
    processes: int
    peak: int  # bytes, VmHWM of the node process itself


def node_memory(root: int) -> Memory:
    """VmRSS summed over ``root`` and its descendants (shared pages count once per process)."""
    statuses: dict[int, dict[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                statuses[int(entry.name)] = _status(int(entry.name))
    if root not in statuses:
        raise ProcessLookupError(f"the process {root} is not running")
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, status in statuses.items():
            if pid not in tree and status.get("PPid") == str(parent):
                tree.add(pid)
                frontier.append(pid)
    rss = sum(_kilobytes(statuses[pid].get("VmRSS")) for pid in tree)
    return Memory(rss, len(tree), _kilobytes(statuses[root].get("VmHWM")))
