"""Is this NVIDIA Hopper GPU genuine, running the firmware we expect, and answering our nonce?

``verify_gpu_report`` checks a GPU attestation report offline, at a time the caller gives:

1. GPU signature        -- the device leaf key's ECDSA P-384 / SHA-384 signature over request ||
                           response minus the signature (so over the caller's nonce too)
2. GPU certificate chain-- leaf <- ... <- root, each signed by the next, all valid at ``at``; the
                           root is NVIDIA's pinned device identity root
3. GPU FWID             -- the firmware hash in the leaf's TcbInfo extension (OID 2.23.133.5.4.1,
                           written by the GPU's boot ROM when it derives the leaf key) equals the
                           FWID the firmware reports, so the report came from the measured firmware
4. GPU nonce            -- the request's nonce is the caller's (constant-time)
5. GPU RIM signatures   -- each RIM's XML-DSig and signing chain to NVIDIA's pinned RIM root at ``at``
6. GPU firmware versions-- the driver RIM is for the reported driver, the VBIOS RIM for the
                           reported VBIOS, and both versions are among the caller's pins, if any
7. GPU measurements     -- every active RIM measurement equals the report's block at that index
                           (any listed alternative). Without RIMs this fails unless the caller pins
                           both the driver and the VBIOS version: nothing else vouches for them
8. GPU OCSP             -- given OCSP replies for the device chain say GOOD at ``at``
9. GPU RIM OCSP         -- the same for the RIM signing chains

A step that cannot apply (no nonce given, no OCSP replies for a chain) is "not checked", which is
never a pass. NVIDIA's own ``nv-local-gpu-verifier`` is not used: it always asks NVIDIA's OCSP and
RIM services over the network and cannot take recorded replies, so it cannot verify offline.

NVIDIA's OCSP responders do not know the device leaf (the GPU derives it at every boot), so the
device chain's OCSP covers the certificates between leaf and root; a RIM chain's covers all but
the root.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ

from veil.attestation.abi_nvidia import GpuReport, GpuReportFormatError, parse_gpu_report
from veil.attestation.evidence import AttestationError
from veil.attestation.pki_nvidia import (
    DEFAULT_OCSP_MAX_AGE,
    DEVICE_ROOT_SHA256,
    RIM_ROOT_SHA256,
    ChainError,
    OcspError,
    OcspReply,
    check_ocsp,
    label,
    load_ocsp_reply,
    matches,
    stamp,
    verify_chain,
)
from veil.attestation.rim import Rim, RimError, load_rim

if TYPE_CHECKING:  # for typing only, so that report.py may import this module
    from veil.attestation.report import VerificationReport

__all__ = [
    "GpuCheck",
    "GpuVerification",
    "check_gpu",
    "gpu_evidence_digest",
    "verify_gpu_report",
]

TCB_INFO_OID = x509.ObjectIdentifier("2.23.133.5.4.1")  # TCG DICE TcbInfo
SHA384_OID = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.2")

STEP_SIGNATURE = "GPU signature"
STEP_CHAIN = "GPU certificate chain"
STEP_FWID = "GPU FWID"
STEP_NONCE = "GPU nonce"
STEP_RIM_SIGNATURES = "GPU RIM signatures"
STEP_VERSIONS = "GPU firmware versions"
STEP_MEASUREMENTS = "GPU measurements"
STEP_OCSP = "GPU OCSP"
STEP_RIM_OCSP = "GPU RIM OCSP"


@dataclass(frozen=True)
class GpuCheck:
    """One step's outcome: ``ok`` None means "not checked" (cannot apply; never a pass)."""

    name: str
    ok: bool | None
    detail: str
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True)
class GpuVerification:
    """Every step's outcome for one report; ``ok`` when none failed."""

    report: GpuReport
    verified_at: datetime
    checks: tuple[GpuCheck, ...]
    rims: tuple[Rim, ...] = ()
    mismatched_indices: tuple[int, ...] = ()
    measurements_matched: int = 0
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks)

    @property
    def failures(self) -> tuple[GpuCheck, ...]:
        return tuple(check for check in self.checks if check.ok is False)

    def check(self, name: str) -> GpuCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


