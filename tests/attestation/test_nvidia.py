"""NVIDIA Hopper GPU attestation on real evidence (../shared/attestation-samples/nvidia).

Times, and why:

- ``AT`` = 2025-10-24T12:00Z: NVIDIA recorded the RIM chains' OCSP replies at 11:32Z that day
  (valid for 24 h), and both RIM signing certificates were still valid (they expired 2026-02-22
  and 2026-06-01). The device chain's replies are a day's answer from 2025-08-21, so at ``AT``
  they are stale and must fail;
- ``DEVICE_OCSP_AT`` = 2025-08-21T12:00Z: inside the device replies' window (06:47Z + 24 h), and
  the RIM signing certificates were valid too; at that time the RIM chains' replies (issued two
  months later) are not yet valid;
- ``OLD_RIM_AT`` = 2025-01-15: the other VBIOS RIM's signing certificate expired 2025-06-22, so its
  mismatch is shown while its signature is still valid;
- ``TODAY`` = 2026-12-02 (the machine's date): the RIM signing certificates have expired.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.attestation import SAMPLES
from veil.attestation.abi_nvidia import (
    GpuReportFormatError,
    parse_gpu_evidence_json,
    parse_gpu_report,
)
from veil.attestation.nras import NrasError, check_nras, verify_nras_eat
from veil.attestation.pki_nvidia import (
    RIM_ROOT_SHA256,
    OcspError,
    check_ocsp,
    fingerprint,
    load_ocsp_reply,
)
from veil.attestation.report import VerificationReport
from veil.attestation.rim import RimError, load_rim
from veil.attestation.verify_nvidia import (
    check_gpu,
    gpu_evidence_digest,
    leaf_fwid,
    verify_gpu_report,
)

NV = SAMPLES / "nvidia"
OCSP_DIR = NV / "ocsp"
REPORT = (NV / "nvtrust_hopperAttestationReport.txt").read_bytes()
CHAIN = (NV / "nvtrust_hopperCertChain.txt").read_bytes()
DRIVER_RIM = "NV_GPU_DRIVER_GH100_550.90.07.swidtag"
VBIOS_RIM = "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag"
OTHER_VBIOS_RIM = "nvtrust_1010_0200_882_96005E0001_PROD.swidtag"
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")

TINFOIL_REPORT = (NV / "teep_tinfoil_h100_evidence.bin").read_bytes()
TINFOIL_CHAIN = (NV / "teep_tinfoil_h100_certchain.pem").read_bytes()
TINFOIL_NONCE = bytes.fromhex("080c405ce6789e1761445180029523df3ae49576043f7f0868413a38e5e9a84e")
TINFOIL_AT = datetime(2026, 6, 29, 2, 8, 14, tzinfo=UTC)  # when its TDX quote verified

AT = datetime(2025, 10, 24, 12, 0, tzinfo=UTC)
DEVICE_OCSP_AT = datetime(2025, 8, 21, 12, 0, tzinfo=UTC)
OLD_RIM_AT = datetime(2025, 1, 15, tzinfo=UTC)
TODAY = datetime(2026, 12, 2, tzinfo=UTC)


def rims(*names: str) -> dict[str, bytes]:
    return {name: (NV / name).read_bytes() for name in names or (DRIVER_RIM, VBIOS_RIM)}


def replies(kind: str) -> dict[str, bytes]:
    """``device``: the three device-chain replies; ``rim``: the four RIM-chain replies."""
    files = sorted(OCSP_DIR.glob("*.dat"))
    chosen = [f for f in files if ("gpu_certificate" in f.name) == (kind == "device")]
    return {f.name: f.read_bytes() for f in chosen}


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def raw_report() -> bytes:
    return bytes.fromhex(REPORT.decode().strip())


# -- parsing ------------------------------------------------------------------------------------------
def test_parses_nvidias_sample_report() -> None:
    report = parse_gpu_report(REPORT)
    assert report.nonce == NONCE
    assert report.driver_version == "550.90.07"
    assert report.vbios_version == "96.00.9F.00.01"
    assert len(report.measurements) == 64
    assert {b.index for b in report.measurements} == set(range(1, 65))
    assert all(len(b.value) == 48 for b in report.measurements)
    assert len(report.signature) == 96
    assert report.signed_bytes == raw_report()[:-96]
    assert parse_gpu_report(raw_report()) == report  # hex text and raw bytes alike


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "at least"),
        (raw_report()[:200], "overruns"),
        (raw_report()[:-1], "length fields say"),
        (raw_report() + b"\x00", "length fields say"),
        (b"\x10" + raw_report()[1:], "GET_MEASUREMENTS"),
        (raw_report()[:37] + b"\x11\x61" + raw_report()[39:], "MEASUREMENTS response"),
    ],
)
def test_malformed_reports_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(GpuReportFormatError, match=message):
        parse_gpu_report(data)


def test_a_block_count_that_disagrees_with_the_record_is_refused() -> None:
    data = bytearray(raw_report())
    data[37 + 4] = 63  # the response says 63 blocks; the record holds 64
    with pytest.raises(GpuReportFormatError, match="announces 63"):
        parse_gpu_report(bytes(data))


# -- NVIDIA's sample, end to end ------------------------------------------------------------------
def test_nvidia_sample_passes_at_its_time_with_rims_and_rim_ocsp() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    outcome = {c.name: c.ok for c in result.checks}
    assert outcome == {
        "GPU signature": True,
        "GPU certificate chain": True,
        "GPU FWID": True,
        "GPU nonce": True,
        "GPU RIM signatures": True,
        "GPU firmware versions": True,
        "GPU measurements": True,
        "GPU OCSP": None,  # no device-chain replies valid at AT were given: not checked
        "GPU RIM OCSP": True,
    }, result.failures
    assert result.ok
    assert result.measurements_matched == 33
    assert result.mismatched_indices == ()
    assert {r.kind: r.version for r in result.rims} == {
        "driver": "550.90.07",
        "vbios": "96.00.9F.00.01",
    }
    assert result.facts == {
        "gpu_driver": "550.90.07",
        "gpu_vbios": "96.00.9F.00.01",
        "gpu_nonce": NONCE.hex(),
        "gpu_measurements_matched": 33,
    }
    assert "HCC RIM L4 Signer" in result.check("GPU RIM OCSP").detail


def test_device_chain_ocsp_passes_at_its_own_time() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("device")
    )
    assert result.ok, result.failures
    step = result.check("GPU OCSP")
    assert step.ok is True
    for name in ("GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity"):
        assert name in step.detail
    assert result.check("GPU RIM OCSP").ok is None


def test_device_ocsp_replies_are_stale_two_months_later() -> None:
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=AT,
        expected_nonce=NONCE,
        rims=rims(),
        ocsp={**replies("device"), **replies("rim")},
    )
    step = result.check("GPU OCSP")
    assert step.ok is False
    assert "stale" in step.detail and "2025-08-22T06:47:07Z" in step.detail
    assert result.check("GPU RIM OCSP").ok is True
    assert not result.ok


def test_rim_ocsp_replies_are_not_yet_valid_before_they_were_issued() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    step = result.check("GPU RIM OCSP")
    assert step.ok is False
    assert "issued 2025-10-24T11:32:21Z, after the verification time" in step.detail


def test_an_ocsp_reply_for_no_given_certificate_fails() -> None:
    # RIM-chain replies, but no RIMs: they can be matched to nothing
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, ocsp=replies("rim"))
    step = result.check("GPU OCSP")
    assert step.ok is False
    assert "match no certificate given" in step.detail


def test_partial_device_ocsp_coverage_fails() -> None:
    some = dict(list(replies("device").items())[:2])
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=some
    )
    step = result.check("GPU OCSP")
    assert step.ok is False and "no OCSP reply for" in step.detail


def test_other_vbios_rim_mismatches_at_exactly_1_2_9_11() -> None:
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=OLD_RIM_AT,
        expected_nonce=NONCE,
        rims=rims(DRIVER_RIM, OTHER_VBIOS_RIM),
    )
    assert result.check("GPU RIM signatures").ok is True  # genuine, and valid on OLD_RIM_AT
    assert result.mismatched_indices == (1, 2, 9, 11)
    step = result.check("GPU measurements")
    assert step.ok is False and "index(es) 1, 2, 9, 11" in step.detail
    versions = result.check("GPU firmware versions")
    assert versions.ok is False
    assert "96.00.5E.00.01" in versions.detail and "96.00.9F.00.01" in versions.detail
    assert not result.ok


def test_a_driver_rim_alone_leaves_the_vbios_unchecked() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(DRIVER_RIM))
    step = result.check("GPU measurements")
    assert step.ok is False and "no VBIOS RIM" in step.detail
    assert result.measurements_matched == 21
    assert "no valid VBIOS RIM given" in result.check("GPU firmware versions").detail
    assert not result.ok


def test_today_the_rim_signing_certificates_have_expired() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=TODAY, expected_nonce=NONCE, rims=rims())
    step = result.check("GPU RIM signatures")
    assert step.ok is False
    assert "expired on 2026-06-01T02:08:29Z" in step.detail  # the driver RIM's signer
    assert "expired on 2026-02-22" in step.detail  # the VBIOS RIM's signer
    assert result.check("GPU measurements").ok is False
    assert result.check("GPU certificate chain").ok is True  # the device chain runs to 9999
    assert not result.ok


@pytest.mark.parametrize(
    "offset",
    [
        10,  # inside the request's nonce
        37 + 8 + 4 + 3 + 5,  # inside the first measurement value
        4117 - 96 - 50,  # inside the opaque data (FWID)
        4117 - 96 - 1,  # the last signed byte
    ],
)
def test_a_flipped_byte_in_the_signed_part_fails_the_signature(offset: int) -> None:
    result = verify_gpu_report(
        flip(raw_report(), offset), CHAIN, at=AT, expected_nonce=NONCE, rims=rims()
    )
    assert result.check("GPU signature").ok is False
    assert "does not verify" in result.check("GPU signature").detail
    assert not result.ok


def test_a_flipped_signature_byte_fails() -> None:
    result = verify_gpu_report(
        flip(raw_report(), 4117 - 20), CHAIN, at=AT, expected_nonce=NONCE, rims=rims()
    )
    assert result.check("GPU signature").ok is False


def test_a_flipped_fwid_byte_also_fails_the_fwid_binding() -> None:
    data = raw_report()
    fwid = parse_gpu_report(data).fwid
    assert fwid is not None
    offset = data.index(fwid) + 3
    result = verify_gpu_report(flip(data, offset), CHAIN, at=AT, expected_nonce=NONCE)
    step = result.check("GPU FWID")
    assert step.ok is False and step.expected == fwid.hex()
    assert leaf_fwid(x509.load_pem_x509_certificates(CHAIN)[0]) == fwid


def rim_with_flip(name: str, marker: bytes, shift: int) -> bytes:
    data = (NV / name).read_bytes()
    offset = data.index(marker) + shift
    changed = b"0" if data[offset : offset + 1] != b"0" else b"1"
    return data[:offset] + changed + data[offset + 1 :]


def test_a_flipped_byte_in_a_rim_measurement_fails() -> None:
    # measurement 7 of the driver RIM (active): one hex digit changed
    tampered = rim_with_flip(
        DRIVER_RIM, b'index="7" active="True" alternatives="1" ns2:Hash0="', 60
    )
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=AT,
        expected_nonce=NONCE,
        rims={DRIVER_RIM: tampered, VBIOS_RIM: (NV / VBIOS_RIM).read_bytes()},
    )
    step = result.check("GPU RIM signatures")
    assert step.ok is False and DRIVER_RIM in step.detail and "does not verify" in step.detail
    assert result.check("GPU measurements").ok is False
    assert not result.ok
    with pytest.raises(RimError, match="does not verify"):
        load_rim(tampered, at=AT, name=DRIVER_RIM)


def test_a_flipped_byte_in_a_rim_signature_fails() -> None:
    tampered = rim_with_flip(VBIOS_RIM, b"<ds:SignatureValue>", 30)
    with pytest.raises(RimError, match="does not verify"):
        load_rim(tampered, at=AT, name=VBIOS_RIM)


def test_wrong_nonce_fails() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=bytes(32), rims=rims())
    step = result.check("GPU nonce")
    assert step.ok is False
    assert "another nonce" in step.detail
    assert step.expected == "00" * 32 and step.actual == NONCE.hex()
    assert not result.ok


def test_no_nonce_is_not_checked_never_a_pass() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=None, rims=rims())
    assert result.check("GPU nonce").ok is None


def test_a_chain_to_another_pinned_root_fails() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), device_roots=(RIM_ROOT_SHA256,)
    )
    step = result.check("GPU certificate chain")
    assert step.ok is False and "not the pinned NVIDIA root" in step.detail


def _impostor_root(genuine: x509.Certificate) -> x509.Certificate:
    """A self-signed certificate with the genuine root's name and validity but our own key."""
    key = ec.generate_private_key(ec.SECP384R1())
    return (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.subject)
        .public_key(key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )


