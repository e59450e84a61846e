"""OCSP replies checked in the page (ocsp.ts: PKI.js + WebCrypto) against Python's check_ocsp, on
a stand-in CA's replies made here: NVIDIA publishes no REVOKED, UNKNOWN or stale reply, nor one
from a rogue responder, so these show that each fails, with Python's words. NVIDIA's own recorded
replies, in the GPU steps, are test_gpu_rim.py's."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.web.browser import Browser
from veil.attestation.pki_nvidia import OcspError, check_ocsp, load_ocsp_reply

SCRIPT = (Path(__file__).resolve().parent / "gpu_rim.js").read_text()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    start: datetime,
    ocsp_signing: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    return builder.sign(signer, hashes.SHA384())


class StandIn:
    """A stand-in CA, a leaf and a delegated OCSP responder (NVIDIA publishes no REVOKED reply)."""

    def __init__(self) -> None:
        self.start = datetime(2025, 1, 1, tzinfo=UTC)
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ca = _cert(
            "stand-in CA", self.ca_key, "stand-in CA", self.ca_key, ca=True, start=self.start
        )
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf = _cert(
            "stand-in leaf", self.leaf_key, "stand-in CA", self.ca_key, ca=False, start=self.start
        )
        self.responder_key = ec.generate_private_key(ec.SECP384R1())
        self.responder = _cert(
            "stand-in responder", self.responder_key, "stand-in CA", self.ca_key, ca=False,
            start=self.start, ocsp_signing=True,
        )  # fmt: skip

    def reply(
        self, status: ocsp.OCSPCertStatus, *, delegated: bool = True, next_update: bool = True
    ) -> bytes:
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=self.leaf,
            issuer=self.ca,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=self.start + timedelta(days=10),
            next_update=self.start + timedelta(days=11) if next_update else None,
            revocation_time=self.start + timedelta(days=5)
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
            revocation_reason=None,
        )
        if delegated:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.responder)
            response = builder.certificates([self.responder]).sign(
                self.responder_key, hashes.SHA384()
            )
        else:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self.ca)
            response = builder.sign(self.ca_key, hashes.SHA384())
        return response.public_bytes(Encoding.DER)


def _direct() -> tuple[dict[str, dict[str, Any]], tuple[x509.Certificate, x509.Certificate]]:
    pki, other = StandIn(), StandIn()
    good, at = ocsp.OCSPCertStatus.GOOD, pki.start + timedelta(days=10, hours=1)
    made = {
        "good": (pki.reply(good), at),
        "direct": (pki.reply(good, delegated=False), at),
        "revoked": (pki.reply(ocsp.OCSPCertStatus.REVOKED), at),
        "unknown": (pki.reply(ocsp.OCSPCertStatus.UNKNOWN), at),
        "stale": (pki.reply(good), pki.start + timedelta(days=12)),
        "early": (pki.reply(good), pki.start + timedelta(days=9)),
        "no_next_update_fresh": (pki.reply(good, next_update=False), at),
        "no_next_update_old": (pki.reply(good, next_update=False), pki.start + timedelta(days=12)),
    }
    made["try_later"] = (
        ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(
            Encoding.DER
        ),
        at,
    )
    made["for_another_certificate"] = (other.reply(good), at)
    pki.responder, pki.responder_key = other.responder, other.responder_key
    made["rogue_responder"] = (pki.reply(good), at)
    pki.responder, pki.responder_key = pki.leaf, pki.leaf_key  # signed by the CA, no OCSP usage
    made["responder_without_usage"] = (pki.reply(good), at)
    leaf, ca = b64(pki.leaf.public_bytes(Encoding.DER)), b64(pki.ca.public_bytes(Encoding.DER))
    entries = {
        name: {
            "reply": b64(reply),
            "cert": leaf,
            "issuer": ca,
            "at": iso(when),
            "py": (reply, when),
        }
        for name, (reply, when) in made.items()
    }
    return entries, (pki.leaf, pki.ca)


@pytest.fixture(scope="module")
def results(browser: Browser, console_url: str) -> dict[str, Any]:
    direct, (leaf, ca) = _direct()
    arg = {
        "cases": {},
        "direct": {name: {k: v for k, v in d.items() if k != "py"} for name, d in direct.items()},
        "bundle": None,
    }
    page = browser.page()
    try:
        page.goto(console_url)
        out: dict[str, Any] = page.evaluate(SCRIPT, arg)
        assert page.errors() == []
    finally:
        page.close()
    python = {}
    for name, d in direct.items():
        reply, when = d["py"]
        try:
            check_ocsp(load_ocsp_reply(name, reply), leaf, ca, when)
            python[name] = "ok"
        except OcspError as exc:
            python[name] = str(exc)
    out["python_direct"] = python
    return out


def test_ocsp_replies_fail_as_python_says(results: dict[str, Any]) -> None:
    assert results["direct"] == results["python_direct"]
    direct = results["direct"]
    assert direct["good"] == direct["direct"] == direct["no_next_update_fresh"] == "ok"
    assert "REVOKED at 2025-01-06T00:00:00Z" in direct["revoked"]
    assert "status UNKNOWN, expected GOOD" in direct["unknown"]
    assert "stale" in direct["stale"] and "after the verification time" in direct["early"]
    assert "older than the allowed 1 day, 0:00:00" in direct["no_next_update_old"]
    assert "is not signed by 'stand-in CA'" in direct["rogue_responder"]
    assert "lacks the OCSP-signing usage" in direct["responder_without_usage"]
    assert direct["try_later"].endswith("responder status TRY_LATER")
    assert "it is about another certificate" in direct["for_another_certificate"]
