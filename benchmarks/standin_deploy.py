"""A real node (and gateway) in front of the vLLM stand-in, for the benchmarks that need a GPU rate.

:func:`deployment` starts, each its own process on loopback: ``benchmarks.upstream_standin`` (the
stand-in for vLLM on a GPU), ``veil node --no-embedded --upstream chat:standin-chat=URL`` and, if
asked, ``veil gateway`` on a SQLite ledger with one user whose stack covers any run. Everything is
stopped on exit. :func:`memory_mb` reads a process's resident and peak memory from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.harness import child_env, free_port, stop_session, veil_process, wait_healthy

from benchmarks.upstream_standin import EMBED_MODEL, MODEL
from veil.gateway.identity import load_or_create_gateway_key, public_b64

ROOT = Path(__file__).resolve().parent.parent
STACK_UNITS = 10**12


@dataclass
class Deployment:
    standin: str
    node: str
    gateway: str | None
    api_key: str | None
    pids: dict[str, int]

    def active_streams(self) -> int:
        answer = httpx.get(f"{self.standin}/standin/stats")
        answer.raise_for_status()
        return int(answer.json()["active_streams"])

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait (bounded) until the stand-in has no stream open; whether it got there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active_streams() == 0:
                return True
            time.sleep(0.2)
        return False

    def set_rate(self, chunks_per_second: float) -> None:
        httpx.post(
            f"{self.standin}/standin/rate", json={"chunks_per_second": chunks_per_second}
        ).raise_for_status()


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB: resident now, and the peak since it started."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024 / 1e6
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def standin_server(
    tmp: Path, rate: float, tokenize: bool
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port, log = free_port(), tmp / "standin.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.upstream_standin", "--port", str(port),
             "--rate", str(rate), *([] if tokenize else ["--no-tokenize"])],
            stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log, timeout=60)
        yield url, process
    finally:
        stop_session(process)


async def _create_user(database_url: str, models: tuple[str, ...]) -> str:
    from veil.gateway.ledger import Ledger

    ledger = await Ledger.open(database_url)
    try:
        user, key = await ledger.create_user(
            f"stream-{secrets.token_hex(4)}", requests_per_minute=2**31 - 1, concurrency=100_000
        )
        for model in models:
            await ledger.create_stack(user.name, model, STACK_UNITS)
        return key
    finally:
        await ledger.close()


@contextlib.contextmanager
def node_on(
    tmp: Path,
    standin: str | None,
    gateway_key: str | None,
    name: str,
    env: dict[str, str] | None = None,
    models_dir: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``veil node`` serving the stand-in's chat and embeddings models (``standin``), or its
    embedded models from ``models_dir`` (``standin`` None); it takes tickets of the gateway whose
    key is ``gateway_key``, or (None) serves anyone (``--insecure-no-gateway``)."""
    port, log = free_port(), tmp / f"{name}.log"
    args = ["node", "--port", str(port), "--data-dir", str(tmp / name), "--log-level", "warning"]
    if standin is not None:
        args += ["--no-embedded", "--upstream", f"chat:{MODEL}={standin}",
                 "--upstream", f"embeddings:{EMBED_MODEL}={standin}"]  # fmt: skip
    else:
        assert models_dir is not None, "a node needs the stand-in or the embedded models"
        args += ["--models-dir", str(models_dir)]
    args += ["--gateway-key", gateway_key] if gateway_key else ["--insecure-no-gateway"]
    with veil_process(args, log, env or child_env()) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log, timeout=180)
        yield url, process


@contextlib.contextmanager
def deployment(
    tmp: Path,
    *,
    gateway: bool,
    rate: float = 0.0,
    tokenize: bool = True,
    models_dir: Path | None = None,
) -> Iterator[Deployment]:
    """The stand-in, a node on it, and (``gateway``) a gateway in front of the node.
    ``tokenize``: whether the stand-in answers vLLM's ``/tokenize`` (else 404, and the node
    counts one token a chunk). ``models_dir``: the node serves its embedded (real, CPU) models
    from there instead, and the stand-in still runs but serves nobody."""
    env = child_env() if models_dir is None else child_env(models_dir)
    with contextlib.ExitStack() as running:
        standin, standin_process = running.enter_context(standin_server(tmp, rate, tokenize))
        gateway_dir = tmp / "gateway"
        key = public_b64(load_or_create_gateway_key(gateway_dir)) if gateway else None
        upstream = standin if models_dir is None else None
        node, node_process = running.enter_context(
            node_on(tmp, upstream, key, "node", env, models_dir=models_dir)
        )
        pids = {"stand-in": standin_process.pid, "node": node_process.pid}
        if not gateway:
            yield Deployment(standin, node, None, None, pids)
            return
        port, log = free_port(), tmp / "gateway.log"
        database_url = f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"
        gateway_args = ["gateway", "--port", str(port), "--data-dir", str(gateway_dir),
                        "--database-url", database_url, "--node", node,
                        "--log-level", "warning"]  # fmt: skip
        gateway_process = running.enter_context(veil_process(gateway_args, log, env))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, gateway_process, log, timeout=180)
        served = (MODEL, EMBED_MODEL)
        if models_dir is not None:  # veil.engines loads the engine stack: only when asked
            from veil.engines.models import CHAT_MODEL_ID, EMBEDDINGS_MODEL_ID

            served = (CHAT_MODEL_ID, EMBEDDINGS_MODEL_ID)
        key = asyncio.run(_create_user(database_url, served))
        pids["gateway"] = gateway_process.pid
        yield Deployment(standin, node, url, key, pids)
