"""NVIDIA's two certificate hierarchies: the pinned roots, chain checks and OCSP replies.

GPU attestation rests on two roots NVIDIA publishes with its nvtrust verifier:

- the **device identity root** ("NVIDIA Device Identity CA"): every Hopper GPU's identity chain
  (GPU leaf <- GSP BROM <- provisioner ICA <- GH100 identity <- root) ends there;
- the **RIM signing root** ("NVIDIA CoRIM signing Root CA"): the reference integrity manifests
  NVIDIA signs for each driver and VBIOS build chain to it.

Both are pinned by the SHA-256 of their DER encoding. Revocation is OCSP: NVIDIA's responders
(ocsp.ndis.nvidia.com) answer through delegated responder certificates each issuer signs. Nothing
is fetched here; replies recorded elsewhere are passed in and checked at the verification time.

All checks use ``cryptography``; nothing here parses ASN.1 by hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from veil.attestation.evidence import AttestationError

__all__ = [
    "DEVICE_ROOT_SHA256",
    "RIM_ROOT_SHA256",
    "ChainError",
    "OcspError",
    "OcspReply",
    "check_ocsp",
    "fingerprint",
    "load_ocsp_reply",
    "verify_chain",
]

# SHA-256 of the DER of nvtrust_verifier_device_root.pem ("NVIDIA Device Identity CA", serial
# 2d3670b1ca100411c1..., valid 2021-11-05 .. 9999-12-31), the device root NVIDIA ships with its
# nvtrust local GPU verifier (NVIDIA/nvtrust, guest_tools/gpu_verifiers/local_gpu_verifier,
# certs/verifier_device_root.pem; copied to ../shared/attestation-samples/nvidia/).
DEVICE_ROOT_SHA256 = bytes.fromhex(
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
)
# SHA-256 of the DER of nvtrust_verifier_RIM_root.pem ("NVIDIA CoRIM signing Root CA", serial
# 45dae3a00e5037bddf..., valid 2023-03-16 .. 2053-03-08), from the same place
# (certs/verifier_RIM_root.pem).
RIM_ROOT_SHA256 = bytes.fromhex("12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1")

DEFAULT_OCSP_MAX_AGE = timedelta(days=1)  # for a reply without nextUpdate
_ISO = "%Y-%m-%dT%H:%M:%SZ"


class ChainError(AttestationError):
    """A certificate chain does not verify at the given time, or ends at the wrong root."""


class OcspError(AttestationError):
    """An OCSP reply cannot be read, is for another certificate, or does not say GOOD."""


def fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def stamp(when: datetime) -> str:
    return when.strftime(_ISO)


def label(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain(
    chain: Sequence[x509.Certificate],
    at: datetime,
    pinned_roots: Iterable[bytes],
    what: str,
) -> None:
    """``chain`` is leaf first, root last: each certificate is valid at ``at`` and signed by the
    next (a CA), and the last is self-signed with a SHA-256 fingerprint in ``pinned_roots``."""
    if not chain:
        raise ChainError(f"{what}: no certificates")
    # 1. every certificate inside its validity window at ``at``
    for cert in chain:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if at < start:
            raise ChainError(
                f"{what}: certificate '{label(cert)}' is not valid before {stamp(start)} "
                f"(verification time {stamp(at)})"
            )
        if at > end:
            raise ChainError(
                f"{what}: certificate '{label(cert)}' expired on {stamp(end)} "
                f"(verification time {stamp(at)})"
            )
    # 2. each signed by the next, which must be a CA
    for cert, issuer in itertools.pairwise(chain):
        if not _is_ca(issuer):
            raise ChainError(f"{what}: '{label(issuer)}' issued '{label(cert)}' but is not a CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ChainError(
                f"{what}: '{label(cert)}' is not signed by the next certificate '{label(issuer)}'"
            ) from None
    # 3. the root: self-signed and pinned
    root = chain[-1]
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise ChainError(
            f"{what}: the last certificate '{label(root)}' is not self-signed"
        ) from None
    seen = fingerprint(root)
    if not any(hmac.compare_digest(seen, pin) for pin in pinned_roots):
        raise ChainError(
            f"{what}: ends at '{label(root)}' (SHA-256 {seen.hex()[:16]}...), not the pinned "
            "NVIDIA root"
        )


# -- OCSP ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OcspReply:
    """One reply as given, with the name the caller gave it (a file name, an index)."""

    name: str
    response: ocsp.OCSPResponse


def load_ocsp_reply(name: str, data: bytes | str) -> OcspReply:
    """A DER OCSP response, or its base64 text (NVIDIA's recorded ``.dat`` files)."""
    raw = data.encode("ascii", errors="replace") if isinstance(data, str) else bytes(data)
    if raw[:1] != b"\x30":
        try:
            raw = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            raise OcspError(f"OCSP reply {name!r} is neither DER nor base64") from None
    try:
        return OcspReply(name, ocsp.load_der_ocsp_response(raw))
    except ValueError:
        raise OcspError(f"OCSP reply {name!r} is not a DER OCSP response") from None


def matches(reply: OcspReply, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Is ``reply`` about ``cert`` (serial number, issuer name hash and issuer key hash)?"""
    response = reply.response
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return False
    try:
        algorithm = response.hash_algorithm
        request = (
            ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
        )  # computes the CertID hashes the way the responder does
    except (ValueError, UnsupportedAlgorithm):
        return False
    return (
        response.serial_number == cert.serial_number
        and hmac.compare_digest(response.issuer_name_hash, request.issuer_name_hash)
        and hmac.compare_digest(response.issuer_key_hash, request.issuer_key_hash)
    )


def _verify_signature(public_key: object, response: ocsp.OCSPResponse) -> None:
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise InvalidSignature
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(
            response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm
        )
    else:
        raise InvalidSignature


def _names_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        own = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # SHA-1 of key
        return hmac.compare_digest(response.responder_key_hash, own)
    return response.responder_name == cert.subject


def _can_sign_ocsp(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in usage


def check_ocsp(
    reply: OcspReply,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    max_age: timedelta = DEFAULT_OCSP_MAX_AGE,
) -> None:
    """``reply`` says GOOD for ``cert`` at ``at``, signed by ``issuer`` or a responder it
    delegated (its certificate signed by ``issuer``, with the OCSP-signing usage, valid at ``at``).
    Raises ``OcspError`` otherwise."""
    response = reply.response
    what = f"OCSP reply {reply.name!r} for '{label(cert)}'"
    # 1. answered, and about this certificate
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"{what}: responder status {response.response_status.name}")
    if not matches(reply, cert, issuer):
        raise OcspError(f"{what}: it is about another certificate (serial or issuer differs)")
    # 2. signed by the issuer or by a responder the issuer delegated
    signer = issuer
    if not _names_responder(response, issuer):
        delegated = [c for c in response.certificates if _names_responder(response, c)]
        if not delegated:
            raise OcspError(f"{what}: the responder is neither the issuer nor a delegate it names")
        signer = delegated[0]
        try:
            signer.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise OcspError(
                f"{what}: responder certificate '{label(signer)}' is not signed by "
                f"'{label(issuer)}'"
            ) from None
        if not _can_sign_ocsp(signer):
            raise OcspError(f"{what}: responder '{label(signer)}' lacks the OCSP-signing usage")
        if not signer.not_valid_before_utc <= at <= signer.not_valid_after_utc:
            raise OcspError(
                f"{what}: responder certificate '{label(signer)}' is valid "
                f"{stamp(signer.not_valid_before_utc)} .. {stamp(signer.not_valid_after_utc)}, "
                f"not at {stamp(at)}"
            )
    try:
        _verify_signature(signer.public_key(), response)
    except (InvalidSignature, UnsupportedAlgorithm):
        raise OcspError(f"{what}: the reply's signature does not verify") from None
    # 3. the status
    status = response.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        revoked = response.revocation_time_utc
        when = stamp(revoked) if revoked else "an unknown time"
        raise OcspError(f"{what}: REVOKED at {when}")
    if status != ocsp.OCSPCertStatus.GOOD:
        raise OcspError(f"{what}: status {status.name}, expected GOOD")
    # 4. fresh at ``at``
    this_update, next_update = response.this_update_utc, response.next_update_utc
    if at < this_update:
        raise OcspError(
            f"{what}: issued {stamp(this_update)}, after the verification time {stamp(at)}"
        )
    if next_update is not None and at > next_update:
        raise OcspError(
            f"{what}: stale, valid {stamp(this_update)} .. {stamp(next_update)}, not at {stamp(at)}"
        )
    if next_update is None and at - this_update > max_age:
        raise OcspError(
            f"{what}: issued {stamp(this_update)}, older than the allowed {max_age} at {stamp(at)}"
        )
