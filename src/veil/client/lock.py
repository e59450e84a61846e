"""The lock: what the gateway answers ``POST /v1/nodes/lock`` with, checked before anything is sealed.

A lock names the node's X25519 key and Ed25519 signing key, for veil-v3 its post-quantum key
(``kem_public_key``: ML-KEM-768 + X25519, X-Wing), the stack and the reserved units, and carries
the node's evidence for the client's fresh random nonce. ``accept_lock`` checks its shape, that
its ``key_id`` and ``kem_key_id`` are its keys', and then its attestation (``attest``): the
evidence must satisfy the client's policy and bind every key the lock names and the nonce
(for the post-quantum key: the veil-v3 report_data formula over it, the verifier's ``binding`` and
``expected keys`` steps). Otherwise ``UnverifiableNode`` or
``AttestationFailed`` is raised, and nothing is encrypted or sent.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.client.errors import AttestationFailed, UnverifiableNode
from veil.client.receipt import AttestationVerdict
from veil.hazmat.kem import Kem
from veil.wire.envelopes import RESERVATION_HEADER, NodesCreateLockResponse
from veil.wire.keyid import key_id as node_key_id

if TYPE_CHECKING:
    from veil.client.plan import Plan

__all__ = [
    "ATTESTATION_NONCE_SIZE",
    "Lock",
    "accept_lock",
    "attest",
    "lock_body",
    "new_attestation_nonce",
    "node_key_id",
]

ATTESTATION_NONCE_SIZE: Final = 32


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
    # veil-v3: the node's post-quantum (Kem.HYBRID) key and its id, attested like the others;
    # None when the lock names none (the node or its gateway does not speak veil-v3).
    kem_public_key: bytes | None = None
    kem_key_id: str | None = None

    def request_headers(self) -> dict[str, str]:
        """Headers binding the confidential request to this lock (none from a gateway that
        issues no handle: it then claims the oldest held reservation, as for atoma-sdk)."""
        if self.reservation_id is None:
            return {}
        return {RESERVATION_HEADER: self.reservation_id}


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
    kem_public_key: bytes | None = None,
) -> AttestationVerdict:
    """Verify the lock's evidence: the policy, and that it binds every key the lock named (both
    node keys, and ``kem_public_key`` when the lock names one) and our own nonce. Raises
    ``AttestationFailed`` (carrying the report) unless every step passed."""
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
        # The bundle must bind this very key (the veil-v3 report_data formula over it): with the
        # binding step, the TEE then vouches for it, and a gateway cannot slip its own ML-KEM
        # key into a lock for a genuine node.
        expect_kem_public_key=kem_public_key,
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


def _kem_key(answer: NodesCreateLockResponse) -> tuple[bytes, str] | None:
    """The lock's post-quantum key and its id, checked for consistency (None: it names none)."""
    if answer.kem_public_key is None:
        if answer.kem is not None or answer.kem_key_id is not None:
            raise UnverifiableNode("the lock response names a KEM but no post-quantum key")
        return None
    if answer.kem not in (None, Kem.HYBRID.value):
        raise UnverifiableNode(
            f"the lock response's kem {answer.kem!r} is not {Kem.HYBRID.value}, the kind of its key"
        )
    kem_key_id = node_key_id(answer.kem_public_key)
    if answer.kem_key_id is not None and not hmac.compare_digest(answer.kem_key_id, kem_key_id):
        raise UnverifiableNode("the lock response's kem_key_id does not match its kem_public_key")
    return answer.kem_public_key, kem_key_id


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
    kem = _kem_key(answer)
    verdict = attest(
        answer.evidence,
        policy,
        node_public_key=answer.public_key,
        signing_public_key=answer.node_signing_public_key,
        nonce=attestation_nonce,
        kem_public_key=None if kem is None else kem[0],
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
        kem_public_key=None if kem is None else kem[0],
        kem_key_id=None if kem is None else kem[1],
    )
