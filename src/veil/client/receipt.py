"""What the client knows about one confidential request: the verdict on the node's evidence
(``AttestationVerdict``, reached before anything is sealed) and the ``Receipt`` of the request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from veil.attestation.report import Step, VerificationReport
from veil.hazmat import v3
from veil.wire.envelopes import Usage

__all__ = ["AttestationVerdict", "Receipt"]


@dataclass(frozen=True)
class AttestationVerdict:
    """What the client concluded from the node's evidence, before it encrypted anything.

    ``steps`` are the verifier's named checks (format, quote, TCB status, binding, expected keys,
    nonce...) with their outcome; ``report`` is the full ``VerificationReport`` (``.render()``).
    ``insecure`` is True when the node has no TEE and was accepted only because the policy allows
    that (``insecure_no_tee``): nothing then protects the node's keys or the plaintext on it.
    """

    format: str
    ok: bool
    steps: tuple[Step, ...]
    tcb_status: str | None = None
    insecure: bool = False
    report: VerificationReport | None = field(default=None, repr=False, compare=False)
    # The release the node proved (a manifest signed by a signer the client's policy names).
    release: str | None = None
    release_signer: str | None = None

    @classmethod
    def of(cls, evidence_format: str, report: VerificationReport) -> AttestationVerdict:
        release = report.facts.get("release")
        signer = report.facts.get("release_signer")
        return cls(
            format=evidence_format,
            ok=report.ok,
            steps=tuple(report.steps),
            tcb_status=report.tcb_status,
            insecure=report.ok and evidence_format == "none",
            report=report,
            release=None if release is None else str(release),
            release_signer=None if signer is None else str(signer),
        )

    def describe(self) -> str:
        if not self.ok:
            failed = ", ".join(step.name for step in self.steps if not step.ok)
            return f"attestation FAILED ({self.format}: {failed})"
        if self.insecure:
            return "NO TEE (evidence 'none', accepted by insecure_no_tee)"
        status = f" {self.tcb_status}" if self.tcb_status else ""
        release = f", release {self.release} proved" if self.release else ", pinned measurements"
        return f"attested {self.format}{status}{release}"


@dataclass
class Receipt:
    """What the client knows, and has checked, about one confidential request.

    ``usage`` is the signed usage (read from the decrypted, signature-verified plaintext), set once
    the response (or the stream's final chunk) has been verified. ``units_charged`` is what the
    node's signed usage charges: total tokens for chat and embeddings, n x width x height for images.
    ``protocol`` is the suite the request was sealed with (stamped by the opener that checked the
    answer), and for veil-v3 ``kem`` the KEM (``mlkem768-x25519``, post-quantum, or ``x25519``
    where the policy allowed it) and ``kem_key_id`` the node key it was sealed to;
    ``attestation`` is the verdict on the node's evidence that was checked before sealing. ``crypto_seconds`` is the CPU time the
    calling thread spent sealing, opening and verifying (``time.thread_time``: time the thread
    spent preempted or waiting does not count); ``elapsed_seconds`` is the wall time of the call.
    """

    endpoint: str
    model: str
    node_small_id: int
    node_key_id: str
    stack_small_id: int
    reserved_units: int | None
    attempts: int = 1
    image_units: int | None = None  # n x width x height, for images
    usage: Usage | None = None
    units_charged: int | None = None
    messages_verified: int = 0
    signature_verified: bool = False
    crypto_seconds: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)
    elapsed_seconds: float = 0.0
    protocol: str = v3.SUITE
    attestation: AttestationVerdict | None = None
    kem: str | None = None
    kem_key_id: str | None = None

    def finish(self, usage: Usage | None) -> None:
        self.usage = usage
        if self.image_units is not None:
            self.units_charged = self.image_units
        elif usage is not None:
            self.units_charged = usage.total_tokens
        self.signature_verified = self.messages_verified > 0
        self.elapsed_seconds = time.perf_counter() - self.started_at

    def summary(self) -> str:
        """One line for a person: tokens, units charged, node key, signature, attestation."""
        parts = []
        if self.usage is not None:
            parts.append(
                f"tokens {self.usage.prompt_tokens} prompt / {self.usage.completion_tokens} "
                "completion"
            )
        if self.units_charged is not None:
            parts.append(f"units charged {self.units_charged}")
        parts.append(f"node key {self.node_key_id}")
        parts.append("signature verified" if self.signature_verified else "NOT VERIFIED")
        parts.append(self.protocol if self.kem is None else f"{self.protocol} {self.kem}")
        if self.attestation is not None:
            parts.append(self.attestation.describe())
        return " | ".join(parts)
