"""The gateway's one state object (``app.state.gateway``): what the routers call.

It holds the ledger, the node registry, the forwarder, the rate limiter and the metrics, and does
the work of each paid surface: lock (reserve on a node, relay its evidence), forward a sealed
envelope, forward a plain OpenAI request. The routers in ``veil.gateway.routes`` only parse the
HTTP request and call one method here.

Nothing here can decrypt: an envelope is a validated set of base64 fields whose bytes go to the
node untouched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Response

from veil.config import GatewaySettings
from veil.gateway.forward import Forwarder, new_request_id
from veil.gateway.ledger import Ledger, NodeRecord, Reservation, User, node_url
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.node_attestation import NodeAttestation
from veil.gateway.ratelimit import Limits, make_limiter
from veil.gateway.recovery import recover_orphans
from veil.gateway.registry import HYBRID_KEM, Fault, NodeInfo, NodeRegistry
from veil.web import parse_json_object, parse_model
from veil.wire.envelopes import (
    ConfidentialComputeRequest,
    NodesCreateLockRequest,
    NodesCreateLockResponse,
)
from veil.wire.errors import (
    Conflict,
    InvalidBody,
    NotFound,
    ServiceUnavailable,
    StaleNodeKey,
)
from veil.wire.openai import (
    ChatCompletionRequest,
    EmbeddingRequest,
    ImageGenerationRequest,
    chat_reservation,
)
from veil.wire.routes import ROUTES, Endpoint

__all__ = ["Gateway"]

log = logging.getLogger("veil.gateway")

#: How long a successful authentication is reused: a revoked key is refused within this (plus
#: one ledger read) on every gateway, well inside the promised second.
AUTH_CACHE_SECONDS = 0.25
AUTH_CACHE_ENTRIES = 10_000


class Gateway:
    """One running gateway: its settings, ledger, nodes, forwarder, limiter and metrics."""

    def __init__(
        self,
        settings: GatewaySettings,
        ledger: Ledger,
        key: Ed25519PrivateKey,
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.key = key
        self.client = client
        self.metrics = GatewayMetrics()
        self.registry = NodeRegistry(client, NodeAttestation.from_settings(settings))
        self.forwarder = Forwarder(
            client, ledger, self.registry, key, self.metrics, settings.node_timeout_seconds
        )
        # A slot outlives the longest non-streamed request; a live stream keeps extending it.
        # SHA-256 of an API key -> (monotonic time it was read from the ledger, its user)
        self._authenticated: dict[bytes, tuple[float, User]] = {}
        self.clock = time.monotonic  # tests move it
        self.limiter = make_limiter(
            settings.redis_url,
            slot_ttl=settings.node_timeout_seconds + 60.0,
            prefix=settings.rate_limit_prefix,
        )

    async def aclose(self) -> None:
        """At shutdown: stop the forwarder's background work, then close what it used."""
        await self.forwarder.aclose()
        await self.client.aclose()
        await self.limiter.close()
        await self.ledger.close()

    # -- authentication --------------------------------------------------------------------
    async def authenticate(self, api_key: str) -> User:
        """The key's user, as the ledger said at most ``AUTH_CACHE_SECONDS`` ago (a lock and the
        request that follows it read the ledger once). Only successes are kept; a refusal, and
        anything past the window, asks the ledger again."""
        digest = hashlib.sha256(api_key.encode()).digest()
        now = self.clock()
        known = self._authenticated.get(digest)
        if known is not None and now - known[0] < AUTH_CACHE_SECONDS:
            return known[1]
        try:
            with self.metrics.ledger_latency.labels("authenticate").time():
                user = await self.ledger.authenticate(api_key)
        except BaseException:
            self._authenticated.pop(digest, None)
            raise
        if len(self._authenticated) >= AUTH_CACHE_ENTRIES:
            self._authenticated.clear()
        self._authenticated[digest] = (now, user)  # read at ``now`` or later: never too young
        return user

    def forget_users(self) -> None:
        """An operator changed a user here (limits): the next request of any key reads the
        ledger."""
        self._authenticated.clear()

    # -- rate limits -----------------------------------------------------------------------
    def limits(self, user: User) -> Limits:
        """The limits in force for ``user``: its own, or the gateway's defaults."""
        return Limits(
            requests_per_minute=user.requests_per_minute
            or self.settings.default_requests_per_minute,
            concurrency=user.concurrency or self.settings.default_concurrency,
        )

    def limits_json(self, user: User) -> dict[str, Any]:
        """A user's own limits (None: the default) and the limits in force."""
        limits = self.limits(user)
        return {
            "requests_per_minute": user.requests_per_minute,
            "concurrency": user.concurrency,
            "effective": {
                "requests_per_minute": limits.requests_per_minute,
                "concurrency": limits.concurrency,
            },
        }

    # -- reserving on a node ---------------------------------------------------------------
    def default_units(self, kind: str) -> int:
        """What a lock holds when the caller names no budget, by the model's kind."""
        if kind == "embeddings":
            return self.settings.default_embedding_units
        if kind == "images":
            return self.settings.default_image_units
        return self.settings.default_chat_units

    async def reserve_on_a_node(
        self, user: User, model: str, units: int, ttl: int, *, forwarding_now: bool = False
    ) -> tuple[NodeInfo, Reservation]:
        """Reserve on the least busy healthy node that answers; try the next one otherwise.

        The node's health probe runs while the ledger reserves, so a lock costs the slower of
        the two round trips, not their sum; a node that does not answer gets its reservation
        released at once. ``forwarding_now`` (a plain request, sent to the node right after): a
        node that answered well within ``HEALTH_FRESH_SECONDS`` is not probed, as the request
        itself finds a node that died since (503, nothing charged, marked unhealthy). A lock is
        always probed: it hands the caller a reservation that would otherwise sit on a dead
        node until it expired."""
        for node in self.registry.candidates(model):
            probe = None
            if not (forwarding_now and self.registry.answered_lately(node)):
                probe = asyncio.ensure_future(self.registry.answers(node))
            try:
                with self.metrics.ledger_latency.labels("reserve").time():
                    reservation = await self.ledger.reserve(
                        user.id, model, units, node_small_id=node.node_small_id, ttl_seconds=ttl
                    )
            except BaseException:
                if probe is not None:
                    probe.cancel()
                raise
            self.registry.hold(node.node_small_id, reservation.id, reservation.expires_at)
            if probe is None:
                return node, reservation
            answered = False
            try:
                answered = await probe
            finally:
                if not answered:  # a node that does not answer (or the caller left) holds nothing
                    with anyio.CancelScope(shield=True):
                        await self.ledger.release(reservation.id)
                    self.registry.release(reservation.id)
            if answered:
                return node, reservation
        raise ServiceUnavailable(f"no node serving {model!r} is reachable right now")

    async def lock(self, user: User, ask: NodesCreateLockRequest) -> NodesCreateLockResponse:
        """Hold units on a node for ``ask.model``; with a nonce, relay the node's evidence."""
        kind = self.registry.kind_of(ask.model)
        units = ask.max_num_tokens or self.default_units(kind)
        ttl = ask.timeout or self.settings.lock_timeout_seconds
        node, reservation = await self.reserve_on_a_node(user, ask.model, units, ttl)
        evidence = None
        if ask.attestation_nonce is not None:
            evidence = await self.evidence(node, ask.attestation_nonce, reservation)
            if (
                evidence.get("x25519_public_key")
                != base64.b64encode(node.current_public_key).decode()
            ):
                # The node rotated since our last refresh: learn its new key now, or the client
                # would see evidence for one key and a lock for another.
                await self.registry.refresh(node)
        return NodesCreateLockResponse(
            public_key=node.current_public_key,
            node_small_id=node.node_small_id,
            stack_small_id=reservation.stack_id,
            stack_entry_digest=None,
            key_id=node.current_key_id,
            node_signing_public_key=node.signing_public_key,
            reserved_units=reservation.units,
            expires_at=reservation.expires_at,
            evidence=evidence,
            reservation_id=reservation.id,
            **_kem_fields(node),
        )

    async def evidence(
        self, node: NodeInfo, nonce: bytes, reservation: Reservation
    ) -> dict[str, Any]:
        """Relay the node's evidence for the client's nonce; the client, not us, judges it."""
        try:
            response = await self.client.get(
                f"{node.url}/v1/attestation",
                params={"nonce": base64.b64encode(nonce).decode()},
                timeout=30,
            )
            if response.status_code == 200:
                document = response.json()
                if isinstance(document, dict):
                    return document
        except (httpx.HTTPError, ValueError):
            self.registry.mark_unhealthy(node, "attestation failed")
        await self.ledger.release(reservation.id)
        self.registry.release(reservation.id)
        raise ServiceUnavailable("the node did not return attestation evidence; nothing reserved")

    # -- forwarding ------------------------------------------------------------------------
    async def forward_confidential(
        self, user: User, endpoint: Endpoint, raw: bytes, reservation_id: str | None
    ) -> Response:
        """Forward a sealed envelope to the node it was sealed to, charged to the caller's
        reservation on the envelope's stack (the lock's own one when ``reservation_id`` names
        it). The ticket names the reservation claimed: a veil-v3 request sealed to another one is
        refused by the node."""
        envelope = parse_model(raw, ConfidentialComputeRequest, "envelope")
        node = self.registry.by_public_key(envelope.node_dh_public_key)
        if envelope.model_name not in node.models:
            raise NotFound(f"model {envelope.model_name!r} is not served by that node")
        request_id = new_request_id()
        with self.metrics.ledger_latency.labels("claim").time():
            # Veil's client names its lock's reservation; atoma-sdk knows no handle, so the
            # caller's oldest held one on the stack is claimed instead.
            reservation = await self.ledger.claim(
                user.id,
                envelope.stack_small_id,
                request_id=request_id,
                reservation_id=reservation_id,
                model=envelope.model_name,
                lease_seconds=self.forwarder.lease_seconds,
            )
        response = await self.forwarder.forward(
            node,
            ROUTES[endpoint].confidential,
            raw,
            reservation,
            envelope.model_name,
            request_id,
            stream=envelope.stream is True,
        )
        if response.status_code == StaleNodeKey.status:  # stale key (or a replay: harmless)
            await self.registry.refresh(node)  # the client will lock again: give it the new key
        return response

    async def forward_plain(self, user: User, endpoint: Endpoint, raw: bytes) -> Response:
        """A non-confidential OpenAI request: the gateway sees plaintext here, by the caller's
        choice. Reserve on a node, claim at once, forward."""
        document = parse_json_object(raw)
        model = document.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidBody("model: a model id is required")
        units = self.plain_units(endpoint, raw)
        node, reservation = await self.reserve_on_a_node(
            user, model, units, self.settings.lock_timeout_seconds, forwarding_now=True
        )
        request_id = new_request_id()
        with self.metrics.ledger_latency.labels("claim").time():
            claimed = await self.ledger.claim(
                user.id,
                reservation.stack_id,
                request_id=request_id,
                reservation_id=reservation.id,
                lease_seconds=self.forwarder.lease_seconds,
            )
        return await self.forwarder.forward(
            node,
            ROUTES[endpoint].plain,
            raw,
            claimed,
            model,
            request_id,
            stream=document.get("stream") is True,
        )

    def plain_units(self, endpoint: Endpoint, raw: bytes) -> int:
        """What to hold for a plain request; the node's signed receipt decides the charge."""
        if endpoint == "images":
            return parse_model(raw, ImageGenerationRequest, "images request").compute_units()
        if endpoint == "embeddings":
            parse_model(raw, EmbeddingRequest, "embeddings request")
            return self.settings.default_embedding_units
        chat = parse_model(raw, ChatCompletionRequest, "chat request")
        return chat_reservation(chat.requested_max_tokens(), len(raw))

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: what the healthy nodes serve, OpenAI's list shape plus the kind."""
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "veil", "kind": kind}
                for model, kind in sorted(self.registry.models().items())
            ],
        }

    # -- the node list (veil nodes; ledger/nodes.py) -----------------------------------------
    async def load_nodes(self) -> None:
        """At start: the ``--node`` URLs join the ledger's list if missing (one an operator
        removed stays removed), then the list is loaded and every node checked."""
        flagged = list(dict.fromkeys(node_url(url) for url in self.settings.nodes))
        for url in flagged:  # in the flags' order: first start numbers them in that order
            await self.ledger.node_small_id(url)
        records = await self.ledger.list_nodes(include_removed=True)
        for record in records:
            if record.url in flagged and not record.routed:
                log.warning(
                    "--node %s was removed by an operator: `veil nodes add` restores it", record.url
                )
        self.registry.sync(records)
        await self.registry.refresh_all()

    async def sync_nodes(self) -> None:
        """Take in the ledger's node list (another gateway's add, drain or remove); check new
        nodes at once."""
        new = self.registry.sync(await self.ledger.list_nodes())
        await asyncio.gather(*(self.registry.refresh(node) for node in new))

    async def add_node(self, url: str) -> NodeInfo:
        """``veil nodes add``: check the node (keys, models, tickets, attestation under the
        operator's policy), then list it for every gateway. Refused unless every check passed."""
        url = node_url(url)
        if any(n.url == url for n in self.registry.nodes):
            raise Conflict(f"node {url} is already listed")
        candidate = NodeInfo(url=url, node_small_id=0)
        await self.registry.refresh(candidate)
        if not candidate.healthy:
            if candidate.fault is Fault.UNREACHABLE:
                raise ServiceUnavailable(
                    f"node {url} not added: it does not answer as a Veil node "
                    "(GET /v1/keys and /v1/models)"
                )
            raise InvalidBody(f"node {url} not added: {candidate.reason}")
        record = await self.ledger.add_node(url)
        log.info("node %s (%d) added", url, record.id)
        return self.registry.adopt(record, candidate)

    async def set_node_state(self, record: NodeRecord) -> None:
        """Apply an operator's move here at once (other gateways take it at their next sync)."""
        if not record.routed:
            self.registry.drop(record.id)
            return
        await self.sync_nodes()

    # -- background ------------------------------------------------------------------------
    async def recover(self) -> int:
        """Charge the orphans (in-flight, their gateway gone) whose nodes kept a receipt, before
        the sweep releases what is left (``veil.gateway.recovery``)."""
        charged = await recover_orphans(self.ledger, self.registry, self.client, self.key)
        if charged:
            self.metrics.recovered.inc(charged)
        return charged

    async def maintain(self) -> None:
        """Release expired reservations, take in the ledger's node list and refresh the nodes,
        forever (cancelled at shutdown)."""
        last_refresh = 0.0
        while True:
            await asyncio.sleep(self.settings.expire_interval_seconds)
            try:
                await self.recover()
            except Exception as exc:  # the sweep runs all the same: nothing stays held forever
                log.error("recovering orphaned requests failed: %s", type(exc).__name__)
            try:
                released = await self.ledger.expire()
                if released:
                    self.metrics.expired.inc(released)
                    log.info("released %d expired reservation(s)", released)
                await self.sync_nodes()
                if time.monotonic() - last_refresh >= self.settings.health_interval_seconds:
                    await self.registry.refresh_all()
                    last_refresh = time.monotonic()
            except Exception as exc:  # keep maintaining; the next round may succeed
                log.error("maintenance round failed: %s", type(exc).__name__)


def _kem_fields(node: NodeInfo) -> dict[str, Any]:
    """A lock's veil-v3 fields: the node's current post-quantum key, if it publishes one."""
    key = node.current_kem_public_key
    if key is None:
        return {}
    return {"kem": HYBRID_KEM, "kem_public_key": key, "kem_key_id": node.current_kem_key_id}
