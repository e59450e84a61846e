"""``veil release``: make an Ed25519 release key, sign a release manifest, verify a release.

    veil release keygen --out KEYFILE
    veil release sign MANIFEST --key KEYFILE [--out SIG]
    veil release verify MANIFEST --signature SIG --trusted-key B64 [--trusted-key B64 ...] [--json]
    veil release verify [MANIFEST] --bundle BUNDLE --identity ID --issuer ISSUER
                        [--trusted-root FILE] [--at TIME] [--json]

With ``--bundle`` and no MANIFEST, the bundle's in-toto predicate must carry the release (Veil's
own predicate type, or Tinfoil's multi-platform one). Without ``--trusted-root`` the Sigstore
public-good root shipped inside the installed ``sigstore`` package is used, read from disk: no TUF
refresh, no network.

Exit status: 0 when the release verified, 1 when verification failed, 2 when an input could not be
read or the options do not make sense (one ``error:`` line).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from veil.attestation.release import (
    ReleaseManifestError,
    ReleaseSigner,
    ReleaseVerificationError,
    VerifiedRelease,
    sign_manifest,
    verify_release,
)

__all__ = ["release_app"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
MAX_INPUT_SIZE = 1 << 20

release_app = typer.Typer(
    help="Sign and verify release manifests (the measurements a strict client accepts).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class InputError(Exception):
    """An input the command cannot use; one line, printed as is."""


def _bad_input(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_SIZE:
            raise InputError(f"{what} {path} is {size} bytes, more than {MAX_INPUT_SIZE}")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _json_object(raw: bytes, what: str, path: Path) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InputError(f"{what} {path} must be a JSON object")
    return document


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A raw 32-byte Ed25519 private key, or a PEM (PKCS#8, unencrypted) one."""
    raw = _read(path, "key file")
    if len(raw) == 32:
        return Ed25519PrivateKey.from_private_bytes(raw)
    try:
        key = load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"key file {path} is neither a raw 32-byte Ed25519 key nor an unencrypted PEM key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _public_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@release_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="where to write the new private key (PEM)")],
) -> None:
    """Create an Ed25519 release key (mode 0600) and print its public key, base64."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        # O_EXCL: never overwrite a key; mode 0600 from creation, not chmod'ed afterwards.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        _bad_input(f"cannot create key file {out}: {exc.strerror or exc}")
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    typer.echo(_public_b64(key))


@release_app.command("sign")
def sign(
    manifest: Annotated[Path, typer.Argument(help="the release manifest (JSON), signed as is")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key: raw 32 bytes or PEM")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the signature here (default: stdout)")
    ] = None,
) -> None:
    """Sign MANIFEST's exact bytes with an Ed25519 release key."""
    try:
        raw = _read(manifest, "manifest")
        private_key = load_private_key(key)
        document = sign_manifest(raw, private_key)
    except InputError as exc:
        _bad_input(str(exc))
    except ReleaseManifestError as exc:
        _bad_input(f"{manifest}: {exc.reason}")
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        _bad_input(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"signed {manifest} as ed25519: {document['public_key']} -> {out}", err=True)


def _signers(
    trusted_keys: list[str], identity: str | None, issuer: str | None
) -> list[ReleaseSigner]:
    signers = []
    for value in trusted_keys:
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"--trusted-key {value[:60]!r} is not base64") from None
        if len(raw) != 32:
            raise InputError(
                f"--trusted-key must be a 32-byte Ed25519 public key, found {len(raw)}"
            )
        signers.append(ReleaseSigner(ed25519_public_key=raw))
    if identity is not None and issuer is not None:
        signers.append(ReleaseSigner(sigstore_identity=identity, sigstore_issuer=issuer))
    return signers


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"--at {value!r} is not an ISO-8601 time (e.g. 2026-07-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise InputError(f"--at {value!r} needs a time zone (e.g. a trailing Z)")
    return moment


