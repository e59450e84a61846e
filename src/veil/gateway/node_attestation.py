"""The gateway's own check of each node's attestation evidence (defence in depth).

What protects a prompt is the *client's* check: it verifies the evidence relayed with its lock,
for its own nonce, against its own pinned policy, before it seals anything. The gateway checks too,
under the operator's policy (``GatewaySettings.node_policy``, the client's policy format), so that
it stops routing to a node whose evidence no longer verifies instead of handing clients locks they
will refuse. It asks the node for evidence over a fresh random nonce of its own and runs the same
verifier (``veil.attestation.report.verify_evidence``) with the keys the node lists at
``/v1/keys``: the evidence must bind exactly those keys (the post-quantum one too, when the node
lists one) and that nonce.

``none`` evidence (no TEE) passes only if the operator said so (``insecure_nodes_no_tee``;
``veil serve`` does for its own demo node). The default refuses it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.config import GatewaySettings

__all__ = ["NodeAttestation", "NodeVerdict"]

log = logging.getLogger("veil.gateway.attestation")

NONCE_SIZE = 32


@dataclass(frozen=True)
class NodeVerdict:
    """The outcome of one check: pass or not, the evidence format, what failed (or the facts
    that passed), and the release the evidence proved (a manifest signed by a signer the
    operator's policy names), if any."""

    ok: bool
    format: str | None
    detail: str
    release: str | None = None
    checked_at: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "format": self.format,
            "detail": self.detail,
            "release": self.release,
            "checked_at": self.checked_at,
        }


class NodeAttestation:
    """Checks nodes' evidence under one policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> NodeAttestation:
        """The operator's policy file (or the strict default), with ``none`` evidence allowed
        only when ``insecure_nodes_no_tee`` is set."""
        policy = Policy() if settings.node_policy is None else Policy.load(settings.node_policy)
        if settings.insecure_nodes_no_tee:
            log.warning(
                "nodes without a TEE are accepted (insecure_nodes_no_tee): development only"
            )
            policy = policy.model_copy(update={"allow_no_tee": True})
        return cls(policy)

    async def check(
        self,
        client: httpx.AsyncClient,
        url: str,
        x25519: bytes,
        ed25519: bytes,
        *,
        kem_public_key: bytes | None = None,
    ) -> NodeVerdict:
        """Fetch ``url``'s evidence for a fresh nonce and verify it binds these keys."""
        nonce = os.urandom(NONCE_SIZE)
        now = time.time()
        try:
            response = await client.get(
                f"{url}/v1/attestation",
                params={"nonce": base64.b64encode(nonce).decode()},
                timeout=30,
            )
            document = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            document = None
        if not isinstance(document, dict):
            return NodeVerdict(False, None, "the node returned no evidence", checked_at=now)
        try:
            evidence = Evidence.model_validate(document)
        except ValidationError:
            return NodeVerdict(False, None, "the node's evidence is malformed", checked_at=now)
        # The verifier may fetch collateral (TDX, SNP): off the event loop.
        return await asyncio.to_thread(
            self._verify, evidence, x25519, ed25519, nonce, now, kem_public_key
        )

    def _verify(
        self,
        evidence: Evidence,
        x25519: bytes,
        ed25519: bytes,
        nonce: bytes,
        now: float,
        kem_public_key: bytes | None = None,
    ) -> NodeVerdict:
        source = None
        if evidence.format in ("tdx", "sev-snp"):
            from veil.attestation.collateral import fetcher_for

            source = fetcher_for(self.policy)
        try:
            report = verify_evidence(
                evidence,
                self.policy,
                expect_x25519=x25519,
                expect_ed25519=ed25519,
                expect_nonce=nonce,
                collateral_source=source,
                expect_kem_public_key=kem_public_key,
            )
        except Exception as exc:  # a verifier bug or an unreachable collateral service
            log.warning("attestation check raised %s", type(exc).__name__)
            return NodeVerdict(
                False, evidence.format, f"verification failed ({type(exc).__name__})", None, now
            )
        release = report.facts.get("release")
        release_name = release if isinstance(release, str) else None
        if not report.ok:
            failed = "; ".join(f"{step.name}: {step.detail}" for step in report.failures)
            hint = ""
            if evidence.format == "none" and not self.policy.allow_no_tee:
                hint = " (a development gateway accepts it: VEIL_INSECURE_NODES_NO_TEE=1)"
            return NodeVerdict(False, evidence.format, failed + hint, release_name, now)
        passed = ", ".join(step.name for step in report.steps if not step.not_checked)
        return NodeVerdict(True, evidence.format, f"verified: {passed}", release_name, now)
