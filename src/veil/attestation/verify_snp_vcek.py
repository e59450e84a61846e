"""Steps 1-3 of the SEV-SNP checks (``verify_snp.py`` runs them): the report's VCEK signature,
the VCEK's chain to AMD's pinned root, and the VCEK's chip id and TCB extensions.

A report is signed by its chip's VCEK (Versioned Chip Endorsement Key), a key the AMD secure
processor derives from the chip's unique secret and its current firmware TCB. AMD's key
distribution service (KDS) hands out the VCEK certificate for a chip id and TCB, and a
``cert_chain`` (ASK, then ARK) per product.

1. signature    -- the VCEK's ECDSA P-384 / SHA-384 signature over report bytes 0x000-0x29F
2. chain        -- VCEK <- ASK <- ARK, RSA-PSS SHA-384, every certificate valid at ``at``, and
                   the ARK is AMD's root for the product (pinned by SHA-256 fingerprint)
3. extensions   -- the VCEK is the one for this chip and TCB: its chip-id and TCB extensions
                   equal the report's CHIP_ID and REPORTED_TCB (else a VCEK of another chip, or of
                   an older TCB, could vouch for the report)

Each check raises ``SnpVerificationError`` naming its step. Nothing is fetched here.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Mapping
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from veil.attestation.abi_snp import PRODUCTS, SIGNATURE_ALGO_ECDSA_P384_SHA384, SnpReport
from veil.attestation.evidence import AttestationError
from veil.attestation.verify_tdx import as_utc

# SHA-256 fingerprints of the DER of AMD's root keys (ARK), one per product. Taken from the AMD KDS
# replies recorded in ../shared/attestation-samples/sev-snp/ask_ark_{milan,genoa,turin}.pem
# (https://kdsintf.amd.com/vcek/v1/<product>/cert_chain, the second certificate of each).
ARK_SHA256: Mapping[str, bytes] = {
    "Milan": bytes.fromhex("69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
    "Genoa": bytes.fromhex("4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
    "Turin": bytes.fromhex("1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"),
}

# AMD's VCEK extensions (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
# Interface Specification", publication 57230).
OID_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
OID_TCB = {
    "bootloader": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1"),
    "tee": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2"),
    "snp": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3"),
    "microcode": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8"),
    "fmc": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9"),  # Turin only
}

STEP_SIGNATURE = "SNP signature"
STEP_CHAIN = "SNP certificate chain"
STEP_EXTENSIONS = "SNP VCEK extensions"
STEP_POLICY = "SNP policy"
STEP_TCB = "SNP TCB"
STEP_MEASUREMENTS = "measurements"

_PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


class SnpVerificationError(AttestationError):
    """A check of steps 1-3 failed. ``step`` names it (``STEP_*``), ``reason`` says why."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


# -- loading ---------------------------------------------------------------------------------------
def load_vcek(vcek_der: bytes) -> x509.Certificate:
    """The VCEK certificate from DER.

    AMD issues every VCEK with serial number 0, which RFC 5280 forbids; ``cryptography`` warns
    about it on load. That one warning is silenced here and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Parsed a serial number which wasn't positive",
            category=CryptographyDeprecationWarning,
        )
        try:
            return x509.load_der_x509_certificate(bytes(vcek_der))
        except ValueError:
            raise SnpVerificationError(
                STEP_SIGNATURE, "the VCEK is not a DER X.509 certificate"
            ) from None


def load_cert_chain(cert_chain_pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) from a PEM ``cert_chain`` as AMD KDS serves it: the ASK first, then the ARK."""
    try:
        certs = x509.load_pem_x509_certificates(bytes(cert_chain_pem))
    except ValueError:
        raise SnpVerificationError(
            STEP_CHAIN, "the cert_chain is not PEM X.509 certificates (expected ASK, then ARK)"
        ) from None
    if len(certs) != 2:
        raise SnpVerificationError(
            STEP_CHAIN, f"the cert_chain must hold 2 certificates (ASK, then ARK), got {len(certs)}"
        )
    return certs[0], certs[1]


