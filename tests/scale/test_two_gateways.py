"""Past one machine: two gateways on one PostgreSQL ledger, three nodes keeping their v3 replay
state in one Redis, and one node in front of a real ``llama_cpp.server``. v1 and v3 requests, chat
(whole and streamed) and embeddings, run through both gateways at once, often locking on one
gateway and sending on the other. Afterwards the books must balance to the unit: each stack was
charged exactly what the signed usage its clients opened says, nothing is left reserved, and
``Ledger.reconcile()`` finds nothing.

::

    4 client threads ──┬── gateway A ──┐   PostgreSQL   ┌── node 1: chat from llama_cpp.server
                       └── gateway B ──┴── (one ledger) ┼── node 2: embedded chat + embeddings
      each gateway signs tickets with its own key;      └── node 3: embedded chat + embeddings
      every node trusts both keys                            (v3 request ids: one Redis)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from benchmarks.confidential import ENDPOINT_OF, Kind, units_of
from sqlalchemy import select

from tests.e2e.conftest import CHAT, EMBED
from tests.engines.test_upstream import start_llama_server
from tests.harness import NodeKeys, SealedRequest, Suite, seal_to
from tests.node.conftest import start_node
from tests.servers import ServerThread, stop_process
from veil.client.streaming import StreamChecker
from veil.config import GatewaySettings, NodeSettings
from veil.engines import EmbeddedModelPaths, make_upstream_engine
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.gateway.ledger import Ledger, Stack
from veil.gateway.ledger.schema import ReservationRow
from veil.node.app import create_app
from veil.node.keyring import Keyring
from veil.node.replay import DEFAULT_REDIS_PREFIX, RedisReplayCache
from veil.node.service import EngineRegistry
from veil.wire.envelopes import RESERVATION_HEADER, ConfidentialComputeRequest
from veil.wire.routes import confidential_path
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt, public_key_from_b64, verify_token

pytestmark = pytest.mark.slow  # real models, a server process, PostgreSQL and Redis

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
WORKERS = 4
PER_WORKER = 12
UNITS = {CHAT: 128, EMBED: 64}  # what every lock holds: prompt + completion fit with room
RECEIPT_PREFIX = RECEIPT_COMMENT.decode()


@dataclass(frozen=True)
class Call:
    """One confidential request of the run: who sends what, locking on one gateway and sending
    through another (often the other one: the reservation lives in the shared ledger)."""

    index: int
    user: int
    suite: Suite
    kind: Kind
    lock_via: int
    send_via: int

    @property
    def model(self) -> str:
        return EMBED if self.kind == "embeddings" else CHAT

    @property
    def path(self) -> str:
        return confidential_path(ENDPOINT_OF[self.kind])

    def body(self) -> dict[str, Any]:
        if self.kind == "embeddings":
            return {"model": EMBED, "input": f"private note number {self.index}"}
        words = [{"role": "user", "content": f"Count to three, attempt {self.index}."}]
        if self.kind == "stream":
            return {"model": CHAT, "messages": words, "max_tokens": 6, "stream": True}
        return {"model": CHAT, "messages": words, "max_tokens": 4, "temperature": 0}


def plan() -> list[Call]:
    """Every kind x suite x (lock gateway, send gateway) combination, 48 calls in all."""
    kinds: tuple[Kind, ...] = ("chat", "embeddings", "stream")
    return [
        Call(
            index=i,
            user=i % 2,
            suite="atoma-v1" if (i // 3) % 2 == 0 else "veil-v3",
            kind=kinds[i % 3],
            lock_via=i % 2,
            send_via=(i // 2) % 2,
        )
        for i in range(WORKERS * PER_WORKER)
    ]


@dataclass(frozen=True)
class Outcome:
    call: Call
    stack_id: int
    node_key: bytes  # the X25519 key the lock named: which node served
    units: int  # from the opened, signature-checked usage
    envelope: ConfidentialComputeRequest


def signed_units(sealed: SealedRequest, kind: Kind) -> int:
    """The units the signed usage says (the client's opener checked the clear usage against
    the sealed one)."""
    units = units_of(sealed, kind)
    assert sealed.usage is not None and units > 0
    if kind != "embeddings":
        assert units == sealed.usage.prompt_tokens + sealed.usage.completion_tokens
    return units


def read_stream(response: httpx.Response, sealed: SealedRequest, call: Call, signer: Any) -> int:
    """Open every chunk in order; the final one's usage must match the node's signed receipt."""
    checker = StreamChecker(sealed.opener)
    last: dict[str, Any] | None = None
    receipt: UsageReceipt | None = None
    for line in response.iter_lines():
        if line.startswith(RECEIPT_PREFIX):
            token = line[len(RECEIPT_PREFIX) :]
            receipt = verify_token(token, UsageReceipt, [signer])
        elif line.startswith("data: "):
            opened = checker.event(line[len("data: ") :])
            if opened is not None:
                last = opened[1]
    assert checker.final, "the stream ended without its final chunk"
    assert last is not None and last["choices"] == []
    assert checker.done == (call.suite == "veil-v3"), "[DONE] goes to v3 clients only"
    units = signed_units(sealed, call.kind)
    assert receipt is not None and receipt.final and receipt.compute_units == units
    return units


def run(call: Call, http: httpx.Client, gateways: list[str], api_keys: list[str]) -> Outcome:
    auth = {"authorization": f"Bearer {api_keys[call.user]}"}
    locked = http.post(
        f"{gateways[call.lock_via]}/v1/nodes/lock",
        json={"model": call.model, "max_num_tokens": UNITS[call.model]},
        headers=auth,
    )
    assert locked.status_code == 200, locked.text
    lock = locked.json()
    keys = NodeKeys.from_lock(lock)
    v3 = call.suite == "veil-v3"
    # veil-v3 authenticates its units and is bound to the lock's reservation, which it claims by
    # name (X-Veil-Reservation); atoma-v1 leaves the units to the lock and knows no handle.
    sealed = seal_to(
        keys, call.body(), suite=call.suite, endpoint=ENDPOINT_OF[call.kind],
        stack_small_id=lock["stack_small_id"], units=UNITS[call.model] if v3 else None,
        reservation_id=lock["reservation_id"] if v3 else None,
    )  # fmt: skip
    envelope = ConfidentialComputeRequest.model_validate_json(sealed.content)
    if v3:  # sealed to the post-quantum key; the gateway routes on its X25519 part
        assert keys.kem_public_key is not None and envelope.kem == "mlkem768-x25519"
        assert envelope.node_dh_public_key == keys.kem_public_key[-32:]
    url = f"{gateways[call.send_via]}{call.path}"
    headers = {**auth, "content-type": "application/json"}
    if v3:
        headers[RESERVATION_HEADER] = lock["reservation_id"]
    if call.kind == "stream":
        with http.stream("POST", url, content=sealed.content, headers=headers) as response:
            assert response.status_code == 200, response.read()
            signer = public_key_from_b64(lock["node_signing_public_key"])
            units = read_stream(response, sealed, call, signer)
    else:
        response = http.post(url, content=sealed.content, headers=headers)
        assert response.status_code == 200, response.text
        sealed.open(response.content)
        units = signed_units(sealed, call.kind)
    return Outcome(call, lock["stack_small_id"], keys.public_key, units, envelope)


# -- the deployment ------------------------------------------------------------------------------


@dataclass
class Cluster:
    gateways: list[str]
    admin_keys: list[list[str]]  # what each gateway printed, in start order
    node_keys: list[bytes]  # node i's X25519 public key
    database_url: str

    def admin(self, gateway: int, method: str, path: str, **kw: Any) -> httpx.Response:
        (key,) = self.admin_keys[0]
        return httpx.request(
            method,
            f"{self.gateways[gateway]}{path}",
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
            **kw,
        )

    def new_user(self, name: str) -> str:
        made = self.admin(0, "POST", "/admin/users", json={"name": name})
        assert made.status_code == 201, made.text
        for model in (CHAT, EMBED):
            stack = self.admin(
                0, "POST", "/admin/stacks", json={"user": name, "model": model, "units": 100_000}
            )
            assert stack.status_code == 201, stack.text
        return str(made.json()["api_key"])


def upstream_node(data_dir: Path, chat_url: str, gateway_keys: list[str]) -> ServerThread:
    """A node whose chat model is served by the upstream server; the node starts and closes the
    upstream engine in its own event loop (``manage_engines``)."""
    registry = EngineRegistry()
    registry.add(make_upstream_engine("chat", CHAT, chat_url, upstream_model="smollm2-upstream"))
    settings = NodeSettings(
        data_dir=data_dir, embedded=False, gateway_keys=gateway_keys, replay_cache=REDIS_URL
    )
    keyring = Keyring(data_dir, settings.key_grace_seconds)
    return ServerThread(create_app(settings, registry, keyring))


@pytest.fixture
def redis_reachable() -> None:
    """Skip (fail under CI, like PostgreSQL) without the Redis the nodes share."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")


