"""Sigstore keyless releases (public CI), verified offline.

A Sigstore bundle (v0.3, DSSE, in-toto statement) is verified by the ``sigstore`` package against a
trusted root file and an identity policy (OIDC issuer + exact workflow identity, the certificate's
SAN). No network: no TUF refresh, no Rekor lookup; the bundle's inclusion proof, checkpoint and SET
are checked against the root's keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from veil.attestation.release_manifest import (
    MAX_MANIFEST_SIZE,
    TDX_FIELDS,
    ReleaseManifest,
    ReleaseManifestError,
    ReleaseVerificationError,
    manifest_digest,
    manifest_from_object,
    parse_manifest,
    same_bytes,
)
from veil.attestation.release_signer import ReleaseSigner, VerifiedRelease, sigstore_signer_text

__all__ = [
    "TINFOIL_PREDICATE",
    "VEIL_PREDICATE",
    "embedded_trusted_root_path",
    "verify_sigstore",
]

MAX_BUNDLE_SIZE = 1 << 20
VEIL_PREDICATE = "https://veil.dev/release/v1"
TINFOIL_PREDICATE = "https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
_OID_ISSUER = "1.3.6.1.4.1.57264.1.1"
_OID_GITHUB_REPOSITORY = "1.3.6.1.4.1.57264.1.5"
_OID_GITHUB_REF = "1.3.6.1.4.1.57264.1.6"


def embedded_trusted_root_path() -> Path:
    """The Sigstore public-good trusted root that the installed ``sigstore`` package ships.

    sigstore-python bootstraps its TUF client from this copy; Veil reads it directly and never
    refreshes it over the network, so it is as current as the installed package. Pass an explicit
    trusted root (``trusted_root_path``) to pin a specific one.
    """
    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    path = Path(str(store / "trusted_root.json"))
    if not path.is_file():
        raise ReleaseVerificationError(
            "no trusted root given and the installed sigstore package ships none; pass a trusted_root.json"
        )
    return path


def _cert_extension(cert: Any, oid: str) -> str | None:
    for extension in cert.extensions:
        if extension.oid.dotted_string == oid:
            raw = getattr(extension.value, "value", None)
            if isinstance(raw, bytes):
                return raw.decode("utf-8", errors="replace")
    return None


def _cert_identity(cert: Any) -> str:
    from cryptography.x509 import RFC822Name, SubjectAlternativeName, UniformResourceIdentifier

    try:
        san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    except Exception:
        return "(no SAN)"
    names = san.get_values_for_type(UniformResourceIdentifier) + san.get_values_for_type(RFC822Name)
    return ", ".join(names) or "(no SAN)"


def _release_name_from_cert(cert: Any, fallback: str) -> str:
    repository = _cert_extension(cert, _OID_GITHUB_REPOSITORY)
    ref = _cert_extension(cert, _OID_GITHUB_REF)
    if repository and ref:
        return f"{repository}@{ref.removeprefix('refs/tags/')}"
    return fallback


def _load_trusted_root(trusted_root_path: str | Path | None) -> Any:
    from sigstore.models import TrustedRoot

    path = (
        Path(trusted_root_path) if trusted_root_path is not None else embedded_trusted_root_path()
    )
    try:
        return TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise ReleaseVerificationError(
            f"cannot read trusted root {path}: {exc.strerror or exc}"
        ) from None
    except Exception as exc:
        raise ReleaseVerificationError(
            f"trusted root {path} is not a Sigstore trusted root: {_line(exc)}"
        ) from None


def _line(exc: BaseException, limit: int = 160) -> str:
    """The first line of a library's error, cut short (some embed whole inclusion proofs)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tinfoil_manifest(predicate: Mapping[str, Any], release: str) -> ReleaseManifest:
    """Turn Tinfoil's multi-platform predicate into a Veil manifest (measurements only).

    ``snp_measurement`` becomes the SEV-SNP set; ``tdx_measurement`` (RTMR1, RTMR2: kernel, initrd
    and command line) becomes one TDX set pinning exactly those registers. The other keys (cmdline,
    image hashes, config) are what produced those measurements and are not needed to compare them.
    """
    document: dict[str, Any] = {"release": release, "tdx": [], "sev_snp": []}
    snp = predicate.get("snp_measurement")
    if snp is not None:
        document["sev_snp"].append({"measurement": snp})
    tdx = predicate.get("tdx_measurement")
    if tdx is not None:
        if not isinstance(tdx, Mapping):
            raise ReleaseManifestError("Tinfoil predicate: tdx_measurement must be an object")
        unknown = set(tdx) - set(TDX_FIELDS)
        if unknown:
            raise ReleaseManifestError(
                f"Tinfoil predicate: unknown tdx_measurement field(s) {', '.join(sorted(unknown))}"
            )
        document["tdx"].append(dict(tdx))
    return manifest_from_object(document, "Tinfoil predicate")


