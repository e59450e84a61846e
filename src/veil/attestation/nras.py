"""NVIDIA's remote attestation service (NRAS) verdict: a second opinion, checked offline.

NRAS answers a GPU evidence submission with an Entity Attestation Token (EAT): a list
``[["JWT", <platform token>], {"GPU-0": <GPU token>, ...}]``. Every token is an ES384 JWS signed by
a key NRAS publishes in its JWKS (``/.well-known/jwks.json``). The platform token's ``submods``
name each GPU token by its SHA-256 digest, so the tokens form one signed statement.

Checked here, at a time the caller gives:

1. every token is ES384 with a ``kid`` found in the JWKS, and its signature verifies with that
   key (``cryptography``; the 96-byte raw r || s turned into DER);
2. the key's ``x5c`` leaf carries that same public key, is signed by the next ``x5c`` certificate,
   and both are valid at ``at``. NRAS's CA root is not pinned here (it is not among the samples):
   trust in this verdict rests on the JWKS having been fetched from NVIDIA over TLS;
3. ``iss`` is NRAS, ``nbf <= at <= exp``, ``eat_nonce`` is the caller's nonce (constant-time);
4. the platform token's overall result is true and each GPU token's SHA-256 digest is the one in
   its ``submods``;
5. each GPU token says measres "success", secboot true and dbgstat "disabled".

This is NVIDIA's verdict, not ours: ``verify_nvidia`` is the verification Veil relies on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.attestation.evidence import AttestationError
from veil.attestation.report_steps import VerificationReport

__all__ = ["NRAS_ISSUER", "NrasError", "NrasVerdict", "check_nras", "verify_nras_eat"]

NRAS_ISSUER = "https://nras.attestation.nvidia.com"
STEP_NRAS = "NVIDIA remote verdict"
MAX_TOKEN_SIZE = 64 * 1024
_ISO = "%Y-%m-%dT%H:%M:%SZ"


class NrasError(AttestationError):
    """The NRAS token set is malformed, not signed by a JWKS key, or not a success verdict."""


@dataclass(frozen=True)
class NrasVerdict:
    """A verified NRAS verdict: the GPU tokens' claims, by submodule name."""

    issued_at: datetime
    expires_at: datetime
    gpus: Mapping[str, Mapping[str, Any]]


def _b64url(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NrasError(f"{what} is not base64url") from None


def _jwk_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-384":
        raise NrasError(f"JWKS key {jwk.get('kid')!r} is not an EC P-384 key")
    x, y = _b64url(str(jwk.get("x", "")), "JWK x"), _b64url(str(jwk.get("y", "")), "JWK y")
    if len(x) != 48 or len(y) != 48:
        raise NrasError(f"JWKS key {jwk.get('kid')!r} has coordinates of the wrong size")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP384R1()
        ).public_key()
    except ValueError:
        raise NrasError(f"JWKS key {jwk.get('kid')!r} is not a point on P-384") from None


def _check_x5c(jwk: Mapping[str, Any], key: ec.EllipticCurvePublicKey, at: datetime) -> None:
    chain = jwk.get("x5c")
    if not isinstance(chain, list) or len(chain) < 2:
        raise NrasError(f"JWKS key {jwk.get('kid')!r} has no x5c chain")
    try:
        certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain]
    except (binascii.Error, ValueError, TypeError):
        raise NrasError("a JWKS x5c certificate is not DER X.509") from None
    if certs[0].public_key() != key:
        raise NrasError("the JWKS key differs from its x5c leaf certificate's key")
    for cert in certs:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise NrasError(
                f"NRAS signing certificate {cert.subject.rfc4514_string()!r} is valid "
                f"{cert.not_valid_before_utc.strftime(_ISO)} .. "
                f"{cert.not_valid_after_utc.strftime(_ISO)}, not at {at.strftime(_ISO)}"
            )
    for cert, issuer in itertools.pairwise(certs):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise NrasError("the JWKS x5c chain does not verify") from None


