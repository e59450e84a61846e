"""Issue 12 #6: every integer a caller can send the gateway is range-checked at the edge.

Hypothesis sends integers up to 2**64 (and down to -2**64) in every integer field of every gateway
route (the lock, the plain chat and images bodies, the confidential envelope, the admin bodies
and the admin path), against a real gateway and node on SQLite and on PostgreSQL. A value outside
the field's range must be a 400 INVALID_BODY naming the field; any value must never be a 5xx
(``max_tokens`` near 2**63 on the plain chat route used to overflow the ledger's integer bind:
SQLite ``OverflowError``, PostgreSQL "bigint out of range"). After every example the ledger's books
balance (``reconcile``) and no plain request leaves units reserved.

Values between 3 and 10**6 are not drawn: inside the range they would be real generations (a
fuzzer must not spend minutes of CPU per example); outside it nothing lies there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import fresh_postgres_database
from tests.e2e.conftest import CHAT, Deployment, deploy
from tests.gateway.conftest import LedgerHarness, open_harness
from tests.hostile.conftest import REQUEST_TIMEOUT, UNLIMITED_RATE, check_response
from veil.hazmat import v1
from veil.node.service import EngineRegistry
from veil.wire.envelopes import MAX_ID, MAX_REQUEST_UNITS

pytestmark = pytest.mark.slow

EDGES = [
    0,
    1,
    2,
    -1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**62 - 1,
    2**62,
    2**62 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
]
edge_ints = st.sampled_from(EDGES) | st.integers(-(2**64), 2**64).filter(lambda v: abs(v) > 10**6)
EDGE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STACK_UNITS = 10_000  # far below every in-range value drawn past 10**6: those answer 402


@dataclass
class Edge:
    deployment: Deployment
    ledger: LedgerHarness
    http: httpx.Client
    key: str
    stacks: dict[str, int]
    spare_stack: int  # an admin-made stack for top-ups
    locker: str  # a second user, for the lock test (its locks stay held until they expire)

    def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        response = self.http.post(
            f"{self.deployment.url}{path}",
            content=json.dumps(body),
            headers={
                "authorization": f"Bearer {key or self.key}",
                "content-type": "application/json",
            },
        )
        check_response(response, f"{body!r:.200}")
        return response

    def balanced(self) -> None:
        assert self.ledger.reconcile() == []


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def edge(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    node_registry: EngineRegistry,
) -> Iterator[Edge]:
    tmp: Path = tmp_path_factory.mktemp(f"edges-{request.param}")
    with _database(request, tmp) as url:
        servers, deployed = deploy(
            tmp,
            [node_registry],
            database_url=url,
            default_requests_per_minute=UNLIMITED_RATE,
            default_concurrency=UNLIMITED_RATE,
        )
        with servers[0], servers[1]:
            d = deployed.started()
            key, stacks = d.new_user("edger", {CHAT: STACK_UNITS})
            d.new_user("edge-owner", {})
            locker, _ = d.new_user("locker", {CHAT: STACK_UNITS})
            spare = d.admin(
                "POST", "/admin/stacks", json={"user": "edge-owner", "model": CHAT, "units": 1}
            )
            assert spare.status_code == 201, spare.text
            with (
                open_harness(url or f"sqlite+aiosqlite:///{tmp / 'gateway' / 'ledger.db'}") as h,
                httpx.Client(timeout=REQUEST_TIMEOUT) as http,
            ):
                yield Edge(d, h, http, key, stacks, spare.json()["stack_small_id"], locker)


def _database(request: pytest.FixtureRequest, tmp: Path) -> AbstractContextManager[str | None]:
    """None (the gateway's own SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return nullcontext(None)
    return fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))