def _as_utc(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise TypeError("the verification time must be a datetime")
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def gpu_evidence_digest(document_bytes: bytes) -> bytes:
    """SHA-256 of the exact GPU evidence bytes a CPU report commits to (CPU <-> GPU binding)."""
    return hashlib.sha256(bytes(document_bytes)).digest()


# -- the steps ---------------------------------------------------------------------------------------
def _load_chain(cert_chain_pem: bytes | str) -> list[x509.Certificate]:
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


def _check_signature(report: GpuReport, leaf: x509.Certificate) -> GpuCheck:
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


def _check_chain(chain: list[x509.Certificate], at: datetime, roots: Iterable[bytes]) -> GpuCheck:
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


def _check_fwid(report: GpuReport, leaf: x509.Certificate) -> GpuCheck:
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


def _check_nonce(report: GpuReport, expected: bytes | None) -> GpuCheck:
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


def _load_rims(
    rims: Sequence[bytes] | Mapping[str, bytes], at: datetime, roots: Iterable[bytes]
) -> tuple[list[Rim], list[str]]:
    items = (
        list(rims.items())
        if isinstance(rims, Mapping)
        else [(f"RIM {i + 1}", data) for i, data in enumerate(rims)]
    )
    loaded, problems = [], []
    pins = tuple(roots)
    for name, data in items:
        try:
            loaded.append(load_rim(bytes(data), at=at, name=name, pinned_roots=pins))
        except RimError as exc:
            problems.append(str(exc))
    return loaded, problems


def _same_version(a: str, b: str) -> bool:
    """Versions as NVIDIA writes them; VBIOS hex digits appear in either case."""
    return a.strip().lower() == b.strip().lower()


def _check_versions(
    report: GpuReport,
    rims: list[Rim],
    rims_given: int,
    allowed_drivers: Sequence[str],
    allowed_vbios: Sequence[str],
) -> GpuCheck:
    driver, vbios = report.driver_version, report.vbios_version
    actual = f"driver {driver}, VBIOS {vbios}"
    if not rims_given and not allowed_drivers and not allowed_vbios:
        return GpuCheck(STEP_VERSIONS, None, f"no RIMs and no version pins ({actual})")
    problems = []
    if driver is None or vbios is None:
        problems.append("the report does not state its driver and VBIOS versions")
    if rims_given:
        for kind, reported in (("driver", driver), ("vbios", vbios)):
            of_kind = [r for r in rims if r.kind == kind]
            shown = "VBIOS" if kind == "vbios" else kind
            if not of_kind:
                problems.append(f"no valid {shown} RIM given")
            for rim in of_kind:
                if reported is None or not _same_version(rim.version, reported):
                    problems.append(
                        f"{shown} RIM {rim.name!r} is for {rim.version}, the GPU runs {reported}"
                    )
            if len(of_kind) > 1:
                problems.append(f"more than one {shown} RIM given")
    if allowed_drivers and not any(driver and _same_version(driver, p) for p in allowed_drivers):
        problems.append(f"driver {driver} is not among the pinned {', '.join(allowed_drivers)}")
    if allowed_vbios and not any(vbios and _same_version(vbios, p) for p in allowed_vbios):
        problems.append(f"VBIOS {vbios} is not among the pinned {', '.join(allowed_vbios)}")
    expected = "; ".join(
        part
        for part in (
            f"RIM driver {', '.join(r.version for r in rims if r.kind == 'driver')}"
            if rims
            else "",
            f"RIM VBIOS {', '.join(r.version for r in rims if r.kind == 'vbios')}" if rims else "",
            f"pinned drivers {', '.join(allowed_drivers)}" if allowed_drivers else "",
            f"pinned VBIOS {', '.join(allowed_vbios)}" if allowed_vbios else "",
        )
        if part
    )
    if problems:
        return GpuCheck(STEP_VERSIONS, False, "; ".join(problems), expected=expected, actual=actual)
    sources = " and ".join(
        s
        for s, on in (
            ("the RIMs", rims_given),
            ("the version pins", allowed_drivers or allowed_vbios),
        )
        if on
    )
    return GpuCheck(STEP_VERSIONS, True, f"{actual} match {sources}")


def _check_measurements(
    report: GpuReport,
    rims: list[Rim],
    rim_problems: list[str],
    allowed_drivers: Sequence[str],
    allowed_vbios: Sequence[str],
) -> tuple[GpuCheck, tuple[int, ...], int]:
    driver, vbios = report.driver_version, report.vbios_version
    if not rims and not rim_problems:
        if allowed_drivers and allowed_vbios:
            return (
                GpuCheck(
                    STEP_MEASUREMENTS,
                    True,
                    f"no RIM given: the {len(report.measurements)} measurements are not compared; "
                    f"the firmware is accepted by its signed versions (driver {driver}, VBIOS "
                    f"{vbios}), which the version pins decide",
                ),
                (),
                0,
            )
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                "no RIM given and the firmware versions are not pinned, so nothing vouches for the "
                f"GPU's measurements: supply NVIDIA's driver and VBIOS RIMs, or pin "
                f"allowed_drivers=('{driver}',) and allowed_vbios=('{vbios}',)",
            ),
            (),
            0,
        )
    # 1. the golden values: driver and VBIOS RIMs must not both claim an index
    golden: dict[int, tuple[tuple[bytes, ...], str]] = {}
    clashes = []
    for rim in rims:
        for index, values in rim.measurements.items():
            if index in golden:
                clashes.append(index)
            golden[index] = (values, rim.name)
    if clashes:
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"two RIMs both set measurement index(es) {', '.join(map(str, sorted(clashes)))}",
            ),
            tuple(sorted(clashes)),
            0,
        )
    # 2. compare each active one with the report's block (RIM index i = SPDM block i + 1)
    mismatched = []
    for index, (values, _) in sorted(golden.items()):
        block = report.measurement(index + 1)
        seen = block.value if block is not None else b""
        if not any(hmac.compare_digest(seen, value) for value in values):
            mismatched.append(index)
    matched = len(golden) - len(mismatched)
    unverified = " (against RIMs whose signatures did not all verify)" if rim_problems else ""
    if not golden:
        return GpuCheck(STEP_MEASUREMENTS, False, "no valid RIM to compare with"), (), 0
    if mismatched:
        first = mismatched[0]
        block = report.measurement(first + 1)
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"{len(mismatched)} of {len(golden)} active measurements differ from the RIMs, at "
                f"index(es) {', '.join(map(str, mismatched))}{unverified}",
                expected=golden[first][0][0].hex(),
                actual=block.value.hex() if block is not None else None,
            ),
            tuple(mismatched),
            matched,
        )
    if rim_problems:
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"all {matched} active measurements match, but not every RIM verified",
            ),
            (),
            matched,
        )
    kinds = {rim.kind for rim in rims}
    if kinds != {"driver", "vbios"}:
        absent = "VBIOS" if "vbios" not in kinds else "driver"
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"all {matched} active measurements match, but no {absent} RIM was given: the "
                f"{absent}'s measurements are unchecked",
            ),
            (),
            matched,
        )
    return (
        GpuCheck(
            STEP_MEASUREMENTS,
            True,
            f"all {matched} active measurements match the RIMs ({', '.join(r.name for r in rims)})",
        ),
        (),
        matched,
    )


