"""`veil serve` runs its node as a child process: however serve ends (SIGKILL, SIGTERM), the node
goes with it, so nothing is left holding the node port, and serve starts again cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import CHAT, VeilProcess, get_json
from tests.servers import free_port, http_ok, wait_until


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if int(ppid) == pid and state != "Z":
                    found.append(int(entry.name))
    return found


def serves_chat(port: int) -> bool:
    listed = get_json(f"http://127.0.0.1:{port}/v1/models")
    return listed is not None and CHAT in {m["id"] for m in listed["data"]}


def gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_never_leaves_its_node_behind(tmp_path: Path) -> None:
    port, node_port = free_port(), free_port()
    args = ["serve", "--port", str(port), "--node-port", str(node_port)]
    args += ["--data-dir", str(tmp_path / "data"), "--log-level", "warning"]
    serve = VeilProcess(args, tmp_path / "serve.log")
    nodes: list[int] = []
    try:
        for how in (signal.SIGKILL, signal.SIGTERM):
            serve.start()
            assert serve.proc is not None
            serve.wait_for(lambda: serves_chat(port), 180, "veil serve")
            nodes = children(serve.proc.pid)
            assert len(nodes) == 1, nodes

            serve.proc.send_signal(how)
            code = serve.proc.wait(timeout=60)
            # SIGTERM is a graceful stop (exit 0, the node child stopped with it); SIGKILL is not.
            assert code == (-how if how == signal.SIGKILL else 0), serve.output()[-2000:]
            wait_until(lambda: gone(nodes[0]), 30, f"the node child after serve got {how.name}")
            assert not http_ok(f"http://127.0.0.1:{node_port}/health")
    finally:
        serve.stop()
        for pid in nodes:  # only if the test failed: never leave our own node running
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
