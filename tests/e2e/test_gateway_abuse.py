"""The gateway facing a node that misbehaves, a node that is gone, and callers racing for the last
units of a stack, over HTTP.

The misbehaving node is the real node behind a *tampering proxy* (a test stand-in for a broken or
hostile node build, which the real node cannot be made into): the proxy relays everything to the
node, then replaces the answer of a confidential request with what no Veil node sends. The caller
must get a 502 ``ENGINE_ERROR`` (not the garbage, not a 500), and the stack must be left exactly as
it was before the lock.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from tests.e2e.conftest import EMBED, Deployment, deploy
from tests.node.conftest import start_node
from tests.servers import ServerThread, wait_until
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.hazmat import v1
from veil.node.service import EngineRegistry
from veil.wire.tickets import RECEIPT_HEADER, TICKET_HEADER

# What the proxy answers instead of the node: (status, content type, body, keep the receipt?)
GARBAGE: dict[str, tuple[int, str, bytes, bool]] = {
    "not json, with the receipt": (200, "application/json", b"\x00\xffnot json", True),
    "json, receipt dropped": (200, "application/json", b'{"ciphertext":"AAAA"}', False),
    "a json list, with the receipt": (200, "application/json", b"[1,2,3]", True),
    "html error page": (500, "text/html", b"<html>Internal Server Error</html>", False),
    "error without the error shape": (503, "application/json", b'{"detail":"busy"}', False),
}


@dataclass
class TamperingProxy:
    """Relays to the real node; ``mode`` (a GARBAGE key or None) rewrites confidential answers."""

    node_url: str
    mode: str | None = None

    def app(self) -> FastAPI:
        app = FastAPI()
        client = httpx.AsyncClient(timeout=120)

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def relay(path: str, request: Request) -> Response:
            upstream = await client.request(
                request.method,
                f"{self.node_url}/{path}",
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            )
            headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in {"content-length", "content-encoding", "transfer-encoding"}
            }
            ticketed = TICKET_HEADER.lower() in {k.lower() for k in request.headers}
            if self.mode is None or not path.startswith("v1/confidential/") or not ticketed:
                # The gateway's unticketed probe (does the node demand tickets?) passes through:
                # this node is broken only for the paid requests it serves.
                return Response(upstream.content, upstream.status_code, headers=headers)
            status, media_type, body, keep_receipt = GARBAGE[self.mode]
            forged = {RECEIPT_HEADER: headers[RECEIPT_HEADER]} if keep_receipt else {}
            return Response(body, status, media_type=media_type, headers=forged)

        return app


@pytest.fixture(scope="module")
def behind_proxy(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[tuple[Deployment, TamperingProxy]]:
    tmp: Path = tmp_path_factory.mktemp("abuse")
    gateway_key = load_or_create_gateway_key(tmp / "gateway")
    node_server, node = start_node(
        tmp / "node", node_registry, gateway_keys=[public_b64(gateway_key)]
    )
    with node_server:
        proxy = TamperingProxy(node_server.url)
        with ServerThread(proxy.app()) as proxy_server:
            captured: list[str] = []
            settings = GatewaySettings(
                data_dir=tmp / "gateway", nodes=[proxy_server.url], expire_interval_seconds=0.2
            )
            app = create_gateway_app(settings, gateway_key, on_admin_key=captured.append)
            with ServerThread(app) as gateway:
                deployment = Deployment(gateway.url, "", [node], gateway_key, printed_keys=captured)
                yield deployment.started(), proxy


def embeddings_envelope(lock: dict[str, Any], text: str = "a sentence") -> str:
    envelope, _ = v1.seal_request(
        base64.b64decode(lock["public_key"]),
        json.dumps({"model": EMBED, "input": text}).encode(),
        model_name=EMBED,
        stack_small_id=lock["stack_small_id"],
    )
    return envelope.model_dump_json()


@pytest.mark.parametrize("mode", list(GARBAGE))
def test_a_node_answering_garbage_is_502_and_charges_nothing(
    behind_proxy: tuple[Deployment, TamperingProxy], mode: str
) -> None:
    deployment, proxy = behind_proxy
    key, stacks = deployment.new_user(f"garbage-{len(mode)}-{mode[:4]}", {EMBED: 10_000})
    lock = deployment.lock(key, EMBED, max_num_tokens=200)
    assert lock.status_code == 200, lock.text
    proxy.mode = mode
    try:
        response = httpx.post(
            f"{deployment.url}/v1/confidential/embeddings",
            content=embeddings_envelope(lock.json()),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=60,
        )
    finally:
        proxy.mode = None
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "ENGINE_ERROR"
    assert "nothing was charged" in error["message"]
    stack = deployment.stack(stacks[EMBED])
    assert (stack["reserved_units"], stack["used_units"]) == (0, 0)

    # The same caller, the same node, an honest answer: charged as usual.
    lock = deployment.lock(key, EMBED, max_num_tokens=200)
    honest = httpx.post(
        f"{deployment.url}/v1/confidential/embeddings",
        content=embeddings_envelope(lock.json()),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=60,
    )
    assert honest.status_code == 200, honest.text
    assert honest.json()["usage"]["total_tokens"] > 0
    stack = deployment.stack(stacks[EMBED])
    assert stack["reserved_units"] == 0
    assert stack["used_units"] == honest.json()["usage"]["total_tokens"]


def test_concurrent_locks_racing_for_the_last_units_exactly_the_affordable_ones_win(
    behind_proxy: tuple[Deployment, TamperingProxy],
) -> None:
    deployment, _ = behind_proxy
    key, stacks = deployment.new_user("racers", {EMBED: 1000})
    results: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def race() -> None:
        start.wait(timeout=30)
        response = deployment.lock(key, EMBED, max_num_tokens=300)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 3 + [402] * 5, [r.text for r in results]
    assert {r.json()["error"]["code"] for r in results if r.status_code == 402} == {"BALANCE_ERROR"}
    stack = deployment.stack(stacks[EMBED])
    assert (stack["reserved_units"], stack["used_units"]) == (900, 0)

    # Each winner's request is served and settled; then the stack is whole again but for usage.
    charged = 0
    for won in (r.json() for r in results if r.status_code == 200):
        response = httpx.post(
            f"{deployment.url}/v1/confidential/embeddings",
            content=embeddings_envelope(won),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        charged += response.json()["usage"]["total_tokens"]
    stack = deployment.stack(stacks[EMBED])
    assert (stack["reserved_units"], stack["used_units"]) == (0, charged)


def test_lock_with_no_healthy_node_is_503_and_reserves_nothing(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    (node_server, gateway), deployed = deploy(tmp_path, [node_registry])
    with node_server, gateway:
        deployment = deployed.started()
        wait_until(lambda: serves(deployment, EMBED), 20, "the gateway to learn the node's models")
        key, stacks = deployment.new_user("orphan", {EMBED: 5000})
        assert deployment.lock(key, EMBED, max_num_tokens=10).status_code == 200
        node_server.__exit__(None, None, None)  # the node goes away
        # The first lock finds it dead on its health check; the next already knows it is down.
        for _ in range(2):
            response = deployment.lock(key, EMBED, max_num_tokens=100)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        stack = deployment.stack(stacks[EMBED])
        assert (stack["reserved_units"], stack["used_units"]) == (10, 0)  # the live lock only


def serves(deployment: Deployment, model: str) -> bool:
    models = httpx.get(f"{deployment.url}/v1/models", timeout=5).json()["data"]
    return any(m["id"] == model for m in models)