def _load_replies(
    ocsp_replies: Mapping[str, bytes | str] | Sequence[bytes | str],
) -> tuple[list[OcspReply], list[str]]:
    items = (
        list(ocsp_replies.items())
        if isinstance(ocsp_replies, Mapping)
        else [(f"reply {i + 1}", data) for i, data in enumerate(ocsp_replies)]
    )
    replies, problems = [], []
    for name, data in items:
        try:
            replies.append(load_ocsp_reply(str(name), data))
        except OcspError as exc:
            problems.append(str(exc))
    return replies, problems


def _ocsp_step(
    name: str,
    what: str,
    pairs: list[tuple[x509.Certificate, x509.Certificate]],
    replies: list[OcspReply],
    used: set[int],
    at: datetime,
    max_age: timedelta,
    extra_problems: list[str],
) -> GpuCheck:
    covered, missing, problems = [], [], list(extra_problems)
    for cert, issuer in pairs:
        mine = [i for i, reply in enumerate(replies) if matches(reply, cert, issuer)]
        if not mine:
            missing.append(label(cert))
            continue
        used.update(mine)
        for i in mine:
            try:
                check_ocsp(replies[i], cert, issuer, at, max_age)
            except OcspError as exc:
                problems.append(str(exc))
        covered.append(label(cert))
    if not covered and not problems:
        return GpuCheck(name, None, f"no OCSP replies for the {what}: revocation not checked")
    if missing:
        problems.append(f"no OCSP reply for {', '.join(missing)}")
    if problems:
        return GpuCheck(name, False, "; ".join(problems))
    return GpuCheck(name, True, f"GOOD at {stamp(at)} for {', '.join(covered)}")


def _unique_pairs(rims: list[Rim]) -> list[tuple[x509.Certificate, x509.Certificate]]:
    pairs, seen = [], set()
    for rim in rims:
        for cert, issuer in itertools.pairwise(rim.chain):
            key = (cert.serial_number, cert.issuer.public_bytes())
            if key not in seen:
                seen.add(key)
                pairs.append((cert, issuer))
    return pairs


