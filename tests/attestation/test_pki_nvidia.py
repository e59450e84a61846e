"""OCSP replies in detail: NVIDIA's real ones, tampered, and a stand-in CA's (REVOKED, UNKNOWN,
an undelegated responder)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.attestation.nvidia_samples import (
    CHAIN,
    DEVICE_OCSP_AT,
    flip,
    replies,
)
from veil.attestation.pki_nvidia import OcspError, check_ocsp, load_ocsp_reply


def test_an_ocsp_reply_for_another_certificate_is_refused() -> None:
    certs = x509.load_pem_x509_certificates(CHAIN)
    reply = load_ocsp_reply(
        "l3", replies("device")["test_gpu_certificate_l3_base64encoded_ocsp_response.dat"]
    )
    check_ocsp(reply, certs[2], certs[3], DEVICE_OCSP_AT)  # the right one passes
    with pytest.raises(OcspError, match="another certificate"):
        check_ocsp(reply, certs[1], certs[2], DEVICE_OCSP_AT)


def test_an_ocsp_reply_with_a_flipped_signature_byte_is_refused() -> None:
    certs = x509.load_pem_x509_certificates(CHAIN)
    name = "test_gpu_certificate_l3_base64encoded_ocsp_response.dat"
    der = base64.b64decode(replies("device")[name])
    signature = ocsp.load_der_ocsp_response(der).signature
    tampered = flip(der, der.index(signature) + 10)
    with pytest.raises(OcspError, match="signature does not verify"):
        check_ocsp(load_ocsp_reply(name, tampered), certs[2], certs[3], DEVICE_OCSP_AT)


class StandInPki:
    """A stand-in CA with a delegated OCSP responder, made here: NVIDIA publishes no REVOKED
    reply, so this is what shows that one fails."""

    def __init__(self) -> None:
        self.start = datetime(2025, 1, 1, tzinfo=UTC)
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ca = self._cert("stand-in CA", self.ca_key, self.ca_key, ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf = self._cert("stand-in leaf", self.leaf_key, self.ca_key, ca=False)
        self.responder_key = ec.generate_private_key(ec.SECP384R1())
        self.responder = self._cert(
            "stand-in responder", self.responder_key, self.ca_key, ca=False, ocsp_signing=True
        )

    def _cert(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
        ocsp_signing: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in CA")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.start)
            .not_valid_after(self.start + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ocsp_signing:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
            )
        return builder.sign(signer, hashes.SHA384())

    def reply(self, status: ocsp.OCSPCertStatus, *, delegated: bool = True) -> bytes:
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=self.leaf,
            issuer=self.ca,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=self.start + timedelta(days=10),
            next_update=self.start + timedelta(days=11),
            revocation_time=self.start + timedelta(days=5)
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
            revocation_reason=None,
        )
        if delegated:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.responder)
            builder = builder.certificates([self.responder])
            response = builder.sign(self.responder_key, hashes.SHA384())
        else:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self.ca)
            response = builder.sign(self.ca_key, hashes.SHA384())
        return response.public_bytes(Encoding.DER)


def test_stand_in_ocsp_good_revoked_and_undelegated_responder() -> None:
    pki = StandInPki()
    at = pki.start + timedelta(days=10, hours=1)
    check_ocsp(load_ocsp_reply("good", pki.reply(ocsp.OCSPCertStatus.GOOD)), pki.leaf, pki.ca, at)
    check_ocsp(
        load_ocsp_reply("direct", pki.reply(ocsp.OCSPCertStatus.GOOD, delegated=False)),
        pki.leaf,
        pki.ca,
        at,
    )
    with pytest.raises(OcspError, match="REVOKED at 2025-01-06"):
        check_ocsp(
            load_ocsp_reply("revoked", pki.reply(ocsp.OCSPCertStatus.REVOKED)), pki.leaf, pki.ca, at
        )
    with pytest.raises(OcspError, match="UNKNOWN"):
        check_ocsp(
            load_ocsp_reply("unknown", pki.reply(ocsp.OCSPCertStatus.UNKNOWN)), pki.leaf, pki.ca, at
        )
    # a responder the issuer did not delegate: its certificate signed by another CA
    other = StandInPki()
    pki.responder, pki.responder_key = other.responder, other.responder_key
    with pytest.raises(OcspError, match="not signed by"):
        check_ocsp(
            load_ocsp_reply("rogue", pki.reply(ocsp.OCSPCertStatus.GOOD)), pki.leaf, pki.ca, at
        )