# -- step 1: the report's signature ---------------------------------------------------------------
def check_signature(report: SnpReport, vcek: x509.Certificate) -> None:
    """The VCEK signed the report's first 0x2A0 bytes (ECDSA P-384 with SHA-384)."""
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise SnpVerificationError(
            STEP_SIGNATURE,
            f"signature algorithm {report.signature_algo} is not 1 (ECDSA P-384 with SHA-384)",
        )
    if report.signing_key != "VCEK":
        raise SnpVerificationError(
            STEP_SIGNATURE,
            f"the report is signed by the {report.signing_key} key, and only VCEK-signed reports "
            "are verified here",
        )
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SnpVerificationError(STEP_SIGNATURE, "the VCEK's key is not an ECDSA P-384 key")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SnpVerificationError(
            STEP_SIGNATURE,
            "the report's signature does not verify with this VCEK: the report was altered or "
            "signed by another chip",
        ) from None


# -- step 2: VCEK <- ASK <- ARK ----------------------------------------------------------------------
def product_name(product: str) -> str:
    for known in PRODUCTS:
        if product.lower() == known.lower():
            return known
    raise SnpVerificationError(
        STEP_CHAIN, f"unknown SEV-SNP product {product!r} (known: {', '.join(PRODUCTS)})"
    )


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """``issuer`` signed ``cert`` with RSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    ):
        raise SnpVerificationError(
            STEP_CHAIN, f"the {what} is not signed with RSA-PSS SHA-384, as AMD signs"
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except UnsupportedAlgorithm:
        # An older cryptography without PSS support here: check names and signature ourselves.
        key = issuer.public_key()
        if cert.issuer != issuer.subject or not isinstance(key, rsa.RSAPublicKey):
            raise SnpVerificationError(
                STEP_CHAIN, f"the {what} was not issued by the next certificate"
            ) from None
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS_SHA384, hashes.SHA384())
        except InvalidSignature:
            raise SnpVerificationError(
                STEP_CHAIN, f"the {what}'s signature does not verify"
            ) from None
    except ValueError:
        raise SnpVerificationError(
            STEP_CHAIN, f"the {what} was not issued by the next certificate (names differ)"
        ) from None
    except (InvalidSignature, TypeError):
        raise SnpVerificationError(STEP_CHAIN, f"the {what}'s signature does not verify") from None


def _product_of_vcek(vcek: x509.Certificate) -> str | None:
    """The product named in the VCEK's product-name extension ("Milan-B0" -> "Milan")."""
    try:
        value = vcek.extensions.get_extension_for_oid(OID_PRODUCT_NAME).value
    except x509.ExtensionNotFound:
        return None
    name = _der_ia5(getattr(value, "value", b""))
    if name is None:
        raise SnpVerificationError(STEP_CHAIN, "the VCEK's product-name extension is malformed")
    stem = name.split("-", 1)[0]
    for known in PRODUCTS:
        if stem.lower() == known.lower():
            return known
    raise SnpVerificationError(STEP_CHAIN, f"the VCEK names an unknown product {name!r}")


