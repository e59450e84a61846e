"""The Veil SDK: OpenAI-shaped calls, made confidential.

``Client`` and ``AsyncClient`` expose ``chat.completions.create``, ``embeddings.create``,
``images.generate`` and ``models.list`` with the OpenAI SDK's argument names and return the OpenAI
SDK's own types (subclassed only to carry ``.veil``, the request's ``Receipt``).

One call, one flow (PROTOCOL.md sections 1-6)::

    POST /v1/nodes/lock        -> node X25519 key, node signing key, stack, reserved units, and
      + attestation_nonce         the node's evidence for a fresh random 32-byte nonce
    verify_evidence(...)       -> the evidence satisfies the policy and binds both node keys and
                                  the nonce; otherwise AttestationFailed and nothing is sealed
    v2.seal_request(...)       -> HPKE (fresh ephemeral key, request id, timestamp); the metadata
                                  the gateway could swap is in the AAD
    POST /v1/confidential/...  -> sealed answer; every message opened and verified (place, tag,
      + X-Veil-Reservation        hash, signature) before any of it is returned; the header
                                  (the lock's reservation_id) makes the request claim exactly
                                  its own lock's units, never another concurrent request's

``protocol="atoma-v1"`` seals with the Atoma-compatible suite instead (same lock and attestation).

Attestation policy: ``policy`` (default ``Policy()``: strict, a real TEE with an UpToDate TCB) says
what evidence is acceptable. ``insecure_no_tee=True`` additionally accepts a node with no TEE at all
(evidence format "none"): **only for a local demo** - nothing then protects the node's keys or
your plaintext on the node, and a hostile gateway can put itself in the node's place.

What is reserved: chat holds ``max_tokens`` (default ``DEFAULT_CHAT_MAX_TOKENS``) plus the request's
size in bytes, because the node's budget covers prompt and completion together and a byte bounds a
token from above for byte-level tokenizers (the gateway's plain route holds the same); the gateway
charges the node's signed usage and releases the rest. Images hold n x width x height. Embeddings
hold the gateway's default.

Retries: 409 STALE_NODE_KEY, 425 UNAVAILABLE_STACK and 503 SERVICE_UNAVAILABLE (from the lock or the
confidential POST) start the flow again - a new lock, a new attestation and a new encryption (new
HPKE context and request id), never the old ciphertext - up to ``max_attempts`` times, sleeping
``backoff * 2**n`` seconds in between. 409 REPLAYED and AttestationFailed are never retried. 402
BALANCE_ERROR is raised at once, with the caller's remaining units for the model.

A lock whose attestation fails is not used, so its reservation is not released by a request: the
gateway releases it when the lock expires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args, overload

import httpx
import openai.types
import openai.types.chat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import PrivateAttr, ValidationError

from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.client.errors import (
    APIError,
    AttestationFailed,
    BalanceError,
    MalformedResponse,
    TransportError,
    UnverifiableNode,
    api_error,
)
from veil.client.known_nodes import KnownNodes
from veil.client.streaming import (
    AsyncChatStream,
    AttestationVerdict,
    ChatStream,
    Opener,
    Receipt,
    ResponseOpener,
    StreamChecker,
    V2ResponseOpener,
    aplain_chunks,
    open_single,
    plain_chunks,
)
from veil.hazmat import v1, v2
from veil.wire.envelopes import RESERVATION_HEADER, NodesCreateLockResponse
from veil.wire.errors import InvalidBody
from veil.wire.openai import ImageGenerationRequest

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.25
ATTESTATION_NONCE_SIZE: Final = 32

ProtocolName = Literal["veil-v2", "atoma-v1"]
PROTOCOLS: tuple[ProtocolName, ...] = get_args(ProtocolName)
DEFAULT_PROTOCOL: ProtocolName = "veil-v2"

Endpoint = Literal["chat", "embeddings", "images"]
ROUTES: dict[Endpoint, str] = {
    "chat": "chat/completions",
    "embeddings": "embeddings",
    "images": "images/generations",
}


def confidential_path(endpoint: Endpoint) -> str:
    """The node route a request is sealed for (v2 binds it into the HPKE ``info`` and the AAD)."""
    return f"/v1/confidential/{ROUTES[endpoint]}"


def resolve_policy(policy: Policy | None, insecure_no_tee: bool) -> Policy:
    """``policy`` (default: the strict ``Policy()``), with ``allow_no_tee`` forced on if asked."""
    chosen = policy if policy is not None else Policy()
    if insecure_no_tee and not chosen.allow_no_tee:
        chosen = chosen.model_copy(update={"allow_no_tee": True})
    return chosen


def check_protocol(protocol: str) -> ProtocolName:
    for known in PROTOCOLS:
        if protocol == known:
            return known
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")


def gateway_root(base_url: str) -> str:
    """``http://host:8080``, ``http://host:8080/`` and ``http://host:8080/v1`` -> the first."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def encode_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# -- planning: what to lock and what to send -------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One request before any I/O: the exact plaintext, and what to reserve for it."""

    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool
    units: int | None  # max_num_tokens for the lock and num_compute_units for the envelope


