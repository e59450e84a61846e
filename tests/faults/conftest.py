"""Fault tests: real processes (nodes, gateways, PostgreSQL, Redis) killed and restarted.

Everything here is real: ``veil node`` / ``veil gateway`` subprocesses, a private PostgreSQL made
with ``initdb`` and driven with ``pg_ctl``, a private ``redis-server``. Waiting is bounded polling
(``wait_until``), never a bare sleep. A missing binary skips the test loudly, except under ``CI``,
where it fails (CI must run these).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest

from tests.conftest import TEST_MODEL_DIR
from tests.servers import free_port, stop_process, wait_until
from veil.gateway.ledger import Ledger, Stack
from veil.hazmat import v1, v3
from veil.wire.envelopes import RESERVATION_HEADER, ConfidentialComputeRequest
from veil.wire.tickets import UsageReceipt, public_key_from_b64, verify_token

T = TypeVar("T")

VEIL = [sys.executable, "-m", "veil.cli"]
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
CHAT_PATH = "/v1/confidential/chat/completions"
EMBED_PATH = "/v1/confidential/embeddings"


def unavailable(what: str) -> NoReturn:
    """Skip loudly, or fail under CI: a fault test that cannot run must not pass silently."""
    message = f"fault test NOT run: {what}"
    if os.environ.get("CI"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


# --- veil subprocesses ------------------------------------------------------------------------


class VeilProcess:
    """One ``veil ...`` subprocess, its output in a log file, killable and restartable."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = {**os.environ, "VEIL_MODELS_DIR": str(TEST_MODEL_DIR), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VeilProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*VEIL, *self.args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, an OOM kill, a pulled plug)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check``, giving up at once (with the log) if the process died."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{what}: the process exited\n{self.output()[-3000:]}")
            return check()

        try:
            wait_until(ready, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.output()[-3000:]}") from None


def get_json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


