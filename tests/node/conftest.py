"""A real node (uvicorn on loopback) over the session's real engines."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.servers import ServerThread
from veil.config import NodeSettings
from veil.hazmat import v1
from veil.node.app import create_app
from veil.node.keyring import Keyring
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@dataclass
class RunningNode:
    url: str
    keyring: Keyring
    settings: NodeSettings

    @property
    def public_key(self) -> bytes:
        return self.keyring.current.public_key

    def signing_key(self) -> Ed25519PublicKey:
        keys = httpx.get(f"{self.url}/v1/keys").json()
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(keys["signing_public_key"]))

    def seal(
        self,
        body: dict[str, Any],
        *,
        units: int | None = None,
        stream: bool | None = None,
        node_key: bytes | None = None,
    ) -> tuple[ConfidentialComputeRequest, v1.Session]:
        raw = json.dumps(body, separators=(",", ":")).encode()
        return v1.seal_request(
            node_key or self.public_key,
            raw,
            model_name=body.get("model", CHAT),
            stack_small_id=1,
            num_compute_units=units,
            stream=stream,
        )

    def post(
        self, route: str, envelope: ConfidentialComputeRequest | dict[str, Any] | bytes, **kw: Any
    ) -> httpx.Response:
        if isinstance(envelope, ConfidentialComputeRequest):
            content = envelope.model_dump_json().encode()
        elif isinstance(envelope, dict):
            content = json.dumps(envelope).encode()
        else:
            content = envelope
        return httpx.post(
            f"{self.url}{route}",
            content=content,
            timeout=120,
            headers={"content-type": "application/json"},
            **kw,
        )

    def open(self, session: v1.Session, body: dict[str, Any]) -> dict[str, Any]:
        sealed = ConfidentialComputeResponse.model_validate(body)
        plaintext = v1.open_response(session, sealed)
        assert sealed.signature is not None and sealed.response_hash is not None
        self.signing_key().verify(sealed.signature, sealed.response_hash)
        return json.loads(plaintext)


def start_node(
    data_dir: Path, registry: EngineRegistry, **settings: Any
) -> tuple[ServerThread, RunningNode]:
    # A node without gateway keys serves nobody unless it runs --insecure-no-gateway; tests that
    # talk to a node directly (no gateway) want the latter.
    settings.setdefault("insecure_no_gateway", not settings.get("gateway_keys"))
    node_settings = NodeSettings(data_dir=data_dir, embedded=False, **settings)
    keyring = Keyring(data_dir, node_settings.key_grace_seconds)
    server = ServerThread(create_app(node_settings, registry, keyring, manage_engines=False))
    return server, RunningNode(server.url, keyring, node_settings)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[RunningNode]:
    server, running = start_node(tmp_path_factory.mktemp("node"), node_registry)
    with server:
        yield running