def test_a_chain_ending_at_an_impostor_root_fails() -> None:
    certs = x509.load_pem_x509_certificates(CHAIN)
    forged = [*certs[:-1], _impostor_root(certs[-1])]
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in forged)
    result = verify_gpu_report(REPORT, pem, at=AT, expected_nonce=NONCE)
    step = result.check("GPU certificate chain")
    assert step.ok is False and "is not signed by the next certificate" in step.detail
    # and pinning the impostor still fails on the genuine intermediate's signature
    result = verify_gpu_report(
        REPORT, pem, at=AT, expected_nonce=NONCE, device_roots=(fingerprint(forged[-1]),)
    )
    assert result.check("GPU certificate chain").ok is False


def test_a_rim_signed_under_another_root_fails() -> None:
    with pytest.raises(RimError, match="not the pinned NVIDIA root"):
        load_rim((NV / DRIVER_RIM).read_bytes(), at=AT, pinned_roots=(bytes(32),))


# -- OCSP in detail ----------------------------------------------------------------------------------
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


def test_unreadable_ocsp_reply_is_refused() -> None:
    with pytest.raises(OcspError, match="neither DER nor base64"):
        load_ocsp_reply("junk", b"not an ocsp reply!")
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, ocsp=[b"\x30\x03junk"])
    assert result.check("GPU OCSP").ok is False