def plan_request(endpoint: Endpoint, body: Mapping[str, Any]) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: a model id is required")
    raw = encode_json(dict(body))
    stream = bool(body.get("stream")) if endpoint == "chat" else False
    units: int | None = None
    if endpoint == "chat":
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if wanted is not None and (not isinstance(wanted, int) or wanted < 1):
            raise ValueError("max_tokens must be a positive integer")
        units = (wanted or DEFAULT_CHAT_MAX_TOKENS) + len(raw)
    elif endpoint == "images":
        try:
            units = ImageGenerationRequest.model_validate(dict(body)).compute_units()
        except ValidationError:
            raise ValueError("the images request is not valid (prompt, n, size)") from None
    return Plan(endpoint, model, raw, stream, units)


def chat_body(
    model: str,
    messages: Iterable[Mapping[str, Any]],
    stream: bool,
    max_tokens: int | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return body


# -- the lock ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lock:
    """A lock response the client can use: the node's keys, checked for shape and consistency,
    and attested (``attestation``) under the client's policy."""

    node_public_key: bytes
    signing_key: Ed25519PublicKey
    key_id: str
    node_small_id: int
    stack_small_id: int
    reserved_units: int | None
    attestation: AttestationVerdict
    # The lock's reservation handle: the request carries it so it claims this lock's units.
    reservation_id: str | None = None

    def request_headers(self) -> dict[str, str]:
        """Headers binding the confidential request to this lock (none from a gateway that
        issues no handle: it then claims the oldest held reservation, as for atoma-sdk)."""
        if self.reservation_id is None:
            return {}
        return {RESERVATION_HEADER: self.reservation_id}


def node_key_id(public_key: bytes) -> str:
    """First 8 bytes of BLAKE2b-256 of the raw public key, hex (PROTOCOL.md section 6)."""
    return hashlib.blake2b(public_key, digest_size=32).digest()[:8].hex()


def new_attestation_nonce() -> bytes:
    """A fresh random nonce for one lock: evidence made for anyone else's lock is refused."""
    return os.urandom(ATTESTATION_NONCE_SIZE)


def lock_body(plan: Plan, attestation_nonce: bytes) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": plan.model,
        "attestation_nonce": base64.b64encode(attestation_nonce).decode("ascii"),
    }
    if plan.units is not None:
        body["max_num_tokens"] = plan.units
    return body


NO_TEE_HINT = (
    "for a local demo on a machine without a TEE only, opt in with insecure_no_tee=True "
    "(CLI: --insecure-no-tee or VEIL_INSECURE_NO_TEE=1)"
)


