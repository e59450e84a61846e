"""Steps 8 and 9: the signed report_data binds the keys, and the keys are the caller's.

A bundle binds ``SHA-512("veil-v2 report" || x25519 || ed25519 || gpus || nonce)`` (a node
without a post-quantum key: the classical formula) or, for a bundle with a post-quantum key,
``SHA-512("veil-v3 report" || x25519 || ed25519 || SHA-256(kem_public_key) || gpus || nonce)``
(``evidence.py``). A bare quote (no evidence document) is checked against the keys a node lists
at ``GET /v1/keys``: a key with a post-quantum key beside it must match the veil-v3 formula, a key
without one the classical formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from veil.attestation.evidence import (
    BINDING_FORMULA_V2,
    BINDING_FORMULA_V3,
    AttestationError,
    Evidence,
    report_data,
)
from veil.attestation.report_steps import VerificationReport, same

BINDING_FORMULA = BINDING_FORMULA_V2  # what a bare quote of a node without a post-quantum key binds


def check_binding(report: VerificationReport, signed: bytes, evidence: Evidence) -> None:
    """The report_data the TEE signed commits to the bundle's keys, GPU evidence and nonce."""
    try:
        expected = evidence.expected_report_data()
    except AttestationError as exc:
        report.add("binding", False, f"cannot compute the binding: {exc}")
        return
    if not same(signed, expected):
        report.add(
            "binding",
            False,
            f"the signed report_data is not {evidence.binding_formula} of the bundle's keys, GPU "
            "evidence and nonce: this evidence does not vouch for these keys",
            expected=expected.hex(),
            actual=signed.hex(),
        )
    elif not same(evidence.report_data, signed):
        report.add("binding", False, "the document's report_data differs from the signed one")
    else:
        gpus = f", {len(evidence.gpus)} GPU(s)" if evidence.gpus else ""
        report.add("binding", True, f"report_data = {evidence.binding_formula}{gpus}")


def check_expected_keys(
    report: VerificationReport,
    evidence: Evidence,
    expect_x25519: bytes | None,
    expect_ed25519: bytes | None,
    expect_kem: bytes | None = None,
) -> None:
    """The bundle's keys are the caller's. ``expect_kem`` (the veil-v3 client's lock key) fails a
    bundle that binds no post-quantum key, or another one."""
    expected = (
        ("X25519", "X25519 encryption key", expect_x25519, evidence.x25519_public_key),
        ("Ed25519", "Ed25519 signing key", expect_ed25519, evidence.ed25519_public_key),
        ("ML-KEM-768 + X25519", "post-quantum key", expect_kem, evidence.kem_public_key),
    )
    if all(want is None for _, _, want, _ in expected):
        report.not_checked("expected keys", "the caller named no keys to compare with")
        return
    wrong = [
        what
        for _, what, want, have in expected
        if want is not None and (have is None or not same(want, have))
    ]
    if expect_kem is not None and evidence.kem_public_key is None:
        report.add(
            "expected keys",
            False,
            "the evidence binds no post-quantum (ML-KEM-768 + X25519) key: this node cannot be "
            "sent a veil-v3 request sealed with the hybrid KEM",
        )
    elif wrong:
        report.add(
            "expected keys", False, f"the evidence's {' and '.join(wrong)} differ from the expected"
        )
    else:
        named = [name for name, _, want, _ in expected if want is not None]
        report.add("expected keys", True, f"{' and '.join(named)} equal the expected keys")


@dataclass(frozen=True)
class NodeKey:
    """A key pair a node lists at ``GET /v1/keys`` (public halves only)."""

    label: str
    x25519_public_key: bytes
    ed25519_public_key: bytes
    kem_public_key: bytes | None = None  # veil-v3's post-quantum key: the v3 formula binds it


def check_quote_binding(
    report: VerificationReport,
    signed: bytes,
    node_keys: Sequence[NodeKey] | None,
    nonce: bytes | None,
) -> None:
    """Step "binding" of a bare quote: ``signed`` (its report_data) binds one of ``node_keys``
    with ``nonce``. Without keys the step is "not checked"; without the nonce it fails."""
    if not node_keys:
        report.not_checked(
            "binding", "no node keys to check report_data against (see --expect-keys)"
        )
        return
    if nonce is None:
        formulas = {
            BINDING_FORMULA if k.kem_public_key is None else BINDING_FORMULA_V3 for k in node_keys
        }
        report.add(
            "binding",
            False,
            f"cannot check: report_data = {' or '.join(sorted(formulas))}, and a bare quote does "
            "not carry the nonce; pass the nonce the node was asked to attest (--nonce)",
        )
        return
    for key in node_keys:
        # A key listed with a post-quantum key binds by the veil-v3 formula only: a quote that
        # binds just its X25519 and Ed25519 keys does not vouch for the post-quantum one.
        try:
            expected = report_data(
                key.x25519_public_key,
                key.ed25519_public_key,
                nonce,
                kem_public_key=key.kem_public_key,
            )
        except AttestationError as exc:
            report.add("binding", False, f"cannot compute the binding: {exc}")
            return
        if same(signed, expected):
            formula = "veil-v3" if key.kem_public_key is not None else "classical"
            report.add(
                "binding",
                True,
                f"report_data binds the node's {key.label} key and nonce ({formula} formula)",
            )
            return
    labels = ", ".join(key.label for key in node_keys)
    report.add(
        "binding",
        False,
        f"report_data does not commit to the node's keys ({labels}) with this nonce: this quote "
        "does not vouch for them",
    )