# -- the live Tinfoil H100 ----------------------------------------------------------------------------
def test_tinfoil_h100_signature_chain_fwid_and_nonce_pass() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT, TINFOIL_CHAIN, at=TINFOIL_AT, expected_nonce=TINFOIL_NONCE
    )
    for name in ("GPU signature", "GPU certificate chain", "GPU FWID", "GPU nonce"):
        assert result.check(name).ok is True, result.check(name)
    assert result.facts["gpu_driver"] == "595.71.05"
    assert result.facts["gpu_vbios"] == "96.00.D9.00.02"


def test_tinfoil_h100_without_rims_or_pins_fails_measurements_saying_what_to_pin() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT, TINFOIL_CHAIN, at=TINFOIL_AT, expected_nonce=TINFOIL_NONCE
    )
    step = result.check("GPU measurements")
    assert step.ok is False
    assert "allowed_drivers=('595.71.05',)" in step.detail
    assert "allowed_vbios=('96.00.D9.00.02',)" in step.detail
    assert not result.ok


def test_tinfoil_h100_passes_with_both_versions_pinned() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT,
        TINFOIL_CHAIN,
        at=TINFOIL_AT,
        expected_nonce=TINFOIL_NONCE,
        allowed_drivers=("595.71.05",),
        allowed_vbios=("96.00.d9.00.02",),  # NVIDIA writes VBIOS versions in either case
    )
    assert result.ok, result.failures
    assert result.check("GPU firmware versions").ok is True
    assert result.check("GPU measurements").ok is True