def attest(
    document: Mapping[str, Any] | None,
    policy: Policy,
    *,
    node_public_key: bytes,
    signing_public_key: bytes,
    nonce: bytes,
) -> AttestationVerdict:
    """Verify the lock's evidence: the policy, and that it binds both keys the lock named and our
    own nonce. Raises ``AttestationFailed`` (carrying the report) unless every step passed."""
    if document is None:
        raise AttestationFailed(
            "the lock response carries no attestation evidence, so the node cannot be trusted; "
            "nothing was encrypted or sent"
        )
    try:
        evidence = Evidence.model_validate(document)
    except ValidationError:
        raise AttestationFailed(
            "the lock response's attestation evidence is malformed; nothing was encrypted or sent"
        ) from None
    source = None
    if evidence.format in ("tdx", "sev-snp"):
        from veil.attestation.collateral import fetcher_for

        source = fetcher_for(policy)
    report = verify_evidence(
        evidence,
        policy,
        expect_x25519=node_public_key,
        expect_ed25519=signing_public_key,
        expect_nonce=nonce,
        collateral_source=source,
    )
    if not report.ok:
        failed = "; ".join(f"{step.name}: {step.detail}" for step in report.failures)
        hint = ""
        if evidence.format == "none" and not policy.allow_no_tee:
            hint = f" ({NO_TEE_HINT})"
        raise AttestationFailed(
            f"the node's {evidence.format} attestation did not verify ({failed}); nothing was "
            f"encrypted or sent{hint}",
            report=report,
        )
    return AttestationVerdict.of(evidence.format, report)


def accept_lock(raw: bytes, policy: Policy, attestation_nonce: bytes) -> Lock:
    """Check a lock response's shape and keys, then its attestation (before anything is sealed)."""
    try:
        answer = NodesCreateLockResponse.model_validate_json(raw)
    except ValidationError:
        raise UnverifiableNode("the lock response is not a valid NodesCreateLockResponse") from None
    if answer.node_signing_public_key is None:
        raise UnverifiableNode(
            "the lock response names no node signing key, so the answer could not be verified; "
            "nothing was sent"
        )
    key_id = node_key_id(answer.public_key)
    if answer.key_id is not None and not hmac.compare_digest(answer.key_id, key_id):
        raise UnverifiableNode("the lock response's key_id does not match its public key")
    try:
        signing_key = Ed25519PublicKey.from_public_bytes(answer.node_signing_public_key)
    except ValueError:
        raise UnverifiableNode("the lock response's node signing key is unusable") from None
    verdict = attest(
        answer.evidence,
        policy,
        node_public_key=answer.public_key,
        signing_public_key=answer.node_signing_public_key,
        nonce=attestation_nonce,
    )
    return Lock(
        node_public_key=answer.public_key,
        signing_key=signing_key,
        key_id=key_id,
        node_small_id=answer.node_small_id,
        stack_small_id=answer.stack_small_id,
        reserved_units=answer.reserved_units,
        attestation=verdict,
        reservation_id=answer.reservation_id,
    )