def _emit(as_json: bool, result: VerifiedRelease | None, error: str | None) -> None:
    if as_json:
        document: dict[str, Any] = {"verified": result is not None}
        if result is not None:
            document |= {
                "release": result.release,
                "signer": result.signer,
                "digest": result.digest,
                "integrated_time": (
                    result.integrated_time.isoformat() if result.integrated_time else None
                ),
                "manifest": result.manifest.model_dump(mode="json"),
            }
        else:
            document["error"] = error
        typer.echo(json.dumps(document, indent=2))
    elif result is not None:
        when = f", logged {result.integrated_time.isoformat()}" if result.integrated_time else ""
        typer.echo(f"PASS: release {result.release} signed by {result.signer}{when}")
        typer.echo(f"  digest sha256:{result.digest}")
        typer.echo(
            f"  {len(result.manifest.tdx)} TDX, {len(result.manifest.sev_snp)} SEV-SNP, "
            f"{len(result.manifest.gpu)} GPU measurement set(s); {len(result.manifest.models)} model(s)"
        )
        if result.manifest.console_bundle_sha256 is not None:
            typer.echo(f"  console bundle sha256 {result.manifest.console_bundle_sha256}")
    else:
        typer.echo(f"FAIL: {error}")


@release_app.command("verify")
def verify(
    manifest: Annotated[
        Path | None, typer.Argument(help="the manifest (optional with --bundle)")
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="Ed25519 signature document")
    ] = None,
    trusted_key: Annotated[
        list[str] | None,
        typer.Option("--trusted-key", help="a trusted Ed25519 public key, base64 (repeatable)"),
    ] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Sigstore bundle (v0.3)")] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", help="exact signer identity (certificate SAN)")
    ] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", help="exact OIDC issuer")] = None,
    trusted_root: Annotated[
        Path | None,
        typer.Option("--trusted-root", help="Sigstore trusted_root.json (default: sigstore's own)"),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="verification time, ISO-8601 (default: now)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON result")] = False,
) -> None:
    """Verify a release under signers given here (never ones the release names itself)."""
    keys = trusted_key or []
    try:
        if signature is not None and bundle is not None:
            raise InputError("give either --signature (Ed25519) or --bundle (Sigstore), not both")
        if signature is not None:
            if manifest is None:
                raise InputError("--signature needs the MANIFEST it signs")
            if not keys:
                raise InputError("--signature needs at least one --trusted-key")
            if identity is not None or issuer is not None or trusted_root is not None:
                raise InputError("--identity/--issuer/--trusted-root apply to --bundle only")
            subject = _read(manifest, "manifest")
            raw_signature = _read(signature, "signature")
            _json_object(raw_signature, "signature", signature)
            evidence: bytes | None = raw_signature
        elif bundle is not None:
            if identity is None or issuer is None:
                raise InputError("--bundle needs both --identity and --issuer")
            if keys:
                raise InputError("--trusted-key applies to --signature only")
            if trusted_root is not None:
                _read(trusted_root, "trusted root")
            raw_bundle = _read(bundle, "bundle")
            _json_object(raw_bundle, "bundle", bundle)
            if manifest is not None:
                subject, evidence = _read(manifest, "manifest"), raw_bundle
            else:
                subject, evidence = raw_bundle, None
        else:
            raise InputError("give --signature SIG --trusted-key B64, or --bundle BUNDLE")
        signers = _signers(keys, identity, issuer)
        moment = _parse_time(at) if at is not None else None
    except InputError as exc:
        _bad_input(str(exc))

    try:
        result = verify_release(
            subject, evidence, signers, trusted_root_path=trusted_root, at=moment
        )
    except ReleaseVerificationError as exc:
        _emit(as_json, None, exc.reason)
        raise typer.Exit(EXIT_FAILED) from None
    _emit(as_json, result, None)


if __name__ == "__main__":  # pragma: no cover
    release_app(sys.argv[1:])
