"""What the tests and the benchmarks both need to run Veil for real, written once.

- ports and bounded waiting: ``free_port``, ``wait_until``, ``http_ok``, ``healthy``;
- servers: ``ServerThread`` (an ASGI app on a real uvicorn thread) and ``veil`` subprocesses
  (``veil_process`` in a session of its own, ``stop_process``, ``wait_healthy``, ``child_env``);
- PostgreSQL: the maintenance URL that answers (``find_postgres_admin``) and a fresh database,
  dropped afterwards (``fresh_postgres_database``);
- a gateway ticket for an envelope, signed as the gateway signs one (``sign_ticket``);
- a request sealed to a node (atoma-v1, or veil-v3 to its post-quantum key) and opened with the
  client's own openers (``seal_to``), so no test or benchmark carries a response opener of its own.

No pytest here (the benchmarks import this module; the fixtures built on it live in the
conftests), and nothing that loads a model: the engines stay in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from veil.client.opening import Opener
    from veil.hazmat import v1, v3
    from veil.wire.envelopes import Usage
    from veil.wire.routes import Endpoint

ROOT = Path(__file__).resolve().parent.parent
# The nodes the suite and the benchmarks run have no TEE ("none" evidence), so their gateways
# accept that, as `veil serve` does for its demo node; a test of the strict default says so.
os.environ.setdefault("VEIL_INSECURE_NODES_NO_TEE", "1")
#: Where the embedded models are prepared once and reused by later runs.
TEST_MODEL_DIR = Path(os.environ.get("VEIL_TEST_MODEL_DIR", ROOT / ".cache" / "test-models"))
VEIL_COMMAND = [sys.executable, "-m", "veil.cli"]
START_TIMEOUT = 600.0  # a node loading its models on a busy 2-core machine


# --- ports and waiting --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; the loop is bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def healthy(url: str) -> bool:
    """Whether ``url``'s ``/health`` answers 200."""
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- servers in this process --------------------------------------------------------------------


class ServerThread:
    """Serve an ASGI app with a real uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: object, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        # Bounded, not short: an app's startup (a gateway checking its nodes) on a loaded machine.
        wait_until(lambda: self.server.started, 120, "uvicorn")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# --- veil subprocesses --------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def child_env(models_dir: Path = TEST_MODEL_DIR) -> dict[str, str]:
    """The environment of a ``veil`` child: the prepared models, and no model hub."""
    return {
        **os.environ,
        "VEIL_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@contextlib.contextmanager
def veil_process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``veil ARGS`` as a child in a session of its own (output to ``log``); on exit the whole
    session is stopped, so a node ``veil serve`` starts as its own child goes too."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*VEIL_COMMAND, *args],
            stdout=output, stderr=subprocess.STDOUT, env=env or child_env(), cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop_session(process)


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's session (process group), then SIGKILL if it is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.1)
        if not _group_alive(process.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT
) -> None:
    """Poll ``url``'s ``/health`` (bounded); raises with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{log.name} exited with {process.returncode}:\n{tail}")
        if healthy(url):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s (see {log})")


# --- PostgreSQL ---------------------------------------------------------------------------------
# The server comes from VEIL_TEST_POSTGRES_URL (default below). With no user in the URL the OS user
# is tried, then ``postgres``.

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://127.0.0.1:5432/test"


def postgres_url_setting() -> str:
    return os.environ.get("VEIL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_candidates(raw: str) -> list[URL]:
    url = make_url(raw)
    if url.username:
        return [url]
    return [url, url.set(username="postgres")]


async def _probe(url: URL) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 3})
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def find_postgres_admin(raw: str) -> tuple[URL | None, list[str]]:
    """The first candidate URL of ``raw`` that connects, and why each one before it did not."""
    errors: list[str] = []
    for url in postgres_candidates(raw):
        try:
            asyncio.run(_probe(url))
        except Exception as exc:
            errors.append(f"{url.render_as_string(hide_password=True)}: {exc!r}")
            continue
        return url, errors
    return None, errors


def postgres_admin_url(raw: str) -> URL:
    """Like ``find_postgres_admin``, for a caller that cannot go on without PostgreSQL."""
    url, errors = find_postgres_admin(raw)
    if url is None:
        raise RuntimeError("PostgreSQL is unreachable: " + "; ".join(errors))
    return url