def seal(
    plan: Plan,
    lock: Lock,
    attempt: int,
    started_at: float,
    protocol: ProtocolName = DEFAULT_PROTOCOL,
) -> tuple[bytes, Opener]:
    """A fresh envelope (new ephemeral key; v2: new request id and timestamp) and the opener of
    its answer."""
    receipt = Receipt(
        endpoint=plan.endpoint,
        model=plan.model,
        node_small_id=lock.node_small_id,
        node_key_id=lock.key_id,
        stack_small_id=lock.stack_small_id,
        reserved_units=lock.reserved_units if lock.reserved_units is not None else plan.units,
        attempts=attempt,
        image_units=plan.units if plan.endpoint == "images" else None,
        started_at=started_at,
        protocol=protocol,
        attestation=lock.attestation,
    )
    stream = plan.stream if plan.endpoint == "chat" else None
    started = time.thread_time()
    opener: Opener
    try:
        if protocol == "atoma-v1":
            envelope, session = v1.seal_request(
                lock.node_public_key,
                plan.body,
                model_name=plan.model,
                stack_small_id=lock.stack_small_id,
                num_compute_units=plan.units,
                stream=stream,
            )
            opener = ResponseOpener(session, lock.signing_key, receipt)
        else:
            envelope, v2_session = v2.seal_request(
                lock.node_public_key,
                lock.key_id,
                plan.body,
                endpoint=confidential_path(plan.endpoint),
                model_name=plan.model,
                stack_small_id=lock.stack_small_id,
                num_compute_units=plan.units,
                stream=stream,
            )
            opener = V2ResponseOpener(v2_session, lock.signing_key, receipt)
    except InvalidBody:
        raise UnverifiableNode("the node public key in the lock response is unusable") from None
    receipt.crypto_seconds += time.thread_time() - started
    return envelope.model_dump_json().encode(), opener


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def remaining_units(stacks: Any, model: str) -> int | None:
    """Sum of ``free_units`` over the caller's stacks for ``model`` (GET /v1/stacks body)."""
    if not isinstance(stacks, dict) or not isinstance(stacks.get("stacks"), list):
        return None
    return sum(
        int(s.get("free_units") or 0)
        for s in stacks["stacks"]
        if isinstance(s, dict) and s.get("model") == model
    )


# -- results ----------------------------------------------------------------------------------
class ChatCompletion(openai.types.chat.ChatCompletion):
    """OpenAI's ``ChatCompletion``, verified; ``veil`` is the request's receipt."""

    _veil: Receipt | None = PrivateAttr(default=None)

    @property
    def veil(self) -> Receipt:
        assert self._veil is not None
        return self._veil


class CreateEmbeddingResponse(openai.types.CreateEmbeddingResponse):
    """OpenAI's ``CreateEmbeddingResponse``, verified; ``veil`` is the request's receipt."""

    _veil: Receipt | None = PrivateAttr(default=None)

    @property
    def veil(self) -> Receipt:
        assert self._veil is not None
        return self._veil


class ImagesResponse(openai.types.ImagesResponse):
    """OpenAI's ``ImagesResponse``, verified; ``veil`` is the request's receipt."""

    _veil: Receipt | None = PrivateAttr(default=None)

    @property
    def veil(self) -> Receipt:
        assert self._veil is not None
        return self._veil


ModelList = list[openai.types.Model]
Result = ChatCompletion | CreateEmbeddingResponse | ImagesResponse
RESULT_TYPES: dict[Endpoint, type[Result]] = {
    "chat": ChatCompletion,
    "embeddings": CreateEmbeddingResponse,
    "images": ImagesResponse,
}


def build_result(plan: Plan, document: dict[str, Any], receipt: Receipt) -> Result:
    try:
        result = RESULT_TYPES[plan.endpoint].model_validate(document)
    except ValidationError:
        raise MalformedResponse(
            f"the decrypted answer is not an OpenAI {plan.endpoint} response"
        ) from None
    result._veil = receipt
    return result


@dataclass(frozen=True)
class Answer:
    """A verified non-streamed answer: the node's exact plaintext bytes and their JSON."""

    plaintext: bytes
    document: dict[str, Any]
    receipt: Receipt