def check_chain(
    vcek: x509.Certificate,
    ask: x509.Certificate,
    ark: x509.Certificate,
    *,
    at: datetime,
    product: str | None = None,
    report_product: str | None = None,
) -> str:
    """VCEK <- ASK <- ARK to AMD's pinned root, all valid at ``at``; returns the product.

    The product is the caller's, if given; otherwise the one whose pinned ARK this chain ends
    at. The VCEK's product-name extension and the report's CPUID (``report_product``) must agree.
    """
    when = as_utc(at)
    fingerprint = ark.fingerprint(hashes.SHA256())
    if product is not None:
        chosen = product_name(product)
        if not hmac.compare_digest(fingerprint, ARK_SHA256[chosen]):
            raise SnpVerificationError(
                STEP_CHAIN,
                f"the chain's ARK (SHA-256 {fingerprint.hex()[:16]}…) is not AMD's {chosen} root "
                f"(pinned {ARK_SHA256[chosen].hex()[:16]}…)",
            )
    else:
        found = [p for p, pin in ARK_SHA256.items() if hmac.compare_digest(fingerprint, pin)]
        if not found:
            raise SnpVerificationError(
                STEP_CHAIN,
                f"the chain's ARK (SHA-256 {fingerprint.hex()[:16]}…) is none of AMD's pinned "
                f"roots ({', '.join(PRODUCTS)})",
            )
        chosen = found[0]
    for source, seen in (("VCEK", _product_of_vcek(vcek)), ("report's CPUID", report_product)):
        if seen is not None and seen != chosen:
            raise SnpVerificationError(
                STEP_CHAIN, f"the {source} names a {seen} processor, but the chain is {chosen}'s"
            )
    _verify_issued_by(ark, ark, f"ARK ({chosen})")
    _verify_issued_by(ask, ark, "ASK")
    _verify_issued_by(vcek, ask, "VCEK")
    for what, cert in (("VCEK", vcek), ("ASK", ask), ("ARK", ark)):
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not start <= when <= end:
            raise SnpVerificationError(
                STEP_CHAIN,
                f"the {what} is valid {_when(start)} to {_when(end)}, not at the verification "
                f"time {_when(when)}",
            )
    return chosen


# -- step 3: the VCEK is this chip's, at this TCB --------------------------------------------------
def _der_uint(value: bytes) -> int | None:
    """A short DER INTEGER (tag 02, one length byte, non-negative, minimal), else None.

    The VCEK's TCB extensions each hold one such INTEGER; ``cryptography`` exposes no generic DER
    decoder, and a strict check of one 3-to-4-byte TLV is all that is needed.
    """
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 2:
        return None
    body = value[2:]
    if body[0] & 0x80 or (len(body) > 1 and body[0] == 0 and not body[1] & 0x80):
        return None
    return int.from_bytes(body, "big")


def _der_ia5(value: bytes) -> str | None:
    """A short DER IA5String (tag 16, one length byte), else None."""
    if len(value) < 2 or value[0] != 0x16 or value[1] != len(value) - 2 or value[1] > 0x7F:
        return None
    try:
        return value[2:].decode("ascii")
    except UnicodeDecodeError:
        return None


def _extension_bytes(vcek: x509.Certificate, oid: x509.ObjectIdentifier, name: str) -> bytes:
    try:
        value = vcek.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise SnpVerificationError(
            STEP_EXTENSIONS, f"the VCEK has no {name} extension ({oid.dotted_string})"
        ) from None
    return bytes(getattr(value, "value", b""))


def check_vcek_extensions(report: SnpReport, vcek: x509.Certificate) -> None:
    """The VCEK's chip id and TCB extensions equal the report's CHIP_ID and REPORTED_TCB."""
    names = vcek.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != ["SEV-VCEK"]:
        shown = ", ".join(str(n.value) for n in names) or "none"
        raise SnpVerificationError(
            STEP_EXTENSIONS, f"the certificate is not a VCEK (subject CN {shown}, not SEV-VCEK)"
        )
    hwid = _extension_bytes(vcek, OID_HWID, "chip id")
    if len(hwid) == 66 and hwid[:2] == b"\x04\x40":  # tolerate a DER OCTET STRING wrapper
        hwid = hwid[2:]
    if not hmac.compare_digest(hwid, report.chip_id):
        raise SnpVerificationError(
            STEP_EXTENSIONS,
            f"the VCEK is for chip {hwid.hex()[:16]}…, the report is from chip "
            f"{report.chip_id.hex()[:16]}…",
        )
    expected = report.reported_tcb.components()
    wrong = []
    for name, svn in expected.items():
        encoded = _extension_bytes(vcek, OID_TCB[name], f"{name} TCB")
        value = _der_uint(encoded)
        if value is None:
            raise SnpVerificationError(
                STEP_EXTENSIONS, f"the VCEK's {name} TCB extension is not a DER INTEGER"
            )
        if value != svn:
            wrong.append(f"{name} {value} in the VCEK, {svn} in the report")
    if wrong:
        raise SnpVerificationError(
            STEP_EXTENSIONS,
            "the VCEK is for another TCB than the report's REPORTED_TCB: " + "; ".join(wrong),
        )