async def _admin(url: URL, statement: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def fresh_postgres_database(admin: URL, prefix: str = "veil_t_") -> Iterator[str]:
    """An empty database ``<prefix><random>`` on the server, dropped afterwards."""
    name = f"{prefix}{secrets.token_hex(6)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- gateway tickets ----------------------------------------------------------------------------


def sign_ticket(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    units: int,
    stack_small_id: int = 1,
    node_small_id: int = 1,
    ticket_id: str | None = None,
    lifetime: float = 60.0,
    reservation_id: str | None = None,
) -> str:
    """The ``X-Veil-Ticket`` for exactly ``body``, built from the wire's own ticket pieces as the
    gateway's ``Forwarder.ticket`` builds it (a streaming-style ticket: no engine deadline).
    ``reservation_id``: the reservation the ticket claims (a veil-v3 envelope bound to one must
    name the same)."""
    from veil.wire.tickets import Ticket, envelope_digest, sign_token

    ticket = Ticket(
        ticket_id=ticket_id or uuid.uuid4().hex,
        stack_small_id=stack_small_id,
        node_small_id=node_small_id,
        units=units,
        expires_at=time.time() + lifetime,
        envelope_sha256=envelope_digest(body),
        reservation_id=reservation_id,
    )
    return sign_token(ticket, key)


# --- sealing to a node, opening with the client's openers ---------------------------------------

Suite = Literal["atoma-v1", "veil-v3"]


@dataclass(frozen=True)
class NodeKeys:
    """What a client needs to seal to a node and check its answers: the X25519 key (atoma-v1, and
    veil-v3's classical KEM), the post-quantum key veil-v3 seals to by default (ML-KEM-768 +
    X25519, X-Wing; None if the node names none) and the signing key."""

    public_key: bytes
    key_id: str
    signing_key: Ed25519PublicKey
    kem_public_key: bytes | None = None
    kem_key_id: str | None = None

    @classmethod
    def from_lock(cls, lock: dict[str, Any]) -> NodeKeys:
        """From a ``/v1/nodes/lock`` answer (its ``kem_public_key``, when it names one)."""
        from veil.wire.tickets import public_key_from_b64

        kem_public_key, kem_key_id = _kem_key(lock)
        return cls(
            base64.b64decode(lock["public_key"], validate=True),
            str(lock["key_id"]),
            public_key_from_b64(lock["node_signing_public_key"]),
            kem_public_key,
            kem_key_id,
        )

    @classmethod
    def from_keys_document(cls, document: dict[str, Any]) -> NodeKeys:
        """From a node's ``GET /v1/keys``: its current keys, each checked against its key id."""
        from veil.wire.keyid import key_id
        from veil.wire.tickets import public_key_from_b64

        current = next(k for k in document["keys"] if k["status"] == "current")
        public_key = base64.b64decode(current["public_key"], validate=True)
        if key_id(public_key) != current["key_id"]:
            raise ValueError("the key_id of /v1/keys does not belong to its public key")
        kem_public_key, kem_key_id = _kem_key(current)
        return cls(
            public_key,
            current["key_id"],
            public_key_from_b64(document["signing_public_key"]),
            kem_public_key,
            kem_key_id,
        )


def _kem_key(entry: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """The post-quantum key a lock or ``/v1/keys`` entry names, checked against its key id."""
    from veil.wire.keyid import key_id

    if entry.get("kem_public_key") is None:
        return None, None
    public_key = base64.b64decode(entry["kem_public_key"], validate=True)
    if entry.get("kem_key_id") is not None and key_id(public_key) != entry["kem_key_id"]:
        raise ValueError("the kem_key_id does not belong to its kem_public_key")
    return public_key, key_id(public_key)


@dataclass
class SealedRequest:
    """One sealed request: the envelope's bytes, and the client's opener for its answer."""

    content: bytes
    opener: Opener

    def open(self, raw: bytes) -> dict[str, Any]:
        """A whole answer: opened and checked (tag, hash, signature, clear == signed usage)."""
        from veil.client.opening import open_single

        return open_single(self.opener, raw)[1]

    def chunks(self, response: httpx.Response) -> Iterator[dict[str, Any]]:
        """Each chunk of an open streaming answer, opened and checked in its place; at the end,
        the stream must have been whole (``StreamTruncated`` otherwise)."""
        from veil.client.streaming import StreamChecker, event_data

        checker = StreamChecker(self.opener)
        with _stream_reading():
            for data in event_data(response):
                if (opened := checker.event(data)) is not None:
                    yield opened[1]
        checker.end()

    async def achunks(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        from veil.client.streaming import StreamChecker, aevent_data

        checker = StreamChecker(self.opener)
        with _stream_reading():
            async for data in aevent_data(response):
                if (opened := checker.event(data)) is not None:
                    yield opened[1]
        checker.end()

    @property
    def usage(self) -> Usage | None:
        """The signed usage, once the answer (or the stream's final chunk) was verified."""
        return self.opener.receipt.usage


@contextlib.contextmanager
def _stream_reading() -> Iterator[None]:
    """A network failure mid-stream is the client's ``StreamTruncated``, as in the client."""
    from veil.client.errors import StreamTruncated

    try:
        yield
    except httpx.HTTPError as exc:
        raise StreamTruncated(f"the stream broke ({type(exc).__name__})") from exc


def client_opener(
    session: v1.Session | v3.ClientSession,
    node: NodeKeys,
    endpoint: Endpoint,
    model: str,
    stack_small_id: int = 1,
    units: int | None = None,
) -> Opener:
    """The client's own opener for answers to a request sealed with ``session``, with a fresh
    receipt (its usage, messages verified and crypto time fill in as answers are opened)."""
    from veil.client.opening import ResponseOpener, V3ResponseOpener
    from veil.client.receipt import Receipt
    from veil.hazmat import v1

    receipt = Receipt(endpoint, model, 0, node.key_id, stack_small_id, units)
    if isinstance(session, v1.Session):
        return ResponseOpener(session, node.signing_key, receipt)
    return V3ResponseOpener(session, node.signing_key, receipt)


def seal_to(
    node: NodeKeys,
    body: dict[str, Any],
    *,
    suite: Suite,
    endpoint: Endpoint,
    stack_small_id: int,
    units: int | None,
    reservation_id: str | None = None,
    classical_kem: bool = False,
) -> SealedRequest:
    """Seal ``body`` (its ``stream`` flag included) to ``node`` for ``endpoint``'s confidential
    route; ``units`` is the envelope's ``num_compute_units`` (veil-v3 authenticates it).

    veil-v3 seals to the node's post-quantum key, bound to ``reservation_id`` (a lock's: a gateway
    ticket claims it, and the node compares); ``classical_kem`` seals to its X25519 key instead,
    for a node whose policy allows that KEM. atoma-v1 ignores both."""
    from veil.hazmat import v1, v3
    from veil.wire.routes import confidential_path

    raw = json.dumps(body).encode()
    model = str(body["model"])
    stream = body.get("stream")
    if suite == "atoma-v1":
        envelope, session = v1.seal_request(
            node.public_key, raw, model_name=model, stack_small_id=stack_small_id,
            num_compute_units=units, stream=stream,
        )  # fmt: skip
        return SealedRequest(
            envelope.model_dump_json().encode(),
            client_opener(session, node, endpoint, model, stack_small_id, units),
        )
    if units is None:
        raise ValueError("a veil-v3 envelope authenticates its units: give them")
    if classical_kem:
        kem, public_key, kem_key_id = v3.Kem.X25519, node.public_key, node.key_id
    elif node.kem_public_key is None or node.kem_key_id is None:
        raise ValueError("the node names no post-quantum key to seal a veil-v3 request to")
    else:
        kem, public_key, kem_key_id = v3.Kem.HYBRID, node.kem_public_key, node.kem_key_id
    v3_envelope, v3_session = v3.seal_request(
        public_key, kem_key_id, raw, node_signing_key=node.signing_key,
        endpoint=confidential_path(endpoint), model_name=model, stack_small_id=stack_small_id,
        kem=kem, num_compute_units=units, stream=stream, reservation_id=reservation_id,
    )  # fmt: skip
    opener = client_opener(v3_session, node, endpoint, model, stack_small_id, units)
    opener.receipt.kem, opener.receipt.kem_key_id = kem.value, kem_key_id
    return SealedRequest(v3_envelope.model_dump_json().encode(), opener)
