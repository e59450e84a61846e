"""One request before any I/O (``Plan``: the exact plaintext, and what to reserve for it), and
its sealing to an accepted lock (``seal``: a fresh envelope and the opener of its answer).

What is reserved: chat holds ``max_tokens`` (default ``config.DEFAULT_CHAT_COMPLETION_TOKENS``; ``wire.openai.chat_reservation``) plus the request's
size in bytes, because the node's budget covers prompt and completion together and a byte bounds a
token from above for byte-level tokenizers (the gateway's plain route holds the same); the gateway
charges the node's signed usage and releases the rest. Images hold n x width x height. Embeddings
hold the gateway's default.

The plaintext is the body exactly as it was given (the ``openai`` package's own JSON, through the
transport): it is parsed to plan, never encoded again.

veil-v3 seals to the lock's post-quantum key (``Kem.HYBRID``: ML-KEM-768 + X25519), bound to the
lock's reservation, its answer to be signed by the lock's signing key. A lock that names no such
key is refused (``NoPostQuantumKey``) unless the policy allows the classical KEM, then the request
is sealed with ``Kem.X25519`` to the lock's X25519 key (``v3_target``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from veil.client.errors import NoPostQuantumKey, UnverifiableNode
from veil.client.lock import Lock
from veil.client.opening import Opener, ResponseOpener, V3ResponseOpener
from veil.client.options import DEFAULT_PROTOCOL, ProtocolName
from veil.client.receipt import Receipt
from veil.hazmat import v1, v3
from veil.wire.errors import InvalidBody
from veil.wire.openai import ImageGenerationRequest, chat_reservation
from veil.wire.routes import ROUTES, Endpoint

__all__ = ["Plan", "chat_body", "encode_json", "plan_body", "plan_request", "seal", "v3_target"]


def encode_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Plan:
    """One request before any I/O: the exact plaintext, and what to reserve for it."""

    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool
    units: int | None  # max_num_tokens for the lock and num_compute_units for the envelope


def plan_request(endpoint: Endpoint, body: Mapping[str, Any]) -> Plan:
    """The plan of a request given as a mapping (encoded here, once)."""
    return _plan(endpoint, body, encode_json(dict(body)))


def plan_body(endpoint: Endpoint, raw: bytes) -> Plan:
    """The plan of a request already encoded (by ``openai``): ``raw`` is sent as it is."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body is not a JSON object")
    return _plan(endpoint, body, raw)


def _plan(endpoint: Endpoint, body: Mapping[str, Any], raw: bytes) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: a model id is required")
    stream = bool(body.get("stream")) if endpoint == "chat" else False
    units: int | None = None
    if endpoint == "chat":
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if wanted is not None and (not isinstance(wanted, int) or wanted < 1):
            raise ValueError("max_tokens must be a positive integer")
        units = chat_reservation(wanted, len(raw))
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
    """An OpenAI chat request body (what ``veil chat`` sends, and shows with --show-wire)."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return body


def v3_target(lock: Lock, allow_classical_kem: bool) -> tuple[v3.Kem, bytes, str]:
    """The KEM, node public key and key id a veil-v3 request to ``lock`` is sealed with."""
    if lock.kem_public_key is not None and lock.kem_key_id is not None:
        return v3.Kem.HYBRID, lock.kem_public_key, lock.kem_key_id
    if not allow_classical_kem:
        raise NoPostQuantumKey(
            f"the lock names no post-quantum ({v3.Kem.HYBRID.value}) key, so the node is unusable "
            "for veil-v3: nothing was encrypted or sent (a policy with allow_classical_kem = true "
            "seals with X25519 instead; protocol atoma-v1 does too, without veil-v3's guarantees)"
        )
    return v3.Kem.X25519, lock.node_public_key, lock.key_id


def seal(
    plan: Plan,
    lock: Lock,
    attempt: int,
    started_at: float,
    protocol: ProtocolName = DEFAULT_PROTOCOL,
    *,
    allow_classical_kem: bool = False,
) -> tuple[bytes, Opener]:
    """A fresh envelope (new ephemeral key; v3: new request id, timestamp and response
    secret) and the opener of its answer. ``allow_classical_kem``: the policy's."""
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
        if protocol == "veil-v3":
            kem, public_key, key_id = v3_target(lock, allow_classical_kem)
            envelope, v3_session = v3.seal_request(
                public_key,
                key_id,
                plan.body,
                node_signing_key=lock.signing_key,
                endpoint=ROUTES[plan.endpoint].confidential,
                model_name=plan.model,
                stack_small_id=lock.stack_small_id,
                kem=kem,
                num_compute_units=plan.units,
                stream=stream,
                reservation_id=lock.reservation_id,
            )
            receipt.kem, receipt.kem_key_id = kem.value, key_id
            opener = V3ResponseOpener(v3_session, lock.signing_key, receipt)
        else:  # atoma-v1 (options.check_protocol admits nothing else)
            envelope, session = v1.seal_request(
                lock.node_public_key,
                plan.body,
                model_name=plan.model,
                stack_small_id=lock.stack_small_id,
                num_compute_units=plan.units,
                stream=stream,
            )
            opener = ResponseOpener(session, lock.signing_key, receipt)
    except (InvalidBody, ValueError):
        # ValueError: cryptography refusing the key itself (an X25519 point of low order).
        raise UnverifiableNode("the node public key in the lock response is unusable") from None
    receipt.crypto_seconds += time.thread_time() - started
    return envelope.model_dump_json().encode(), opener