def _verify_jws(token: str, keys: Mapping[str, Mapping[str, Any]], at: datetime) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_SIZE or token.count(".") != 2:
        raise NrasError("an NRAS token is not a compact JWS")
    head, body, sig = token.split(".")
    try:
        header = json.loads(_b64url(head, "JWS header"))
        claims = json.loads(_b64url(body, "JWS payload"))
    except ValueError:
        raise NrasError("an NRAS token's header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NrasError("an NRAS token's header or payload is not a JSON object")
    if header.get("alg") != "ES384":
        raise NrasError(f"NRAS token alg is {header.get('alg')!r}, expected ES384")
    jwk = keys.get(str(header.get("kid")))
    if jwk is None:
        raise NrasError(f"NRAS token kid {header.get('kid')!r} is not in the JWKS")
    key = _jwk_key(jwk)
    _check_x5c(jwk, key, at)
    raw = _b64url(sig, "JWS signature")
    if len(raw) != 96:
        raise NrasError(f"an ES384 signature is 96 bytes, got {len(raw)}")
    signature = encode_dss_signature(
        int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big")
    )
    try:
        key.verify(signature, f"{head}.{body}".encode("ascii"), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise NrasError("an NRAS token's signature does not verify with its JWKS key") from None
    return claims


def _check_claims(claims: Mapping[str, Any], at: datetime, nonce: bytes | None, what: str) -> None:
    if claims.get("iss") != NRAS_ISSUER:
        raise NrasError(f"{what}: issuer {claims.get('iss')!r}, expected {NRAS_ISSUER}")
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int) or not isinstance(exp, int):
        raise NrasError(f"{what}: nbf and exp are required")
    start, end = datetime.fromtimestamp(nbf, UTC), datetime.fromtimestamp(exp, UTC)
    if not start <= at <= end:
        raise NrasError(
            f"{what}: valid {start.strftime(_ISO)} .. {end.strftime(_ISO)}, not at {at.strftime(_ISO)}"
        )
    if nonce is not None:
        seen = str(claims.get("eat_nonce", ""))
        if not hmac.compare_digest(seen.lower().encode(), nonce.hex().encode()):
            raise NrasError(f"{what}: eat_nonce is not the caller's nonce")


def verify_nras_eat(
    eat: bytes | str | list[Any],
    jwks: bytes | str | Mapping[str, Any],
    *,
    at: datetime,
    expected_nonce: bytes | None,
) -> NrasVerdict:
    """Verify an NRAS EAT against its JWKS at ``at``. Raises ``NrasError``."""
    when = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    try:
        document = json.loads(eat) if isinstance(eat, bytes | str) else eat
        key_set = json.loads(jwks) if isinstance(jwks, bytes | str) else jwks
    except ValueError:
        raise NrasError("the EAT or the JWKS is not JSON") from None
    if (
        not isinstance(document, list)
        or len(document) != 2
        or not isinstance(document[0], list)
        or len(document[0]) != 2
        or document[0][0] != "JWT"
        or not isinstance(document[1], dict)
    ):
        raise NrasError('the EAT is not [["JWT", platform token], {gpu: token}]')
    keys = {str(k.get("kid")): k for k in key_set.get("keys", []) if isinstance(k, dict)}
    # 1-3. the platform token
    platform = _verify_jws(document[0][1], keys, when)
    _check_claims(platform, when, expected_nonce, "NRAS platform token")
    if platform.get("x-nvidia-overall-att-result") is not True:
        raise NrasError("NRAS says the overall attestation result is false")
    submods = platform.get("submods")
    if not isinstance(submods, dict) or set(submods) != set(document[1]) or not submods:
        raise NrasError("the platform token's submods do not name exactly the GPU tokens given")
    gpus: dict[str, Mapping[str, Any]] = {}
    for name, token in document[1].items():
        # 4. bound to the platform token by digest
        entry = submods[name]
        try:
            kind, (algorithm, digest) = entry
        except (TypeError, ValueError):
            raise NrasError(f"submods[{name!r}] is not a DIGEST entry") from None
        if kind != "DIGEST" or algorithm != "SHA-256":
            raise NrasError(f"submods[{name!r}] is not a SHA-256 DIGEST")
        own = hashlib.sha256(str(token).encode()).hexdigest()
        if not hmac.compare_digest(own, str(digest).lower()):
            raise NrasError(f"the {name} token is not the one the platform token names")
        # 5. the GPU verdict
        claims = _verify_jws(token, keys, when)
        _check_claims(claims, when, expected_nonce, f"NRAS {name} token")
        wrong = [
            f"{claim}={claims.get(claim)!r}"
            for claim, good in (("measres", "success"), ("secboot", True), ("dbgstat", "disabled"))
            if claims.get(claim) != good
        ]
        if wrong:
            raise NrasError(f"NRAS {name}: {', '.join(wrong)}")
        gpus[name] = claims
    return NrasVerdict(
        issued_at=datetime.fromtimestamp(int(platform["iat"]), UTC)
        if isinstance(platform.get("iat"), int)
        else when,
        expires_at=datetime.fromtimestamp(int(platform["exp"]), UTC),
        gpus=gpus,
    )


def check_nras(
    report: VerificationReport,
    eat: bytes | str | list[Any],
    jwks: bytes | str | Mapping[str, Any],
    *,
    at: datetime,
    expected_nonce: bytes | None,
) -> NrasVerdict | None:
    """Append the "NVIDIA remote verdict" step to ``report`` (a ``VerificationReport``)."""
    try:
        verdict = verify_nras_eat(eat, jwks, at=at, expected_nonce=expected_nonce)
    except NrasError as exc:
        report.add(STEP_NRAS, False, str(exc))
        return None
    summary = ", ".join(
        f"{name}: driver {c.get('x-nvidia-gpu-driver-version')}, VBIOS "
        f"{c.get('x-nvidia-gpu-vbios-version')}"
        for name, c in verdict.gpus.items()
    )
    report.add(
        STEP_NRAS,
        True,
        f"NRAS (JWKS key as given; its CA not pinned) says success, secure boot on, debug off "
        f"({summary}); issued {verdict.issued_at.strftime(_ISO)}",
    )
    return verdict