@pytest.fixture
def cluster(
    redis_reachable: None,
    tmp_path: Path,
    postgres_url: str,
    embedded_models: EmbeddedModelPaths,
    node_registry: EngineRegistry,
) -> Iterator[Cluster]:
    gateway_keys = [load_or_create_gateway_key(tmp_path / f"gateway-{g}") for g in "ab"]
    trusted = [public_b64(key) for key in gateway_keys]
    with ExitStack() as running:
        process, chat_url = start_llama_server(embedded_models.chat_gguf, tmp_path / "llama.log")
        running.callback(stop_process, process)
        nodes = [upstream_node(tmp_path / "node-1", chat_url, trusted)]
        node_keys = [Keyring(tmp_path / "node-1", 600).current.public_key]
        for i in (2, 3):
            server, node = start_node(
                tmp_path / f"node-{i}", node_registry, gateway_keys=trusted, replay_cache=REDIS_URL
            )
            nodes.append(server)
            node_keys.append(node.public_key)
        for server in nodes:
            running.enter_context(server)
        printed: list[list[str]] = [[], []]
        gateways = []
        for g, key in enumerate(gateway_keys):  # one after the other: A creates the admin key
            settings = GatewaySettings(
                data_dir=tmp_path / f"gateway-{'ab'[g]}",
                database_url=postgres_url,
                nodes=[server.url for server in nodes],
                expire_interval_seconds=0.5,
            )
            app = create_gateway_app(settings, key, on_admin_key=printed[g].append)
            gateways.append(running.enter_context(ServerThread(app)).url)
        yield Cluster(gateways, printed, node_keys, postgres_url)