# -- the shared core --------------------------------------------------------------------------
class _Base:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        max_attempts: int,
        backoff: float,
        protocol: ProtocolName,
        policy: Policy | None,
        insecure_no_tee: bool,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = gateway_root(
            base_url or os.environ.get("VEIL_BASE_URL") or DEFAULT_BASE_URL
        )
        self.api_key = api_key if api_key is not None else os.environ.get("VEIL_API_KEY")
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.protocol: ProtocolName = check_protocol(protocol)
        self.policy: Policy = resolve_policy(policy, insecure_no_tee)
        # Signing keys of attested nodes, for `veil usage --verify` (None: do not record).
        self.known_nodes: KnownNodes | None = KnownNodes()

    def _lock_request(self, plan: Plan, api_key: str | None) -> tuple[bytes, dict[str, Any]]:
        """A fresh attestation nonce, and the keyword arguments of the lock POST."""
        nonce = new_attestation_nonce()
        return nonce, {
            "content": encode_json(lock_body(plan, nonce)),
            "headers": self._headers(api_key),
        }

    def _accept_lock(self, response: httpx.Response, nonce: bytes) -> Lock:
        if response.status_code != 200:
            raise api_error(response.status_code, _json_or_none(response))
        lock = accept_lock(response.content, self.policy, nonce)
        if self.known_nodes is not None:
            self.known_nodes.record(
                lock.signing_key.public_bytes_raw(),
                node_small_id=lock.node_small_id,
                gateway=self.base_url,
                attestation_format=lock.attestation.format,
            )
        return lock

    def _headers(self, api_key: str | None) -> dict[str, str]:
        key = api_key or self.api_key
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _delay(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return self.backoff * 2.0 ** (attempt - 2)

    def _should_retry(self, exc: APIError, attempt: int) -> bool:
        return exc.retryable and attempt < self.max_attempts


class Client(_Base):
    """Synchronous Veil client. Thread-safe as far as its ``httpx.Client`` is.

    ``protocol``: ``"veil-v2"`` (default) or ``"atoma-v1"``. ``policy``: what attestation evidence
    is acceptable (default ``Policy()``: a real TEE, TCB UpToDate). ``insecure_no_tee=True`` also
    accepts a node without any TEE: a local demo only, never for anything confidential.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        protocol: ProtocolName = DEFAULT_PROTOCOL,
        policy: Policy | None = None,
        insecure_no_tee: bool = False,
    ) -> None:
        super().__init__(
            base_url, api_key, max_attempts, backoff, protocol, policy, insecure_no_tee
        )
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client(timeout=timeout, transport=transport)
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)
        self.images = _Images(self)
        self.models = _Models(self)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O ------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, self._url(path), **kw)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path} failed: {type(exc).__name__}") from exc

    def stacks(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """The caller's stacks (GET /v1/stacks)."""
        response = self._send("GET", "/v1/stacks", headers=self._headers(api_key))
        body = _json_or_none(response)
        if response.status_code != 200:
            raise api_error(response.status_code, body)
        return list(body.get("stacks", [])) if isinstance(body, dict) else []

    def _lock(self, plan: Plan, api_key: str | None) -> Lock:
        nonce, request = self._lock_request(plan, api_key)
        return self._accept_lock(self._send("POST", "/v1/nodes/lock", **request), nonce)

    def _balance(self, exc: BalanceError, model: str, api_key: str | None) -> BalanceError:
        exc.model = model
        try:
            response = self._send("GET", "/v1/stacks", headers=self._headers(api_key))
        except TransportError:
            return exc
        if response.status_code == 200:
            exc.remaining_units = remaining_units(_json_or_none(response), model)
        return exc

    def run(self, plan: Plan, api_key: str | None = None) -> Answer | ChatStream:
        """Lock, seal, send, verify; retried as the module docstring says."""
        attempt, started = 1, time.perf_counter()
        while True:
            try:
                return self._attempt(plan, api_key, attempt, started)
            except BalanceError as exc:
                raise self._balance(exc, plan.model, api_key) from None
            except APIError as exc:
                if not self._should_retry(exc, attempt):
                    raise
            attempt += 1
            time.sleep(self._delay(attempt))

    def _attempt(
        self, plan: Plan, api_key: str | None, attempt: int, started: float
    ) -> Answer | ChatStream:
        lock = self._lock(plan, api_key)
        envelope, opener = seal(plan, lock, attempt, started, self.protocol)
        request = self.http.build_request(
            "POST",
            self._url(confidential_path(plan.endpoint)),
            content=envelope,
            headers={**self._headers(api_key), **lock.request_headers()},
        )
        try:
            response = self.http.send(request, stream=plan.stream)
        except httpx.HTTPError as exc:
            raise TransportError(f"sending the request failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            try:
                response.read()
            except httpx.HTTPError as exc:
                raise TransportError("reading the error failed") from exc
            finally:
                response.close()
            raise api_error(response.status_code, _json_or_none(response))
        if not plan.stream:
            plaintext, document = open_single(opener, response.content)
            return Answer(plaintext, document, opener.receipt)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.close()
            raise MalformedResponse("a streamed request was not answered with an event stream")
        chunks = plain_chunks(response, StreamChecker(opener))

        def close() -> None:
            chunks.close()
            response.close()

        return ChatStream(chunks, opener.receipt, close)

    def create(self, endpoint: Endpoint, body: Mapping[str, Any]) -> Result | ChatStream:
        plan = plan_request(endpoint, body)
        outcome = self.run(plan)
        if isinstance(outcome, ChatStream):
            return outcome
        return build_result(plan, outcome.document, outcome.receipt)


class AsyncClient(_Base):
    """Asynchronous twin of ``Client``.

    ``protocol``: ``"veil-v2"`` (default) or ``"atoma-v1"``. ``policy``: what attestation evidence
    is acceptable (default ``Policy()``: a real TEE, TCB UpToDate). ``insecure_no_tee=True`` also
    accepts a node without any TEE: a local demo only, never for anything confidential.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        protocol: ProtocolName = DEFAULT_PROTOCOL,
        policy: Policy | None = None,
        insecure_no_tee: bool = False,
    ) -> None:
        super().__init__(
            base_url, api_key, max_attempts, backoff, protocol, policy, insecure_no_tee
        )
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self.chat = _AsyncChat(self)
        self.embeddings = _AsyncEmbeddings(self)
        self.images = _AsyncImages(self)
        self.models = _AsyncModels(self)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self.http.request(method, self._url(path), **kw)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path} failed: {type(exc).__name__}") from exc

    async def stacks(self, api_key: str | None = None) -> list[dict[str, Any]]:
        response = await self._send("GET", "/v1/stacks", headers=self._headers(api_key))
        body = _json_or_none(response)
        if response.status_code != 200:
            raise api_error(response.status_code, body)
        return list(body.get("stacks", [])) if isinstance(body, dict) else []

    async def _lock(self, plan: Plan, api_key: str | None) -> Lock:
        nonce, request = self._lock_request(plan, api_key)
        return self._accept_lock(await self._send("POST", "/v1/nodes/lock", **request), nonce)

    async def _balance(self, exc: BalanceError, model: str, api_key: str | None) -> BalanceError:
        exc.model = model
        try:
            response = await self._send("GET", "/v1/stacks", headers=self._headers(api_key))
        except TransportError:
            return exc
        if response.status_code == 200:
            exc.remaining_units = remaining_units(_json_or_none(response), model)
        return exc

    async def run(self, plan: Plan, api_key: str | None = None) -> Answer | AsyncChatStream:
        attempt, started = 1, time.perf_counter()
        while True:
            try:
                return await self._attempt(plan, api_key, attempt, started)
            except BalanceError as exc:
                raise await self._balance(exc, plan.model, api_key) from None
            except APIError as exc:
                if not self._should_retry(exc, attempt):
                    raise
            attempt += 1
            await asyncio.sleep(self._delay(attempt))

    async def _attempt(
        self, plan: Plan, api_key: str | None, attempt: int, started: float
    ) -> Answer | AsyncChatStream:
        lock = await self._lock(plan, api_key)
        envelope, opener = seal(plan, lock, attempt, started, self.protocol)
        request = self.http.build_request(
            "POST",
            self._url(confidential_path(plan.endpoint)),
            content=envelope,
            headers={**self._headers(api_key), **lock.request_headers()},
        )
        try:
            response = await self.http.send(request, stream=plan.stream)
        except httpx.HTTPError as exc:
            raise TransportError(f"sending the request failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise TransportError("reading the error failed") from exc
            finally:
                await response.aclose()
            raise api_error(response.status_code, _json_or_none(response))
        if not plan.stream:
            plaintext, document = open_single(opener, response.content)
            return Answer(plaintext, document, opener.receipt)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise MalformedResponse("a streamed request was not answered with an event stream")
        chunks = aplain_chunks(response, StreamChecker(opener))

        async def close() -> None:
            await chunks.aclose()
            await response.aclose()

        return AsyncChatStream(chunks, opener.receipt, close)

    async def create(self, endpoint: Endpoint, body: Mapping[str, Any]) -> Result | AsyncChatStream:
        plan = plan_request(endpoint, body)
        outcome = await self.run(plan)
        if isinstance(outcome, AsyncChatStream):
            return outcome
        return build_result(plan, outcome.document, outcome.receipt)


# -- OpenAI-shaped resources ------------------------------------------------------------------
class _Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatStream: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatCompletion | ChatStream:
        """A confidential chat completion (or a stream of verified chunks)."""
        result = self._client.create("chat", chat_body(model, messages, stream, max_tokens, kwargs))
        assert isinstance(result, ChatCompletion | ChatStream)
        return result


class _Chat:
    def __init__(self, client: Client) -> None:
        self.completions = _Completions(client)


class _Embeddings:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self, *, model: str, input: str | list[str], **kwargs: Any
    ) -> CreateEmbeddingResponse:
        result = self._client.create("embeddings", {"model": model, "input": input, **kwargs})
        assert isinstance(result, CreateEmbeddingResponse)
        return result


class _Images:
    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(
        self,
        *,
        model: str,
        prompt: str,
        n: int | None = None,
        size: str | None = None,
        **kwargs: Any,
    ) -> ImagesResponse:
        body = _images_body(model, prompt, n, size, kwargs)
        result = self._client.create("images", body)
        assert isinstance(result, ImagesResponse)
        return result


class _Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> ModelList:
        response = self._client._send("GET", "/v1/models", headers=self._client._headers(None))
        return _models(response)


class _AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> AsyncChatStream: ...

    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> ChatCompletion | AsyncChatStream:
        body = chat_body(model, messages, stream, max_tokens, kwargs)
        result = await self._client.create("chat", body)
        assert isinstance(result, ChatCompletion | AsyncChatStream)
        return result


class _AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = _AsyncCompletions(client)


class _AsyncEmbeddings:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, *, model: str, input: str | list[str], **kwargs: Any
    ) -> CreateEmbeddingResponse:
        result = await self._client.create("embeddings", {"model": model, "input": input, **kwargs})
        assert isinstance(result, CreateEmbeddingResponse)
        return result


class _AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(
        self,
        *,
        model: str,
        prompt: str,
        n: int | None = None,
        size: str | None = None,
        **kwargs: Any,
    ) -> ImagesResponse:
        result = await self._client.create("images", _images_body(model, prompt, n, size, kwargs))
        assert isinstance(result, ImagesResponse)
        return result


class _AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> ModelList:
        headers = self._client._headers(None)
        return _models(await self._client._send("GET", "/v1/models", headers=headers))


def _images_body(
    model: str, prompt: str, n: int | None, size: str | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, **extra}
    if n is not None:
        body["n"] = n
    if size is not None:
        body["size"] = size
    return body


def _models(response: httpx.Response) -> ModelList:
    body = _json_or_none(response)
    if response.status_code != 200:
        raise api_error(response.status_code, body)
    try:
        return [openai.types.Model.model_validate(item) for item in body["data"]]
    except (TypeError, KeyError, ValidationError):
        raise MalformedResponse("GET /v1/models did not answer a model list") from None
