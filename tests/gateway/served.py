"""A real gateway app on loopback (uvicorn thread, SQLite ledger) in front of a stand-in node."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.node_stand_in import CHAT, NodeStandIn, serve_stand_in
from tests.servers import ServerThread
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app


@dataclass
class Served:
    url: str
    app: FastAPI
    node: NodeStandIn
    node_url: str
    admin_key: str
    printed: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.call(method, path, self.admin_key, **kw)

    def new_user(self, name: str, units: int = 10_000, **limits: int) -> tuple[str, int]:
        """A user with one stack of ``units`` for the chat model: (API key, stack id)."""
        made = self.admin("POST", "/admin/users", json={"name": name, **limits})
        assert made.status_code == 201, made.text
        stack = self.admin(
            "POST", "/admin/stacks", json={"user": name, "model": CHAT, "units": units}
        )
        assert stack.status_code == 201, stack.text
        return made.json()["api_key"], stack.json()["stack_small_id"]

    def stack(self, stack_id: int) -> dict[str, Any]:
        shown = self.admin("GET", f"/admin/stacks/{stack_id}")
        assert shown.status_code == 200, shown.text
        document: dict[str, Any] = shown.json()
        return document

    def lock(self, key: str, **ask: Any) -> httpx.Response:
        return self.call("POST", "/v1/nodes/lock", key, json={"model": CHAT, **ask})

    def envelope(self, stack_id: int, **fields: Any) -> bytes:
        """An envelope as a client seals it, to the stand-in's key (random ciphertext: the
        gateway never opens it, and neither does the stand-in)."""
        document = {
            "ciphertext": b64(os.urandom(40)),
            "client_dh_public_key": b64(os.urandom(32)),
            "model_name": CHAT,
            "node_dh_public_key": b64(self.node.public_key),
            "nonce": b64(os.urandom(12)),
            "plaintext_body_hash": b64(os.urandom(32)),
            "salt": b64(os.urandom(16)),
            "stack_small_id": stack_id,
            **fields,
        }
        return json.dumps(document).encode()

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the gateway's ``/metrics`` (0 if it has none yet)."""
        text = self.call("GET", "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@contextlib.contextmanager
def serve_gateway(
    data_dir: Path, *, bootstrap_units: int = 0, node: dict[str, Any] | None = None, **settings: Any
) -> Iterator[Served]:
    """A gateway on ``data_dir`` (its ledger and keys) in front of one stand-in node."""
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key, **(node or {})) as (stand_in, node_url):
        config = GatewaySettings(
            data_dir=data_dir, nodes=[node_url], expire_interval_seconds=0.2, **settings
        )
        printed: list[str] = []
        app = create_gateway_app(
            config, key, on_admin_key=printed.append, bootstrap_units=bootstrap_units
        )
        with ServerThread(app) as server:
            yield Served(
                server.url, app, stand_in, node_url, printed[0] if printed else "", printed
            )