# -- the books -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    stacks: list[Stack]
    settled: dict[int, int]  # stack id -> sum of charged units of its settled reservations
    states: Counter[str]
    problems: list[str]


async def read_books(database_url: str, timeout: float = 30.0) -> Books:
    """The ledger once nothing is reserved any more (streams settle just after their last byte),
    waiting at most ``timeout`` seconds for that."""
    ledger = await Ledger.open(database_url)
    try:
        deadline = time.monotonic() + timeout
        stacks = await ledger.list_stacks()
        while any(s.reserved_units for s in stacks) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            stacks = await ledger.list_stacks()
        R = ReservationRow
        async with ledger.engine.connect() as conn:
            rows = (await conn.execute(select(R.stack_id, R.state, R.charged_units))).all()
        settled: Counter[int] = Counter()
        for stack_id, state, charged in rows:
            if state == "settled":
                settled[stack_id] += int(charged or 0)
        states = Counter(state for _, state, _ in rows)
        return Books(stacks, dict(settled), states, await ledger.reconcile())
    finally:
        await ledger.close()


# -- the test ------------------------------------------------------------------------------------


def test_two_gateways_three_nodes_one_ledger_balance_to_the_unit(cluster: Cluster) -> None:
    started = time.monotonic()
    # Only the first gateway to start on an empty database creates (and prints) an admin key;
    # the second finds one and prints none, yet the key works on both.
    assert [len(keys) for keys in cluster.admin_keys] == [1, 0]
    assert cluster.admin(1, "GET", "/admin/stacks").status_code == 200

    api_keys = [cluster.new_user("ada"), cluster.new_user("grace")]
    calls = plan()
    limits = httpx.Limits(max_connections=WORKERS * 2, max_keepalive_connections=WORKERS * 2)
    with (
        httpx.Client(timeout=120, limits=limits) as http,
        ThreadPoolExecutor(max_workers=WORKERS) as pool,
    ):
        outcomes = list(pool.map(lambda c: run(c, http, cluster.gateways, api_keys), calls))

        # A v3 envelope replayed through the other gateway, on a fresh lock: the node that
        # served it remembers its request id in Redis and refuses it (before it compares the
        # reservation the envelope is bound to); nothing is charged.
        first = next(
            o for o in outcomes if o.call.suite == "veil-v3" and o.call.kind == "embeddings"
        )
        other = cluster.gateways[1 - first.call.send_via]
        auth = {"authorization": f"Bearer {api_keys[first.call.user]}"}
        lock = http.post(f"{other}/v1/nodes/lock", json={"model": EMBED}, headers=auth)
        assert lock.status_code == 200 and lock.json()["stack_small_id"] == first.stack_id
        replayed = http.post(
            f"{other}{first.call.path}", content=first.envelope.model_dump_json(), headers=auth
        )
        assert replayed.status_code == 409, replayed.text
        assert replayed.json()["error"]["code"] == "REPLAYED"

    # Every node served, the upstream one included (it wins ties: it was listed first).
    served = Counter(cluster.node_keys.index(o.node_key) for o in outcomes)
    chat_on_upstream = [o for o in outcomes if o.node_key == cluster.node_keys[0]]
    assert set(served) == {0, 1, 2}, served
    assert {o.call.kind for o in chat_on_upstream} <= {"chat", "stream"} and chat_on_upstream

    # Every v3 request id is remembered in the shared Redis, in its tenant's (stack's) space.
    layout = RedisReplayCache(REDIS_URL, DEFAULT_REDIS_PREFIX)
    with redis.Redis.from_url(REDIS_URL) as replay:
        for o in outcomes:
            if o.call.suite == "veil-v3":
                assert o.envelope.request_id is not None
                assert replay.exists(layout.key(o.envelope.request_id, o.stack_id))

    books = asyncio.run(read_books(cluster.database_url))
    seen: Counter[int] = Counter()
    for o in outcomes:
        seen[o.stack_id] += o.units
    assert len(books.stacks) == 4
    for stack in books.stacks:
        assert stack.reserved_units == 0, stack
        assert stack.used_units == books.settled.get(stack.id, 0) == seen[stack.id] > 0, stack
    assert books.states == Counter(settled=len(calls), released=1), books.states
    assert books.problems == []
    assert time.monotonic() - started < 90