@pytest.mark.parametrize(
    ("drivers", "vbios", "step", "ok"),
    [
        (("550.90.07",), ("96.00.D9.00.02",), "GPU firmware versions", False),
        (("595.71.05",), (), "GPU measurements", False),  # one pin alone is not enough
    ],
)
def test_tinfoil_h100_wrong_or_partial_pins_fail(
    drivers: tuple[str, ...], vbios: tuple[str, ...], step: str, ok: bool
) -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT,
        TINFOIL_CHAIN,
        at=TINFOIL_AT,
        expected_nonce=TINFOIL_NONCE,
        allowed_drivers=drivers,
        allowed_vbios=vbios,
    )
    assert result.check(step).ok is ok
    assert not result.ok


def test_tinfoil_gpu_evidence_digest_and_contents() -> None:
    document = (NV / "teep_tinfoil_gpu_evidence.json").read_bytes()
    assert gpu_evidence_digest(document).hex() == (
        "580ca6c7d7510dccc05551ed04ea1ce621d3c89d1ac02455871b38140c967fba"
    )
    assert gpu_evidence_digest(document + b" ") != gpu_evidence_digest(document)
    (item,) = parse_gpu_evidence_json(document)
    assert item.arch == "HOPPER"
    assert item.report == TINFOIL_REPORT
    assert item.cert_chain_pem == TINFOIL_CHAIN
    assert item.nonce == TINFOIL_NONCE
    # the bare SDK list (what NvidiaProvider serialises) reads the same
    assert parse_gpu_evidence_json(json.dumps(json.loads(document)["evidences"])) == (item,)
    with pytest.raises(GpuReportFormatError, match="lacks 'certificate'"):
        parse_gpu_evidence_json([{"evidence": ""}])


