"""Release signers the CLIENT configures, and what a verified release is.

A signer identity always comes from the client's own configuration (policy key
``release_signers``), never from the node or the gateway: a Sigstore identity (OIDC issuer + exact
workflow identity) or an Ed25519 public key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from veil.attestation.release_manifest import ReleaseManifest

__all__ = ["ReleaseSigner", "VerifiedRelease"]


@dataclass(frozen=True)
class VerifiedRelease:
    """A manifest whose signature verified under a signer the client configured.

    ``digest`` is the SHA-256 (hex) of the manifest bytes that were signed; for a Sigstore
    statement that carries the measurements in its predicate (no separate manifest file), it is the
    in-toto subject's SHA-256, the digest the publisher's release names.
    """

    manifest: ReleaseManifest
    signer: str
    digest: str
    integrated_time: datetime | None = None

    @property
    def release(self) -> str:
        return self.manifest.release


def _b64_key(value: object) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
    else:
        raise ValueError("must be a base64 string")
    if len(raw) != 32:
        raise ValueError(f"must be a 32-byte Ed25519 public key, found {len(raw)} bytes")
    return raw


PublicKey32 = Annotated[
    bytes,
    BeforeValidator(_b64_key),
    PlainSerializer(
        lambda raw: base64.b64encode(raw).decode(), return_type=str, when_used="always"
    ),
]


class ReleaseSigner(BaseModel):
    """A release signer the client trusts (policy key ``release_signers``), in one of two forms::

    {"sigstore_identity": "https://github.com/ORG/REPO/.github/workflows/release.yml@refs/tags/v1.2.3",
     "sigstore_issuer": "https://token.actions.githubusercontent.com"}
    {"ed25519_public_key": "<base64 of the 32-byte key>"}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigstore_identity: str | None = Field(default=None, min_length=1)
    sigstore_issuer: str | None = Field(default=None, min_length=1)
    ed25519_public_key: PublicKey32 | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ReleaseSigner:
        sigstore = self.sigstore_identity is not None or self.sigstore_issuer is not None
        if sigstore and self.ed25519_public_key is not None:
            raise ValueError(
                "a release signer is either a Sigstore identity or an Ed25519 key, not both"
            )
        if sigstore and (self.sigstore_identity is None or self.sigstore_issuer is None):
            raise ValueError(
                "a Sigstore release signer needs both sigstore_identity and sigstore_issuer"
            )
        if not sigstore and self.ed25519_public_key is None:
            raise ValueError(
                "a release signer needs sigstore_identity + sigstore_issuer, or ed25519_public_key"
            )
        return self

    @property
    def is_sigstore(self) -> bool:
        return self.sigstore_identity is not None

    def describe(self) -> str:
        if self.sigstore_identity is not None:
            return sigstore_signer_text(self.sigstore_identity, self.sigstore_issuer or "")
        assert self.ed25519_public_key is not None
        return ed25519_signer_text(self.ed25519_public_key)


def sigstore_signer_text(identity: str, issuer: str) -> str:
    return f"sigstore: {identity} (issuer {issuer})"


def ed25519_signer_text(public_key: bytes) -> str:
    return f"ed25519: {base64.b64encode(public_key).decode()}"
