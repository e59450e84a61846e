"""The nodes behind a gateway: what each serves, its public keys, and whether it answers.

The gateway learns a node's X25519 keys and Ed25519 signing key from ``GET /v1/keys`` and its models
from ``GET /v1/models``, refreshed on a timer. A node that fails a connection is marked unhealthy at
once and left out of selection until a refresh reaches it again.

Every refresh also probes that the node requires gateway tickets: it sends a paid request without
one (an empty body to ``/v1/confidential/embeddings``) and expects ``401 AUTH_ERROR``. A node that
answers anything else would serve anyone for free, so it is not routed to; the reason is logged
and shown in the gateway's ``/health``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from dataclasses import dataclass, field

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.wire.errors import NotFound, ServiceUnavailable, StaleNodeKey
from veil.wire.tickets import public_key_from_b64

log = logging.getLogger("veil.gateway.registry")

#: The unticketed paid request of the probe: a node must refuse it before reading the body.
TICKET_PROBE_PATH = "/v1/confidential/embeddings"


class ProbeFailed(Exception):
    """The node failed the ticket probe; the message says how (safe to log)."""


@dataclass
class NodeInfo:
    url: str
    node_small_id: int
    healthy: bool = False
    # Why the node is not routed to (None while healthy): shown in the gateway's /health.
    reason: str | None = "not contacted yet"
    models: dict[str, str] = field(default_factory=dict)  # model id -> kind
    public_keys: dict[str, bytes] = field(default_factory=dict)  # key_id -> X25519 public key
    current_key_id: str | None = None
    signing_key: Ed25519PublicKey | None = None
    signing_public_key: bytes | None = None
    # reservation id -> expiry: reservations held on this node and not yet settled
    holds: dict[str, float] = field(default_factory=dict)

    def outstanding(self, now: float) -> int:
        """Live reservations on this node (expired ones no longer count)."""
        return sum(1 for expires_at in self.holds.values() if expires_at > now)

    @property
    def current_public_key(self) -> bytes:
        if self.current_key_id is None:
            raise ServiceUnavailable("node keys are not known yet")
        return self.public_keys[self.current_key_id]


class NodeRegistry:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.nodes: list[NodeInfo] = []

    def add(self, url: str, node_small_id: int) -> NodeInfo:
        info = NodeInfo(url=url.rstrip("/"), node_small_id=node_small_id)
        self.nodes.append(info)
        return info

    async def refresh(self, node: NodeInfo) -> None:
        try:
            keys = (await self.client.get(f"{node.url}/v1/keys", timeout=5)).json()
            models = (await self.client.get(f"{node.url}/v1/models", timeout=5)).json()
            node.public_keys = {
                k["key_id"]: base64.b64decode(k["public_key"], validate=True) for k in keys["keys"]
            }
            node.current_key_id = keys["keys"][0]["key_id"]
            node.signing_public_key = base64.b64decode(keys["signing_public_key"], validate=True)
            node.signing_key = public_key_from_b64(keys["signing_public_key"])
            node.models = {m["id"]: str(m.get("kind", "chat")) for m in models["data"]}
            await self.probe_tickets(node)
        except ProbeFailed as exc:
            self.mark_unhealthy(node, str(exc))
            return
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
            self.mark_unhealthy(node, "refresh failed")
            return
        if not node.healthy:
            log.info("node %s (%d) is up", node.url, node.node_small_id)
        node.healthy = True
        node.reason = None

    async def probe_tickets(self, node: NodeInfo) -> None:
        """Raise ProbeFailed unless the node refuses a paid request without a ticket (401)."""
        response = await self.client.post(
            f"{node.url}{TICKET_PROBE_PATH}",
            content=b"{}",
            headers={"content-type": "application/json"},
            timeout=5,
        )
        code = None
        try:
            body = response.json()
            code = body["error"]["code"] if isinstance(body, dict) else None
        except (ValueError, KeyError, TypeError):
            code = None
        if response.status_code != 401 or code != "AUTH_ERROR":
            raise ProbeFailed(
                "serves paid requests without a gateway ticket: expected 401 AUTH_ERROR to an "
                f"unticketed POST {TICKET_PROBE_PATH}, got HTTP {response.status_code}"
                + (f" {code}" if isinstance(code, str) and len(code) <= 40 else "")
                + "; start it with --gateway-key (this gateway's key)"
            )

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh(node) for node in self.nodes))

    def mark_unhealthy(self, node: NodeInfo, why: str) -> None:
        if node.healthy or node.reason != why:
            log.warning("node %s (%d) marked unhealthy: %s", node.url, node.node_small_id, why)
        node.healthy = False
        node.reason = why

    def models(self) -> dict[str, str]:
        served: dict[str, str] = {}
        for node in self.nodes:
            if node.healthy:
                served.update(node.models)
        return served

    def kind_of(self, model: str) -> str:
        for node in self.nodes:
            if model in node.models:
                return node.models[model]
        raise NotFound(f"model {model!r} is not served by any node behind this gateway")

    def candidates(self, model: str) -> list[NodeInfo]:
        """Healthy nodes serving ``model``, least outstanding reservations first."""
        self.kind_of(model)  # 404 for a model nobody has ever served
        healthy = [n for n in self.nodes if n.healthy and model in n.models]
        if not healthy:
            raise ServiceUnavailable(f"no healthy node serves {model!r} right now")
        now = time.time()
        return sorted(healthy, key=lambda n: (n.outstanding(now), n.node_small_id))

    def hold(self, node_small_id: int, reservation_id: str, expires_at: float) -> None:
        node = self.by_id(node_small_id)
        now = time.time()
        node.holds = {k: v for k, v in node.holds.items() if v > now}
        node.holds[reservation_id] = expires_at

    def release(self, reservation_id: str) -> None:
        for node in self.nodes:
            node.holds.pop(reservation_id, None)

    def by_public_key(self, public_key: bytes) -> NodeInfo:
        """The node an envelope was sealed to; unknown keys mean the client must lock again."""
        for node in self.nodes:
            for key in node.public_keys.values():
                if hmac.compare_digest(key, public_key):
                    return node
        raise StaleNodeKey(
            "the envelope is sealed to a key no node behind this gateway holds; lock again"
        )

    def by_id(self, node_small_id: int) -> NodeInfo:
        for node in self.nodes:
            if node.node_small_id == node_small_id:
                return node
        raise NotFound("unknown node")
