"""GPU steps 1-4, on the device's own evidence: signature, certificate chain, FWID, nonce.

The report is signed by the device leaf key, whose chain ends at NVIDIA's pinned device identity
root; the leaf's DICE TcbInfo names the firmware that derived it, which must be the firmware the
report names; and the request carries the caller's nonce.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ

from veil.attestation.abi_nvidia import GpuReport, GpuReportFormatError
from veil.attestation.evidence import AttestationError
from veil.attestation.gpu_check import (
    STEP_CHAIN,
    STEP_FWID,
    STEP_NONCE,
    STEP_SIGNATURE,
    GpuCheck,
)
from veil.attestation.pki_nvidia import ChainError, label, stamp, verify_chain

__all__ = ["check_chain", "check_fwid", "check_nonce", "check_signature", "leaf_fwid", "load_chain"]

TCB_INFO_OID = x509.ObjectIdentifier("2.23.133.5.4.1")  # TCG DICE TcbInfo
SHA384_OID = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.2")


def load_chain(cert_chain_pem: bytes | str) -> list[x509.Certificate]:
    raw = cert_chain_pem.encode() if isinstance(cert_chain_pem, str) else bytes(cert_chain_pem)
    try:
        chain = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise GpuReportFormatError("the GPU certificate chain is not PEM X.509") from None
    if len(chain) < 2:
        raise GpuReportFormatError(
            f"the GPU certificate chain has {len(chain)} certificate(s); leaf to root expected"
        )
    return chain


def check_signature(report: GpuReport, leaf: x509.Certificate) -> GpuCheck:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return GpuCheck(STEP_SIGNATURE, False, f"the leaf '{label(leaf)}' has no P-384 key")
    half = len(report.signature) // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return GpuCheck(
            STEP_SIGNATURE,
            False,
            f"the report's signature does not verify with the leaf '{label(leaf)}': the report "
            "was altered or not made by this GPU",
        )
    return GpuCheck(
        STEP_SIGNATURE,
        True,
        f"ECDSA P-384/SHA-384 by the device leaf over the {len(report.signed_bytes)} signed bytes",
    )


def check_chain(chain: list[x509.Certificate], at: datetime, roots: Iterable[bytes]) -> GpuCheck:
    try:
        verify_chain(chain, at, roots, "GPU device chain")
    except ChainError as exc:
        return GpuCheck(STEP_CHAIN, False, str(exc))
    return GpuCheck(
        STEP_CHAIN,
        True,
        f"{len(chain)} certificates, each signed by the next and valid at {stamp(at)}, ending at "
        f"the pinned '{label(chain[-1])}'",
    )


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The SHA-384 FWID in the leaf's TcbInfo extension.

    NVIDIA's leaf encodes it as SEQUENCE { INTEGER, SubjectPublicKeyInfo, FWID } with
    FWID ::= SEQUENCE { hashAlg OID, digest OCTET STRING } (the TCG DICE FWID type); pyasn1
    decodes the DER and we take the FWID whose hash algorithm is SHA-384.
    """
    try:
        value = leaf.extensions.get_extension_for_oid(TCB_INFO_OID).value
    except x509.ExtensionNotFound:
        raise AttestationError(f"the leaf '{label(leaf)}' has no TcbInfo extension") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError("the TcbInfo extension was not left undecoded")
    try:
        decoded, rest = der_decoder.decode(value.value)
    except PyAsn1Error:
        raise AttestationError("the leaf's TcbInfo extension is not DER") from None
    if rest or not isinstance(decoded, univ.Sequence):
        raise AttestationError("the leaf's TcbInfo extension is not one SEQUENCE")
    found = []
    for component in decoded.values():
        if (
            isinstance(component, univ.Sequence)
            and len(component) == 2
            and isinstance(component[0], univ.ObjectIdentifier)
            and component[0] == SHA384_OID
            and isinstance(component[1], univ.OctetString)
        ):
            found.append(bytes(component[1]))
    if len(found) != 1 or len(found[0]) != 48:
        raise AttestationError("the leaf's TcbInfo does not hold exactly one SHA-384 FWID")
    return found[0]


def check_fwid(report: GpuReport, leaf: x509.Certificate) -> GpuCheck:
    try:
        expected = leaf_fwid(leaf)
    except AttestationError as exc:
        return GpuCheck(STEP_FWID, False, str(exc))
    actual = report.fwid
    if actual is None:
        return GpuCheck(STEP_FWID, False, "the report carries no FWID field")
    if not hmac.compare_digest(expected, actual):
        return GpuCheck(
            STEP_FWID,
            False,
            "the report's FWID differs from the leaf certificate's: the report was not made by "
            "the firmware the certificate was issued to",
            expected=expected.hex(),
            actual=actual.hex(),
        )
    return GpuCheck(
        STEP_FWID, True, f"the leaf's TcbInfo FWID equals the report's ({actual.hex()[:16]}...)"
    )


def check_nonce(report: GpuReport, expected: bytes | None) -> GpuCheck:
    if expected is None:
        return GpuCheck(STEP_NONCE, None, "the caller gave no nonce: freshness not checked")
    if hmac.compare_digest(bytes(expected), report.nonce):
        return GpuCheck(STEP_NONCE, True, "the report answers the caller's nonce")
    return GpuCheck(
        STEP_NONCE,
        False,
        "the report was made for another nonce (stale or replayed)",
        expected=bytes(expected).hex(),
        actual=report.nonce.hex(),
    )