def refused_naming(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_BODY"
    assert field in error["message"], error["message"]


def in_range(value: int, low: int, high: int) -> bool:
    return low <= value <= high


@EDGE
@given(field=st.sampled_from(["max_num_tokens", "timeout"]), value=edge_ints)
def test_lock_integers(edge: Edge, field: str, value: int) -> None:
    response = edge.post("/v1/nodes/lock", {"model": CHAT, field: value}, key=edge.locker)
    low, high = {"max_num_tokens": (0, MAX_REQUEST_UNITS), "timeout": (1, 3600)}[field]
    if not in_range(value, low, high):
        refused_naming(response, field)
    else:
        assert response.status_code in (200, 402), response.text
    edge.balanced()


@EDGE
@given(field=st.sampled_from(["max_tokens", "max_completion_tokens", "n"]), value=edge_ints)
@example(field="max_tokens", value=2**63 - 1)
@example(field="max_completion_tokens", value=2**64)
def test_plain_chat_integers(edge: Edge, field: str, value: int) -> None:
    """The finding itself: ``max_tokens`` near 2**63 was a 500 from the ledger."""
    body = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    body[field] = value
    response = edge.post("/v1/chat/completions", body)
    low, high = (1, 1) if field == "n" else (1, MAX_REQUEST_UNITS)
    if not in_range(value, low, high):
        refused_naming(response, field)
    else:
        assert response.status_code in (200, 402), response.text
    assert edge.deployment.stack(edge.stacks[CHAT])["reserved_units"] == 0
    edge.balanced()


@EDGE
@given(field=st.sampled_from(["n", "width", "height"]), value=edge_ints)
def test_plain_images_integers(edge: Edge, field: str, value: int) -> None:
    body = {"model": "stand-in-images", "prompt": "a cat", "size": "8x8", field: value}
    response = edge.post("/v1/images/generations", body)
    low, high = (1, 16) if field == "n" else (1, 8192)
    if not in_range(value, low, high):
        refused_naming(response, field)
    else:
        assert response.status_code == 404, response.text  # no image model behind this gateway
    edge.balanced()


@EDGE
@given(field=st.sampled_from(["stack_small_id", "num_compute_units", "timestamp"]), value=edge_ints)
def test_envelope_integers(edge: Edge, field: str, value: int) -> None:
    """No lock is held by this caller: an envelope that parses is refused with 425 (or 404 for a
    stack id that is not the caller's), never claimed."""
    other, _ = _user_without_locks(edge)
    node = edge.deployment.nodes[0]
    envelope, _ = v1.seal_request(
        node.public_key,
        json.dumps(
            {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
        model_name=CHAT,
        stack_small_id=edge.stacks[CHAT],
    )
    document = json.loads(envelope.model_dump_json())
    document[field] = value
    response = edge.post("/v1/confidential/chat/completions", document, key=other)
    if not in_range(value, 0, MAX_ID):
        refused_naming(response, field)
    else:
        assert response.status_code in (404, 425), response.text
    edge.balanced()


_no_locks: dict[int, tuple[str, dict[str, int]]] = {}


def _user_without_locks(edge: Edge) -> tuple[str, dict[str, int]]:
    """One user per deployment that never locks (so nothing of theirs can be claimed)."""
    if id(edge) not in _no_locks:
        _no_locks[id(edge)] = edge.deployment.new_user(f"no-locks-{len(_no_locks)}", {})
    return _no_locks[id(edge)]


@EDGE
@given(
    field=st.sampled_from(["units", "price_per_million", "top-up units", "stack_id"]),
    value=edge_ints,
)
def test_admin_integers(edge: Edge, field: str, value: int) -> None:
    d = edge.deployment
    if field == "stack_id":
        shown = d.admin("GET", f"/admin/stacks/{value}")
        topped = d.admin("POST", f"/admin/stacks/{value}/top-up", json={"units": 1})
        for response in (shown, topped):
            check_response(response)
            if not in_range(value, 0, MAX_ID):
                refused_naming(response, "stack_id")
            else:  # a stack of this deployment, or none
                assert response.status_code in (200, 404), response.text
    elif field == "top-up units":
        response = d.admin(
            "POST", f"/admin/stacks/{edge.spare_stack}/top-up", json={"units": value}
        )
        check_response(response)
        if not in_range(value, 1, MAX_REQUEST_UNITS):
            refused_naming(response, "units")
        else:  # fits, or would pass the 64-bit total: "a stack holds at most ..."
            assert response.status_code in (200, 400), response.text
        total = d.stack(edge.spare_stack)["total_units"]
        assert type(total) is int and 1 <= total <= MAX_ID
    else:
        stack = {"user": "edge-owner", "model": CHAT, "units": 1, field: value}
        response = d.admin("POST", "/admin/stacks", json=stack)
        check_response(response)
        low = 1 if field == "units" else 0
        if not in_range(value, low, MAX_REQUEST_UNITS):
            refused_naming(response, field)
        else:
            assert response.status_code == 201, response.text
    edge.balanced()


def test_max_tokens_at_the_int64_edge_is_400_not_500(edge: Edge) -> None:
    """The finding's example, pinned without hypothesis: 2**63 - 1 and its neighbours."""
    for value in (2**63 - 1, 2**63 - 100, 2**62 + 1):
        body = {"model": CHAT, "max_tokens": value, "messages": [{"role": "user", "content": "x"}]}
        refused_naming(edge.post("/v1/chat/completions", body), "max_tokens")
    body = {"model": CHAT, "max_tokens": 2**62, "messages": [{"role": "user", "content": "x"}]}
    response = edge.post("/v1/chat/completions", body)
    assert response.status_code == 402, response.text  # in range, more than the stack holds
    assert edge.deployment.stack(edge.stacks[CHAT])["reserved_units"] == 0
    edge.balanced()
