"""The nodes behind a gateway: what each serves, its public keys, and whether it answers.

The gateway learns a node's X25519 keys, its veil-v3 post-quantum keys (ML-KEM-768 + X25519) and its
Ed25519 signing key from ``GET /v1/keys`` and its models
from ``GET /v1/models``, refreshed on a timer. A node that fails a connection is marked unhealthy at
once and left out of selection until a refresh reaches it again.

Every refresh also probes that the node requires gateway tickets: it sends a paid request without
one (an empty body to ``/v1/confidential/embeddings``) and expects ``401 AUTH_ERROR``. A node that
answers anything else would serve anyone for free, so it is not routed to; the reason is logged
and shown in the gateway's ``/health``.

Every refresh then checks the node's attestation evidence under the operator's policy
(``node_attestation``; the gateway always passes one, a bare registry checks none): a node whose
evidence stops verifying leaves rotation until it verifies again.

The list of nodes is the ledger's (``ledger/nodes.py``): :meth:`NodeRegistry.sync` brings it in
(new nodes, drained ones, removed ones) on every maintenance round. Only ``active`` healthy nodes
get new locks; a ``draining`` one stays known, so the requests sealed to it still reach it.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.gateway.ledger import NodeRecord, NodeState
from veil.gateway.node_attestation import NodeAttestation, NodeVerdict
from veil.wire.errors import NotFound, ServiceUnavailable, StaleNodeKey
from veil.wire.tickets import public_key_from_b64

log = logging.getLogger("veil.gateway.registry")

#: The post-quantum KEM whose keys the gateway puts in locks (``/v1/keys`` entries' ``kem``).
HYBRID_KEM = "mlkem768-x25519"

#: The unticketed paid request of the probe: a node must refuse it before reading the body.
TICKET_PROBE_PATH = "/v1/confidential/embeddings"

#: How long a lock waits for a node's ``/health``; a slower answer counts as a busy node.
HEALTH_PROBE_SECONDS = 1.0
#: A node that answered well this recently is not probed again before a plain request is sent
#: to it: its ``/health`` asks every engine (an upstream's own health endpoint), which cost more
#: than the ledger. A node that dies inside the window is found by the request itself (503,
#: nothing charged, the node marked unhealthy at once). Locks always probe.
HEALTH_FRESH_SECONDS = 1.0


class ProbeFailed(Exception):
    """The node failed the ticket probe; the message says how (safe to log)."""


class Fault(StrEnum):
    """Why the last refresh left a node out (with ``NodeInfo.reason`` saying it in words)."""

    UNREACHABLE = "unreachable"
    TICKETS = "tickets"
    ATTESTATION = "attestation"


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
    # veil-v3: kem_key_id -> ML-KEM-768 + X25519 public key, for the generations that have one
    kem_public_keys: dict[str, bytes] = field(default_factory=dict)
    current_kem_key_id: str | None = None
    signing_key: Ed25519PublicKey | None = None
    signing_public_key: bytes | None = None
    # reservation id -> expiry: reservations held on this node and not yet settled
    holds: dict[str, float] = field(default_factory=dict)
    state: NodeState = NodeState.ACTIVE
    fault: Fault | None = None
    attestation: NodeVerdict | None = None  # the gateway's own last check (None: not checked)
    # time.monotonic() of its last good answer (a 200 health probe, a forwarded request answered
    # below 500); 0.0: none since it was last marked unhealthy
    answered_at: float = 0.0

    @property
    def routed(self) -> bool:
        """Whether new locks may go to it: healthy, and not drained by the operator."""
        return self.healthy and self.state is NodeState.ACTIVE

    def outstanding(self, now: float) -> int:
        """Live reservations on this node (expired ones no longer count)."""
        return sum(1 for expires_at in self.holds.values() if expires_at > now)

    @property
    def current_public_key(self) -> bytes:
        if self.current_key_id is None:
            raise ServiceUnavailable("node keys are not known yet")
        return self.public_keys[self.current_key_id]

    @property
    def current_kem_public_key(self) -> bytes | None:
        """The current post-quantum key (None: the node publishes none)."""
        if self.current_kem_key_id is None:
            return None
        return self.kem_public_keys[self.current_kem_key_id]

    def holds_key(self, x25519_public_key: bytes) -> bool:
        """Whether an envelope's ``node_dh_public_key`` names one of this node's keys: an X25519
        key (v1, v3's classical KEM) or the X25519 part (the last 32 bytes) of a v3 hybrid
        key."""
        keys = [*self.public_keys.values()]
        keys += [key[-len(x25519_public_key) :] for key in self.kem_public_keys.values()]
        return any(hmac.compare_digest(key, x25519_public_key) for key in keys)


class NodeRegistry:
    def __init__(
        self, client: httpx.AsyncClient, attestation: NodeAttestation | None = None
    ) -> None:
        self.client = client
        self.attestation = attestation
        self.nodes: list[NodeInfo] = []

    def add(self, url: str, node_small_id: int, state: NodeState = NodeState.ACTIVE) -> NodeInfo:
        info = NodeInfo(url=url.rstrip("/"), node_small_id=node_small_id, state=state)
        self.nodes.append(info)
        return info

    def sync(self, records: Iterable[NodeRecord]) -> list[NodeInfo]:
        """Make the nodes the ledger's list: new ones added (returned, to be refreshed), states
        taken over, removed ones dropped. A dropped node's requests in flight carry on: the
        forwarder holds its ``NodeInfo``."""
        listed = {r.id: r for r in records if r.routed}
        known = {n.node_small_id: n for n in self.nodes}
        new = []
        for record in listed.values():
            node = known.get(record.id)
            if node is None:
                new.append(self.add(record.url, record.id, record.state))
            elif node.state is not record.state:
                log.info("node %s (%d) is now %s", node.url, node.node_small_id, record.state)
                node.state = record.state
        # A new list object: a refresh_all() iterating the old one is not disturbed.
        self.nodes = [n for n in self.nodes if n.node_small_id in listed]
        return new

    def adopt(self, record: NodeRecord, checked: NodeInfo) -> NodeInfo:
        """Take in a node just checked (``veil nodes add``) under its new ledger id."""
        checked.node_small_id = record.id
        checked.state = record.state
        self.nodes = [n for n in self.nodes if n.node_small_id != record.id] + [checked]
        return checked

    def drop(self, node_small_id: int) -> None:
        self.nodes = [n for n in self.nodes if n.node_small_id != node_small_id]

    async def refresh(self, node: NodeInfo) -> None:
        try:
            keys = (await self.client.get(f"{node.url}/v1/keys", timeout=5)).json()
            models = (await self.client.get(f"{node.url}/v1/models", timeout=5)).json()
            node.public_keys = {
                k["key_id"]: base64.b64decode(k["public_key"], validate=True) for k in keys["keys"]
            }
            node.current_key_id = keys["keys"][0]["key_id"]
            node.kem_public_keys = {
                k["kem_key_id"]: base64.b64decode(k["kem_public_key"], validate=True)
                for k in keys["keys"]
                if k.get("kem") == HYBRID_KEM and "kem_public_key" in k
            }
            node.current_kem_key_id = keys["keys"][0].get("kem_key_id")
            if node.current_kem_key_id not in node.kem_public_keys:
                node.current_kem_key_id = None
            node.signing_public_key = base64.b64decode(keys["signing_public_key"], validate=True)
            node.signing_key = public_key_from_b64(keys["signing_public_key"])
            node.models = {m["id"]: str(m.get("kind", "chat")) for m in models["data"]}
            await self.probe_tickets(node)
        except ProbeFailed as exc:
            self.mark_unhealthy(node, str(exc), Fault.TICKETS)
            return
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
            self.mark_unhealthy(node, "refresh failed", Fault.UNREACHABLE)
            return
        if self.attestation is not None:
            verdict = await self.attestation.check(
                self.client,
                node.url,
                node.current_public_key,
                node.signing_public_key,
                kem_public_key=node.current_kem_public_key,
            )
            node.attestation = verdict
            if not verdict.ok:
                self.mark_unhealthy(
                    node, f"attestation did not verify: {verdict.detail}", Fault.ATTESTATION
                )
                return
        node.fault = None
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

    def answered(self, node: NodeInfo) -> None:
        """The node just answered well (a request forwarded to it, or its health probe)."""
        node.answered_at = time.monotonic()

    def answered_lately(self, node: NodeInfo) -> bool:
        """Whether the node answered well within ``HEALTH_FRESH_SECONDS`` (and is still healthy):
        then a plain request, forwarded at once, needs no probe."""
        return node.healthy and time.monotonic() - node.answered_at < HEALTH_FRESH_SECONDS

    async def answers(self, node: NodeInfo) -> bool:
        """Whether the node answers its ``/health`` now (the check a lock makes). Only a
        connection that fails takes it out of rotation; a slow answer (a saturated node) counts
        as alive and is no fault: the forward judges it (``Forwarder._blame``)."""
        try:
            response = await self.client.get(f"{node.url}/health", timeout=HEALTH_PROBE_SECONDS)
        except httpx.TimeoutException as exc:
            if not isinstance(exc, httpx.ConnectTimeout):
                return True  # busy, not gone
            self.mark_unhealthy(node, "health check failed")
            return False
        except httpx.HTTPError:
            self.mark_unhealthy(node, "health check failed")
            return False
        if response.status_code != 200:
            return False
        self.answered(node)
        return True

    def mark_unhealthy(self, node: NodeInfo, why: str, fault: Fault = Fault.UNREACHABLE) -> None:
        if node.healthy or node.reason != why:
            log.warning("node %s (%d) marked unhealthy: %s", node.url, node.node_small_id, why)
        node.healthy = False
        node.reason = why
        node.fault = fault
        node.answered_at = 0.0

    def models(self) -> dict[str, str]:
        """What the nodes taking new locks serve."""
        served: dict[str, str] = {}
        for node in self.nodes:
            if node.routed:
                served.update(node.models)
        return served

    def kind_of(self, model: str) -> str:
        for node in self.nodes:
            if model in node.models:
                return node.models[model]
        raise NotFound(f"model {model!r} is not served by any node behind this gateway")

    def candidates(self, model: str) -> list[NodeInfo]:
        """Healthy active nodes serving ``model``, least outstanding reservations first."""
        self.kind_of(model)  # 404 for a model nobody has ever served
        healthy = [n for n in self.nodes if n.routed and model in n.models]
        if not healthy:
            if any(n.healthy and model in n.models for n in self.nodes):
                raise ServiceUnavailable(
                    f"every node serving {model!r} is draining: no new locks right now"
                )
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
        """The node an envelope was sealed to (by its ``node_dh_public_key``: an X25519 key, or the
        X25519 part of a v3 hybrid key); unknown keys mean the client must lock again."""
        for node in self.nodes:
            if node.holds_key(public_key):
                return node
        raise StaleNodeKey(
            "the envelope is sealed to a key no node behind this gateway holds; lock again"
        )

    def by_id(self, node_small_id: int) -> NodeInfo:
        for node in self.nodes:
            if node.node_small_id == node_small_id:
                return node
        raise NotFound("unknown node")