class NodeProcess(VeilProcess):
    def __init__(self, data_dir: Path, gateway_key: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["node", "--port", str(self.port), "--data-dir", str(data_dir)]
        args += ["--gateway-key", gateway_key, "--log-level", "warning", *extra]
        super().__init__(args, data_dir.parent / f"{data_dir.name}.log")

    def wait_ready(self, timeout: float = 180) -> None:
        self.wait_for(lambda: get_json(f"{self.url}/health") is not None, timeout, "node")


class GatewayProcess(VeilProcess):
    """``veil gateway`` with fast housekeeping (expiry sweep and node refresh every 0.2 s)."""

    def __init__(
        self,
        data_dir: Path,
        nodes: list[str],
        database_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["gateway", "--port", str(self.port), "--data-dir", str(data_dir)]
        args += ["--log-level", "warning"]
        args += [arg for url in nodes for arg in ("--node", url)]
        if database_url is not None:
            args += ["--database-url", database_url]
        fast = {"VEIL_EXPIRE_INTERVAL_SECONDS": "0.2", "VEIL_HEALTH_INTERVAL_SECONDS": "0.2"}
        super().__init__(args, data_dir.parent / f"{data_dir.name}.log", {**fast, **(env or {})})

    def serves(self, *models: str) -> bool:
        listed = get_json(f"{self.url}/v1/models")
        return listed is not None and set(models) <= {m["id"] for m in listed["data"]}

    def wait_ready(self, *models: str, timeout: float = 180) -> None:
        self.wait_for(lambda: self.serves(*models), timeout, "gateway")


@contextlib.contextmanager
def running(*processes: VeilProcess) -> Iterator[None]:
    """Stop every process at the end, whatever happened (a killed one is already gone)."""
    try:
        yield
    finally:
        for process in processes:
            process.stop()


# --- the ledger, from the test's side -----------------------------------------------------------


def with_ledger(url: str, work: Callable[[Ledger], Awaitable[T]]) -> T:
    """Open the ledger the gateway uses, run ``work`` on it, close it."""

    async def run() -> T:
        ledger = await Ledger.open(url)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())


def create_account(
    url: str, name: str, units: dict[str, int], *, requests_per_minute: int | None = None
) -> tuple[str, dict[str, int]]:
    """A user with one stack per model, made in the database before any gateway runs. A load
    test raises ``requests_per_minute`` above the gateway's default, which it would otherwise
    hit (its requests would then end in a correct, but here unwanted, 429)."""

    async def work(ledger: Ledger) -> tuple[str, dict[str, int]]:
        _, key = await ledger.create_user(name, requests_per_minute=requests_per_minute)
        stacks = {m: (await ledger.create_stack(name, m, n)).id for m, n in units.items()}
        return key, stacks

    return with_ledger(url, work)


def stacks(url: str) -> dict[int, Stack]:
    async def work(ledger: Ledger) -> dict[int, Stack]:
        return {s.id: s for s in await ledger.list_stacks(None)}

    return with_ledger(url, work)


def reconcile(url: str) -> list[str]:
    return with_ledger(url, lambda ledger: ledger.reconcile())


# --- talking to a gateway -------------------------------------------------------------------------


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


def lock(url: str, key: str, model: str, **fields: Any) -> httpx.Response:
    """``POST /v1/nodes/lock``; ``fields`` are the lock's (``max_num_tokens``, ``timeout``)."""
    return httpx.post(
        f"{url}/v1/nodes/lock", json={"model": model, **fields}, headers=auth(key), timeout=30
    )


def seal_v1(
    locked: dict[str, Any], body: dict[str, Any]
) -> tuple[ConfidentialComputeRequest, v1.Session]:
    return v1.seal_request(
        base64.b64decode(locked["public_key"]),
        json.dumps(body).encode(),
        model_name=body["model"],
        stack_small_id=locked["stack_small_id"],
        num_compute_units=body.get("max_tokens"),
        stream=body.get("stream"),
    )


def seal_v3(
    locked: dict[str, Any], body: dict[str, Any], path: str
) -> tuple[ConfidentialComputeRequest, v3.ClientSession]:
    """``body`` sealed as a client seals it: veil-v3 to the lock's post-quantum key, bound to the
    lock's reservation, its answer to be signed by the lock's signing key."""
    assert locked["kem"] == v3.Kem.HYBRID.value, "the lock names no post-quantum key"
    return v3.seal_request(
        base64.b64decode(locked["kem_public_key"]),
        locked["kem_key_id"],
        json.dumps(body).encode(),
        node_signing_key=base64.b64decode(locked["node_signing_public_key"]),
        endpoint=path,
        model_name=body["model"],
        stack_small_id=locked["stack_small_id"],
        num_compute_units=locked["reserved_units"],
        stream=body.get("stream"),
        reservation_id=locked["reservation_id"],
    )


def reserved(key: str, locked: dict[str, Any]) -> dict[str, str]:
    """``auth(key)`` and the lock's handle: the request claims exactly that reservation."""
    return {**auth(key), RESERVATION_HEADER: locked["reservation_id"]}


def receipt_from(token: str, locked: dict[str, Any]) -> UsageReceipt:
    """A usage receipt, verified under the node signing key the lock announced."""
    key = public_key_from_b64(locked["node_signing_public_key"])
    return verify_token(token, UsageReceipt, [key])


# --- a private PostgreSQL ----------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        unavailable(f"no PostgreSQL {name} binary (install postgresql)")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb + pg_ctl on a free port), so the test may restart
    it; the shared server on 5432 is never touched."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        # Under /tmp, not tmp_path: the server user must be able to reach it.
        self.base = Path(tempfile.mkdtemp(prefix="veil-faults-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            runuser = shutil.which("runuser")
            if runuser is None:
                unavailable("running as root without runuser to start PostgreSQL as postgres")
            try:
                shutil.chown(self.base, "postgres", "postgres")
            except (LookupError, OSError) as exc:
                unavailable(f"no postgres OS user to run a private PostgreSQL: {exc}")
            self.as_user = [runuser, "-u", "postgres", "--"]
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        # Output to a file, not a pipe: the server pg_ctl starts would hold a pipe open forever.
        with tempfile.TemporaryFile() as out:
            result = subprocess.run(
                [*self.as_user, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
            out.seek(0)
            output = out.read().decode(errors="replace")
        if result.returncode != 0:
            raise AssertionError(f"{Path(args[0]).name} failed: {output}\n{self.server_log()}")

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def init(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back when it returns."""
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart"
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl could not stop it: kill the postmaster we started
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()


# --- a private Redis -------------------------------------------------------------------------------


class PrivateRedis:
    """``redis-server`` without persistence on a free port; killable and restartable there."""

    def __init__(self, log: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("no redis-server binary (install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(answers, 20, "redis-server")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