# -- the entry points -------------------------------------------------------------------------------
def verify_gpu_report(
    report: bytes | str,
    cert_chain_pem: bytes | str,
    *,
    at: datetime,
    expected_nonce: bytes | None,
    rims: Sequence[bytes] | Mapping[str, bytes] = (),
    ocsp: Mapping[str, bytes | str] | Sequence[bytes | str] = (),
    allowed_drivers: Sequence[str] = (),
    allowed_vbios: Sequence[str] = (),
    ocsp_max_age: timedelta = DEFAULT_OCSP_MAX_AGE,
    device_roots: Iterable[bytes] = (DEVICE_ROOT_SHA256,),
    rim_roots: Iterable[bytes] = (RIM_ROOT_SHA256,),
) -> GpuVerification:
    """Every check on one GPU report at ``at``; read ``.ok`` and ``.checks``.

    ``report`` is the SPDM request || response (raw or hex text), ``cert_chain_pem`` the device
    chain, leaf first. ``rims`` are NVIDIA's driver and VBIOS RIM files (name -> bytes, or a
    list), ``ocsp`` recorded OCSP replies (DER or base64; name -> reply, or a list), matched to
    certificates by their CertID. Raises ``GpuReportFormatError`` for a malformed report or chain.
    """
    when = _as_utc(at)
    parsed = parse_gpu_report(report)
    chain = _load_chain(cert_chain_pem)
    driver, vbios = parsed.driver_version, parsed.vbios_version  # format-checked here
    leaf = chain[0]
    checks = [
        _check_signature(parsed, leaf),
        _check_chain(chain, when, tuple(device_roots)),
        _check_fwid(parsed, leaf),
        _check_nonce(parsed, expected_nonce),
    ]
    # RIMs
    loaded, rim_problems = _load_rims(rims, when, rim_roots)
    if not rims:
        checks.append(GpuCheck(STEP_RIM_SIGNATURES, None, "no RIMs given"))
    elif rim_problems:
        checks.append(GpuCheck(STEP_RIM_SIGNATURES, False, "; ".join(rim_problems)))
    else:
        checks.append(
            GpuCheck(
                STEP_RIM_SIGNATURES,
                True,
                f"{len(loaded)} RIM(s) signed by NVIDIA (XML-DSig, chain to the pinned RIM root "
                f"valid at {stamp(when)})",
            )
        )
    checks.append(_check_versions(parsed, loaded, len(rims), allowed_drivers, allowed_vbios))
    measured, mismatched, matched = _check_measurements(
        parsed, loaded, rim_problems, allowed_drivers, allowed_vbios
    )
    checks.append(measured)
    # OCSP
    replies, reply_problems = _load_replies(ocsp)
    used: set[int] = set()
    device_pairs = list(
        itertools.pairwise(chain[1:])
    )  # not the leaf, which NVIDIA's OCSP does not know
    device_step = _ocsp_step(
        STEP_OCSP, "device chain", device_pairs, replies, used, when, ocsp_max_age, reply_problems
    )
    rim_step = _ocsp_step(
        STEP_RIM_OCSP, "RIM chains", _unique_pairs(loaded), replies, used, when, ocsp_max_age, []
    )
    stray = [reply.name for i, reply in enumerate(replies) if i not in used]
    if stray:
        detail = f"OCSP reply(ies) {', '.join(map(repr, stray))} match no certificate given"
        device_step = GpuCheck(
            STEP_OCSP,
            False,
            detail if device_step.ok is None else f"{device_step.detail}; {detail}",
        )
    checks += [device_step, rim_step]
    facts = {
        "gpu_driver": driver,
        "gpu_vbios": vbios,
        "gpu_nonce": parsed.nonce.hex(),
        "gpu_measurements_matched": matched,
    }
    return GpuVerification(
        report=parsed,
        verified_at=when,
        checks=tuple(checks),
        rims=tuple(loaded),
        mismatched_indices=mismatched,
        measurements_matched=matched,
        facts=facts,
    )


def check_gpu(
    report: VerificationReport,
    gpu_report: bytes | str,
    cert_chain_pem: bytes | str,
    *,
    at: datetime,
    expected_nonce: bytes | None,
    rims: Sequence[bytes] | Mapping[str, bytes] = (),
    ocsp: Mapping[str, bytes | str] | Sequence[bytes | str] = (),
    allowed_drivers: Sequence[str] = (),
    allowed_vbios: Sequence[str] = (),
    ocsp_max_age: timedelta = DEFAULT_OCSP_MAX_AGE,
) -> GpuVerification | None:
    """Append the GPU steps to ``report`` (a ``VerificationReport``) and its facts.

    Returns the verification, or None when the report or chain could not be parsed (then one
    failing "GPU report" step says why).
    """
    try:
        verified = verify_gpu_report(
            gpu_report,
            cert_chain_pem,
            at=at,
            expected_nonce=expected_nonce,
            rims=rims,
            ocsp=ocsp,
            allowed_drivers=allowed_drivers,
            allowed_vbios=allowed_vbios,
            ocsp_max_age=ocsp_max_age,
        )
    except GpuReportFormatError as exc:
        report.add("GPU report", False, str(exc))
        return None
    for check in verified.checks:
        if check.ok is None:
            report.not_checked(check.name, check.detail)
        else:
            report.add(
                check.name, check.ok, check.detail, expected=check.expected, actual=check.actual
            )
    report.facts.update(verified.facts)
    return verified