# -- the report steps --------------------------------------------------------------------------------
def test_check_gpu_appends_named_steps_and_facts() -> None:
    report = VerificationReport(subject="gpu")
    verified = check_gpu(
        report, REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    assert verified is not None
    names = [s.name for s in report.steps]
    assert names == [
        "GPU signature",
        "GPU certificate chain",
        "GPU FWID",
        "GPU nonce",
        "GPU RIM signatures",
        "GPU firmware versions",
        "GPU measurements",
        "GPU OCSP",
        "GPU RIM OCSP",
    ]
    assert report.step("GPU OCSP").outcome == "not checked"
    assert report.step("GPU measurements").outcome == "pass"
    assert report.ok
    assert report.facts["gpu_driver"] == "550.90.07"
    assert report.facts["gpu_measurements_matched"] == 33


def test_check_gpu_records_a_failure_with_expected_and_actual() -> None:
    report = VerificationReport(subject="gpu")
    check_gpu(report, REPORT, CHAIN, at=AT, expected_nonce=bytes(32))
    step = report.step("GPU nonce")
    assert step.outcome == "FAIL" and step.actual == NONCE.hex()
    assert not report.ok


def test_check_gpu_with_a_malformed_report_fails_one_step() -> None:
    report = VerificationReport(subject="gpu")
    assert check_gpu(report, b"\x11\xe0junk", CHAIN, at=AT, expected_nonce=NONCE) is None
    assert [s.outcome for s in report.steps] == ["FAIL"]
    assert "at least" in report.steps[0].detail
    report = VerificationReport(subject="gpu")
    assert check_gpu(report, REPORT, b"no pem here", at=AT, expected_nonce=NONCE) is None
    assert "not PEM" in report.steps[0].detail


# -- NVIDIA's remote verdict (NRAS) on the same Tinfoil evidence ----------------------------------
EAT = (NV / "teep_nras_eat_20260629.json").read_bytes()
JWKS = (NV / "teep_nras_jwks_subset_20260629.json").read_bytes()
NRAS_AT = datetime(2026, 6, 29, 2, 30, tzinfo=UTC)  # issued 02:08:03Z, valid one hour


def test_nras_verdict_verifies_at_its_time() -> None:
    verdict = verify_nras_eat(EAT, JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
    assert verdict.issued_at == datetime(2026, 6, 29, 2, 8, 3, tzinfo=UTC)
    gpu = verdict.gpus["GPU-0"]
    assert gpu["measres"] == "success" and gpu["secboot"] is True
    assert gpu["x-nvidia-gpu-driver-version"] == "595.71.05"  # the same GPU as the report
    report = VerificationReport(subject="gpu")
    assert check_nras(report, EAT, JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE) is not None
    assert report.step("NVIDIA remote verdict").ok


def test_nras_verdict_expires_after_an_hour() -> None:
    with pytest.raises(NrasError, match=r"valid 2026-06-29T02:08:03Z \.\. 2026-06-29T03:08:03Z"):
        verify_nras_eat(
            EAT, JWKS, at=datetime(2026, 6, 29, 4, tzinfo=UTC), expected_nonce=TINFOIL_NONCE
        )
    report = VerificationReport(subject="gpu")
    check_nras(report, EAT, JWKS, at=TODAY, expected_nonce=TINFOIL_NONCE)
    assert report.step("NVIDIA remote verdict").outcome == "FAIL"


def test_nras_verdict_for_another_nonce_fails() -> None:
    with pytest.raises(NrasError, match="eat_nonce"):
        verify_nras_eat(EAT, JWKS, at=NRAS_AT, expected_nonce=NONCE)


def _tampered_eat(part: int, position: int) -> bytes:
    document = json.loads(EAT)
    token = document[1]["GPU-0"]
    pieces = token.split(".")
    text = pieces[part]
    changed = "A" if text[position] != "A" else "B"
    pieces[part] = text[:position] + changed + text[position + 1 :]
    document[1]["GPU-0"] = ".".join(pieces)
    return json.dumps(document).encode()


def test_a_changed_nras_gpu_token_fails() -> None:
    with pytest.raises(NrasError, match="not the one the platform token names"):
        verify_nras_eat(_tampered_eat(1, 40), JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)


def test_an_nras_token_signed_by_another_key_fails() -> None:
    keys = json.loads(JWKS)
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    keys["keys"][0]["x"] = base64.urlsafe_b64encode(other.x.to_bytes(48, "big")).decode()
    keys["keys"][0]["y"] = base64.urlsafe_b64encode(other.y.to_bytes(48, "big")).decode()
    with pytest.raises(NrasError, match="differs from its x5c leaf"):
        verify_nras_eat(EAT, keys, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
    keys = json.loads(JWKS)
    keys["keys"][0]["kid"] = "someone-else"
    with pytest.raises(NrasError, match="not in the JWKS"):
        verify_nras_eat(EAT, keys, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
