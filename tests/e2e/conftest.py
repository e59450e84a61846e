"""Gateway + real nodes on loopback, with the session's real engines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.node.conftest import RunningNode, start_node
from tests.servers import ServerThread
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.hazmat import v1
from veil.node.service import EngineRegistry
from veil.wire.envelopes import RESERVATION_HEADER, ConfidentialComputeRequest

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@dataclass
class Deployment:
    url: str
    admin_key: str
    nodes: list[RunningNode]
    gateway_key: Ed25519PrivateKey
    servers: dict[str, ServerThread] = field(default_factory=dict)
    printed_keys: list[str] = field(default_factory=list)
    gateway_dir: Path | None = None

    def started(self) -> Deployment:
        """Call once the gateway runs: it printed (here: captured) the admin key on first start."""
        assert self.printed_keys, "the gateway did not create an admin key on first start"
        self.admin_key = self.printed_keys[0]
        return self

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}{path}",
            timeout=30,
            headers={"authorization": f"Bearer {self.admin_key}"},
            **kw,
        )

    def new_user(self, name: str, units: dict[str, int]) -> tuple[str, dict[str, int]]:
        response = self.admin("POST", "/admin/users", json={"name": name})
        assert response.status_code == 201, response.text
        key = response.json()["api_key"]
        stacks = {}
        for model, amount in units.items():
            made = self.admin(
                "POST", "/admin/stacks", json={"user": name, "model": model, "units": amount}
            )
            assert made.status_code == 201, made.text
            stacks[model] = made.json()["stack_small_id"]
        return key, stacks

    def stack(self, stack_id: int) -> dict[str, Any]:
        response = self.admin("GET", f"/admin/stacks/{stack_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def lock(self, key: str, model: str, **extra: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/nodes/lock",
            json={"model": model, **extra},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )

    def sealed_request(
        self,
        key: str,
        body: dict[str, Any],
        route: str = "chat/completions",
        lock_extra: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, v1.Session, ConfidentialComputeRequest]:
        locked = self.lock(key, body["model"], **(lock_extra or {}))
        assert locked.status_code == 200, locked.text
        lock = locked.json()
        import base64

        envelope, session = v1.seal_request(
            base64.b64decode(lock["public_key"]),
            json.dumps(body).encode(),
            model_name=body["model"],
            stack_small_id=lock["stack_small_id"],
            num_compute_units=body.get("max_tokens"),
            stream=body.get("stream"),
        )
        response = self.post(key, f"/v1/confidential/{route}", envelope)
        return response, session, envelope

    def post(
        self,
        key: str,
        path: str,
        envelope: ConfidentialComputeRequest,
        reservation_id: str | None = None,
    ) -> httpx.Response:
        """``envelope`` to the gateway; ``reservation_id`` claims that lock's reservation (as
        Veil's client does), else the caller's oldest held one on the stack (as atoma-sdk)."""
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        if reservation_id is not None:
            headers[RESERVATION_HEADER] = reservation_id
        return httpx.post(
            f"{self.url}{path}", content=envelope.model_dump_json(), timeout=120, headers=headers
        )


def deploy(
    tmp: Path,
    registries: list[EngineRegistry],
    database_url: str | None = None,
    **gateway_settings: Any,
) -> tuple[list[ServerThread], Deployment]:
    gateway_key = load_or_create_gateway_key(tmp / "gateway")
    servers: list[ServerThread] = []
    nodes: list[RunningNode] = []
    for i, registry in enumerate(registries):
        server, node = start_node(
            tmp / f"node{i}", registry, gateway_keys=[public_b64(gateway_key)]
        )
        servers.append(server)
        nodes.append(node)
    settings = GatewaySettings(
        data_dir=tmp / "gateway",
        database_url=database_url,
        nodes=[s.url for s in servers],
        expire_interval_seconds=0.2,
        **gateway_settings,
    )
    captured: list[str] = []
    app = create_gateway_app(settings, gateway_key, on_admin_key=captured.append)
    gateway = ServerThread(app)
    servers.append(gateway)
    deployment = Deployment(
        gateway.url, "", nodes, gateway_key, printed_keys=captured, gateway_dir=tmp / "gateway"
    )
    deployment.servers = {"gateway": gateway, **{f"node{i}": s for i, s in enumerate(servers[:-1])}}
    return servers, deployment


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[Deployment]:
    servers, deployed = deploy(tmp_path_factory.mktemp("deploy"), [node_registry])
    with servers[0], servers[1]:
        yield deployed.started()
