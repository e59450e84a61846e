"""Gateway (``service.py``): the authentication it reuses for a fraction of a second, and the lock's
node check that runs while the ledger reserves (a node that does not answer holds nothing)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway.node_stand_in import CHAT, serve_stand_in
from tests.servers import free_port
from veil.config import GatewaySettings
from veil.gateway.ledger import Ledger
from veil.gateway.registry import HEALTH_FRESH_SECONDS, Fault, NodeInfo, NodeRegistry
from veil.gateway.service import AUTH_CACHE_SECONDS, Gateway
from veil.wire.errors import AuthError

T = TypeVar("T")
GATEWAY_KEY = Ed25519PrivateKey.generate()


def run(work: Awaitable[T]) -> T:
    async def main() -> T:
        return await work

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    ledger = await Ledger.open(url)
    settings = GatewaySettings(data_dir=tmp_path, database_url=url)
    gw = Gateway(settings, ledger, GATEWAY_KEY, httpx.AsyncClient())
    try:
        yield gw
    finally:
        await gw.aclose()


def test_an_authentication_is_reused_within_its_window_and_a_revocation_wins_after_it(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with gateway(tmp_path) as gw:
            now = [1000.0]
            gw.clock = lambda: now[0]
            user, key = await gw.ledger.create_user("ana")
            assert (await gw.authenticate(key)).id == user.id
            assert await gw.ledger.revoke_api_key(key[:12]) is True
            now[0] += AUTH_CACHE_SECONDS / 2
            assert (await gw.authenticate(key)).id == user.id  # read from the ledger just now
            now[0] += AUTH_CACHE_SECONDS / 2
            with pytest.raises(AuthError, match="revoked"):
                await gw.authenticate(key)
            with pytest.raises(AuthError, match="revoked"):  # a refusal is never kept
                await gw.authenticate(key)

    run(go())


def test_a_refusal_is_not_kept_and_an_operator_change_forgets_every_user(tmp_path: Path) -> None:
    async def go() -> None:
        async with gateway(tmp_path) as gw:
            gw.clock = lambda: 1000.0  # the window never ends by itself here
            _, key = await gw.ledger.create_user("bo", requests_per_minute=5)
            with pytest.raises(AuthError):
                await gw.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))
            assert (await gw.authenticate(key)).requests_per_minute == 5
            await gw.ledger.set_limits("bo", requests_per_minute=9, concurrency=None)
            assert (await gw.authenticate(key)).requests_per_minute == 5  # within the window
            gw.forget_users()  # what the admin route does after a change
            assert (await gw.authenticate(key)).requests_per_minute == 9

    run(go())


def test_a_lock_skips_a_node_that_refuses_connections_and_leaves_nothing_reserved_on_it(
    tmp_path: Path,
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def go(live_url: str) -> None:
        async with gateway(tmp_path) as gw:
            user, _ = await gw.ledger.create_user("cy")
            stack = await gw.ledger.create_stack(user.name, CHAT, 1000)
            dead_id = await gw.ledger.node_small_id(dead_url)
            live_id = await gw.ledger.node_small_id(live_url)
            dead = gw.registry.add(dead_url, dead_id)
            live = gw.registry.add(live_url, live_id)
            await gw.registry.refresh(live)
            # The dead node was healthy at its last refresh, and is asked first (lowest id).
            dead.healthy, dead.reason, dead.models = True, None, dict(live.models)
            node, reservation = await gw.reserve_on_a_node(user, CHAT, 40, 60)
            assert node is live and reservation.node_small_id == live_id
            assert (dead.healthy, dead.reason) == (False, "health check failed")
            assert dead.holds == {} and list(live.holds) == [reservation.id]
            held = await gw.ledger.get_stack(stack.id)
            assert (held.reserved_units, held.used_units) == (40, 0)

    with serve_stand_in(GATEWAY_KEY) as (_, live_url):
        run(go(live_url))


def probed(error: Exception | None, status: int = 200) -> tuple[bool, NodeInfo]:
    def answer(request: httpx.Request) -> httpx.Response:
        if error is not None:
            raise error
        return httpx.Response(status, json={"status": "ok"})

    async def go() -> tuple[bool, NodeInfo]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            registry = NodeRegistry(client)
            node = registry.add("http://node.invalid", 1)
            node.healthy, node.reason = True, None
            return await registry.answers(node), node

    return run(go())


def test_a_busy_node_answering_slowly_is_alive_and_stays_in_rotation() -> None:
    answered, node = probed(httpx.ReadTimeout("slow"))
    assert answered and node.healthy


def test_a_node_whose_connection_fails_is_taken_out_of_rotation() -> None:
    for error in (httpx.ConnectError("refused"), httpx.ConnectTimeout("no route")):
        answered, node = probed(error)
        assert not answered
        assert (node.healthy, node.reason, node.fault) == (
            False,
            "health check failed",
            Fault.UNREACHABLE,
        )


def test_a_node_that_answers_its_health_with_an_error_gets_no_lock_but_is_not_blamed() -> None:
    answered, node = probed(None, status=503)
    assert not answered and node.healthy


def test_a_plain_request_probes_a_node_only_when_it_has_not_answered_well_lately_a_lock_always(
    tmp_path: Path,
) -> None:
    probes: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        probes.append(request.url.path)
        return httpx.Response(200, json={"status": "ok"})

    async def go() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        ledger = await Ledger.open(url)
        settings = GatewaySettings(data_dir=tmp_path, database_url=url)
        client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        gw = Gateway(settings, ledger, GATEWAY_KEY, client)
        try:
            user, _ = await gw.ledger.create_user("di")
            await gw.ledger.create_stack(user.name, CHAT, 1000)
            node_url = "http://node.invalid"
            node = gw.registry.add(node_url, await gw.ledger.node_small_id(node_url))
            node.healthy, node.reason, node.models = True, None, {CHAT: "chat"}
            await gw.reserve_on_a_node(user, CHAT, 10, 60, forwarding_now=True)
            assert probes == ["/health"]  # never heard from: probed
            await gw.reserve_on_a_node(user, CHAT, 10, 60, forwarding_now=True)
            assert probes == ["/health"]  # it answered a moment ago: not again
            node.answered_at -= HEALTH_FRESH_SECONDS
            await gw.reserve_on_a_node(user, CHAT, 10, 60, forwarding_now=True)
            assert len(probes) == 2  # the window passed
            gw.registry.mark_unhealthy(node, "stream broke")
            node.healthy, node.reason = True, None  # a refresh found it back
            await gw.reserve_on_a_node(user, CHAT, 10, 60, forwarding_now=True)
            assert len(probes) == 3  # marked unhealthy since its last answer: probed again
            await gw.reserve_on_a_node(user, CHAT, 10, 60)
            assert len(probes) == 4  # a lock: probed, however lately the node answered
            assert len(node.holds) == 5
        finally:
            await gw.aclose()

    run(go())