def verify_sigstore(
    bundle_bytes: bytes,
    signers: Iterable[ReleaseSigner],
    *,
    manifest_bytes: bytes | None = None,
    trusted_root_path: str | Path | None = None,
    at: datetime | None = None,
) -> VerifiedRelease:
    """Verify a Sigstore bundle offline under one of the client's Sigstore signer identities.

    Steps: (1) sizes, bundle and trusted root parse; (2) the signing certificate's identity and
    issuer are one the client configured; (3) sigstore verifies the Fulcio chain at the log's
    time, the SCT, the identity policy, the Rekor inclusion proof / checkpoint / SET and the DSSE
    signature; (4) the payload is an in-toto statement; (5) the release: with ``manifest_bytes``,
    a subject's SHA-256 must equal the manifest's; without, the predicate must carry it
    (``VEIL_PREDICATE`` or ``TINFOIL_PREDICATE``); (6) the log time is not after ``at``.
    """
    try:
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity
    except ImportError:  # fail closed, as a verification failure the report can show
        raise ReleaseVerificationError(
            "cannot verify a Sigstore bundle: the sigstore package is not installed"
        ) from None

    # (1)
    if len(bundle_bytes) > MAX_BUNDLE_SIZE:
        raise ReleaseVerificationError(
            f"Sigstore bundle is {len(bundle_bytes)} bytes, more than the {MAX_BUNDLE_SIZE} allowed"
        )
    if manifest_bytes is not None and len(manifest_bytes) > MAX_MANIFEST_SIZE:
        raise ReleaseManifestError(
            f"manifest is {len(manifest_bytes)} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
        )
    try:
        bundle = Bundle.from_json(bundle_bytes)
    except Exception as exc:
        raise ReleaseVerificationError(f"not a readable Sigstore bundle: {_line(exc)}") from None
    trusted_root = _load_trusted_root(trusted_root_path)

    # (2) choose the configured identity that this certificate claims (step 3 re-checks it)
    cert = bundle.signing_certificate
    found = sigstore_signer_text(
        _cert_identity(cert), _cert_extension(cert, _OID_ISSUER) or "(none)"
    )
    candidates = [signer for signer in signers if signer.is_sigstore]
    chosen: ReleaseSigner | None = None
    for signer in candidates:
        policy = Identity(identity=signer.sigstore_identity or "", issuer=signer.sigstore_issuer)
        try:
            policy.verify(cert)
        except SigstoreError:
            continue
        chosen = signer
        break
    if chosen is None:
        expected = "; ".join(s.describe() for s in candidates) or "no Sigstore signer configured"
        raise ReleaseVerificationError(
            f"release signer is not trusted: bundle signed by {found}, expected {expected}"
        )
    identity, issuer = chosen.sigstore_identity or "", chosen.sigstore_issuer or ""

    # (3) offline: the Verifier is built from the root file, not from TUF
    try:
        verifier = Verifier(trusted_root=trusted_root)
        payload_type, payload = verifier.verify_dsse(
            bundle, Identity(identity=identity, issuer=issuer)
        )
    except SigstoreError as exc:
        raise ReleaseVerificationError(
            f"Sigstore bundle does not verify for {chosen.describe()}: {_line(exc)}"
        ) from None
    integrated = bundle.log_entry._inner.integrated_time
    integrated_time = datetime.fromtimestamp(integrated, tz=UTC) if integrated else None

    # (4)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise ReleaseVerificationError(
            f"DSSE payload type: expected {IN_TOTO_PAYLOAD_TYPE}, found {payload_type[:80]}"
        )
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReleaseVerificationError("DSSE payload is not a JSON in-toto statement") from None
    if not isinstance(statement, dict) or statement.get("_type") not in IN_TOTO_STATEMENT_TYPES:
        found_type = statement.get("_type") if isinstance(statement, dict) else None
        raise ReleaseVerificationError(
            f"in-toto statement type: expected {IN_TOTO_STATEMENT_TYPES[0]}, found {found_type!r}"
        )
    predicate_type = statement.get("predicateType")
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    digests: list[str] = []
    if isinstance(subjects, list):
        for subject in subjects:
            value = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
            if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value):
                digests.append(value.lower())

    # (5)
    signer_text = sigstore_signer_text(identity, issuer)
    if manifest_bytes is not None:
        digest = manifest_digest(manifest_bytes)
        matched = False
        for value in digests:
            matched |= same_bytes(bytes.fromhex(value), digest)
        if not matched:
            raise ReleaseVerificationError(
                f"manifest sha256 {digest.hex()} is not a subject of the signed statement "
                f"(subjects: {', '.join(digests) or 'none'})"
            )
        manifest = parse_manifest(manifest_bytes)
        if predicate_type == VEIL_PREDICATE and (
            manifest_from_object(predicate, "statement predicate") != manifest
        ):
            raise ReleaseVerificationError(
                "the statement's Veil predicate differs from the manifest it names as subject"
            )
        digest_hex = digest.hex()
    else:
        if not isinstance(predicate, dict):
            raise ReleaseVerificationError("in-toto statement has no predicate object")
        if len(digests) != 1:
            raise ReleaseVerificationError(
                f"in-toto statement must name exactly one sha256 subject, found {len(digests)}"
            )
        digest_hex = digests[0]
        if predicate_type == VEIL_PREDICATE:
            manifest = manifest_from_object(predicate, "statement predicate")
        elif predicate_type == TINFOIL_PREDICATE:
            first_name = subjects[0].get("name") if isinstance(subjects, list) else None
            fallback = str(first_name or digest_hex)
            manifest = _tinfoil_manifest(predicate, _release_name_from_cert(cert, fallback))
        else:
            raise ReleaseVerificationError(
                f"predicate type: expected {VEIL_PREDICATE} or {TINFOIL_PREDICATE} (or a separate "
                f"manifest file), found {str(predicate_type)[:120]}"
            )

    # (6)
    if at is not None and integrated_time is not None and integrated_time > at:
        raise ReleaseVerificationError(
            f"bundle was logged at {integrated_time.isoformat()}, after the verification time "
            f"{at.isoformat()}"
        )
    return VerifiedRelease(
        manifest=manifest, signer=signer_text, digest=digest_hex, integrated_time=integrated_time
    )
