"""Shared pieces of the hostile-input tests: a real gateway + node on loopback, the response
invariants every route must keep whatever it is sent, and a capture of every log record."""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.conftest import Deployment, deploy
from tests.harness import sign_ticket
from tests.node.conftest import RunningNode
from veil.node.service import EngineRegistry
from veil.wire.errors import ERRORS_BY_CODE
from veil.wire.tickets import TICKET_HEADER

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"

#: Per-request ceiling: a route that takes longer than this is a hang.
REQUEST_TIMEOUT = 30.0
#: Units a fuzzed request may spend on the node: a valid chat body generates a few tokens at most.
FUZZ_UNITS = 24
#: Per-user rate limits for fuzzing deployments (the largest a setting takes).
UNLIMITED_RATE = 2**31 - 1


def rss_bytes() -> int:
    """Peak resident set size of this process (the servers run in its threads), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def error_shape_problem(response: httpx.Response) -> str | None:
    """Why ``response`` breaks the wire invariants, or None if it keeps them.

    Never a 500 or 502 (a 503 must be a proper SERVICE_UNAVAILABLE); every 4xx and 5xx carries
    ``{"error": {"code", "message"}}`` with a known code whose status is the response's status.
    """
    status = response.status_code
    if status in (500, 502) or (status >= 500 and status != 503):
        return f"server error {status}: {response.text[:500]!r}"
    if status < 400 or response.request.method == "HEAD":  # a HEAD answer has no body
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{status} with a non-JSON body: {response.text[:200]!r}"
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"{status} body is not {{'error': ...}}: {body!r:.300}"
    error = body["error"]
    if not isinstance(error, dict) or not {"code", "message"} <= set(error):
        return f"{status} error object lacks code/message: {error!r:.300}"
    if not isinstance(error["code"], str) or not isinstance(error["message"], str):
        return f"{status} code/message are not strings: {error!r:.300}"
    known = ERRORS_BY_CODE.get(error["code"])
    if known is None:
        return f"{status} with an unknown code {error['code']!r}"
    if known.status != status:
        return f"code {error['code']} belongs to {known.status}, sent with {status}"
    return None


def check_response(response: httpx.Response, what: str = "") -> None:
    problem = error_shape_problem(response)
    assert problem is None, (
        f"{response.request.method} {response.request.url.path} {what}: {problem}"
    )


def ticket_for(
    key: Ed25519PrivateKey, body: bytes, units: int = FUZZ_UNITS, node_small_id: int = 1
) -> str:
    """A valid gateway ticket for exactly ``body``, as the gateway would sign it."""
    return sign_ticket(key, body, units=units, node_small_id=node_small_id)


def ticket_headers(key: Ed25519PrivateKey, body: bytes, units: int = FUZZ_UNITS) -> dict[str, str]:
    return {TICKET_HEADER: ticket_for(key, body, units), "content-type": "application/json"}


# --- log capture ---------------------------------------------------------------------------------


class RecordingHandler(logging.Handler):
    """Keeps every record, fully formatted (message, arguments, exception text and stack)."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(level=level)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        #: (level, logger name, formatted line) of each record, for assertions on levels.
        self.entries: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a broken record still counts: keep what it carried
            line = f"{record.name} {record.levelname} {record.msg!r} {record.args!r} ({exc!r})"
        self.entries.append((record.levelno, record.name, line))
        self.lines.append(line)
        # Everything the record carries, in case a formatter elsewhere renders more than ours.
        self.lines.append(repr(record.args))
        if record.exc_text:
            self.lines.append(record.exc_text)


class LogCapture:
    """Every logger at ``level`` (DEBUG by default), every record into one handler, until
    ``close``.

    Open it after the uvicorn servers are built (``uvicorn.Config`` resets its loggers' levels).
    Loggers that do not propagate (uvicorn's) get the handler directly.
    """

    def __init__(self, level: int = logging.DEBUG) -> None:
        self.level = level
        self.handler = RecordingHandler(level)
        self._levels: dict[str, tuple[int, bool]] = {}
        self._attached: list[logging.Logger] = []

    def open(self) -> LogCapture:
        root = logging.getLogger()
        self._levels[""] = (root.level, root.disabled)
        root.setLevel(self.level)
        root.addHandler(self.handler)
        self._attached.append(root)
        for name in self._logger_names():
            self._attach(name)
        return self

    def _logger_names(self) -> list[str]:
        names = [
            n
            for n, obj in logging.root.manager.loggerDict.items()
            if isinstance(obj, logging.Logger)
        ]
        return sorted({*names, "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"})

    def _attach(self, name: str) -> None:
        logger = logging.getLogger(name)
        if name not in self._levels:
            self._levels[name] = (logger.level, logger.disabled)
        logger.setLevel(self.level)
        logger.disabled = False
        if not logger.propagate and logger not in self._attached:
            logger.addHandler(self.handler)
            self._attached.append(logger)

    def refresh(self) -> None:
        """Bring loggers created since ``open`` (libraries import lazily) to the level too."""
        for name in self._logger_names():
            self._attach(name)

    def close(self) -> None:
        for logger in self._attached:
            logger.removeHandler(self.handler)
        for name, (level, disabled) in self._levels.items():
            logger = logging.getLogger(name or None)
            logger.setLevel(level)
            logger.disabled = disabled
        self._attached.clear()
        self._levels.clear()

    @property
    def text(self) -> str:
        return "\n".join(self.handler.lines)


# --- the fuzzing deployment ---------------------------------------------------------------------


class Target:
    """What the fuzz tests aim at: a gateway, its node, keys, and one shared HTTP client.

    A plain class, not a dataclass, so hypothesis prints it in one line with a failing example.
    """

    def __init__(
        self,
        deployment: Deployment,
        user_key: str,
        stacks: dict[str, int],
        http: httpx.Client,
        logs: LogCapture,
    ) -> None:
        self.deployment = deployment
        self.node: RunningNode = deployment.nodes[0]
        self.node_url = self.node.url
        self.gateway_url = deployment.url
        self.user_key = user_key
        self.stacks = stacks
        self.gateway_key: Ed25519PrivateKey = deployment.gateway_key
        self.http = http
        self.logs = logs
        self.rss_at_start = rss_bytes()

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Target(gateway={self.gateway_url}, node={self.node_url})"

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        response = self.http.request(method, url, **kw)
        response.read()
        return response

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.user_key}"}

    def lock(self, model: str = CHAT, units: int = FUZZ_UNITS) -> dict[str, Any]:
        response = self.request(
            "POST",
            f"{self.gateway_url}/v1/nodes/lock",
            content=json.dumps({"model": model, "max_num_tokens": units}),
            headers=self.auth(),
        )
        assert response.status_code == 200, response.text
        locked: dict[str, Any] = response.json()
        return locked


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[Target]:
    # The fuzzer sends thousands of requests a minute with one key: rate limits are tested
    # elsewhere, so here they are set out of its way.
    servers, deployed = deploy(
        tmp_path_factory.mktemp("hostile"),
        [node_registry],
        default_requests_per_minute=UNLIMITED_RATE,
        default_concurrency=UNLIMITED_RATE,
    )
    logs = LogCapture(logging.WARNING)
    with servers[0], servers[1]:
        deployment = deployed.started()
        user_key, stacks = deployment.new_user("fuzzer", {CHAT: 10**12, EMBED: 10**12})
        logs.open()
        with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
            try:
                yield Target(deployment, user_key, stacks, http, logs)
            finally:
                logs.close()
