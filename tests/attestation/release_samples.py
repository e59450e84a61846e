"""Release samples for the release tests: the real Tinfoil Sigstore bundle and what it says, and
Veil manifests built here.

The Sigstore bundle in ../shared/attestation-samples/sigstore/ is a genuine release of Tinfoil's
model router, signed keylessly by its GitHub Actions workflow; it is verified fully offline against
the trusted_root.json beside it. Its SEV-SNP measurement is the one the Genoa report in sev-snp/
carries, so the chain release -> running enclave is tested on real bytes end to end.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.attestation import SAMPLE_MR_TD, SAMPLES
from veil.attestation.release import ReleaseSigner

BUNDLE = SAMPLES / "sigstore" / "tinfoil_confidential-model-router_v0.0.110.sigstore.json"


TRUSTED_ROOT = SAMPLES / "sigstore" / "trusted_root.json"


GENOA_REPORT = SAMPLES / "sev-snp" / "teep_tinfoil_genoa_report.bin"


MILAN_REPORT = SAMPLES / "sev-snp" / "gosevguest_report.bin"


IDENTITY = (
    "https://github.com/tinfoilsh/confidential-model-router/.github/workflows/"
    "tinfoil-release-publish.yml@refs/tags/v0.0.110"
)


ISSUER = "https://token.actions.githubusercontent.com"


TINFOIL_SIGNER = ReleaseSigner(sigstore_identity=IDENTITY, sigstore_issuer=ISSUER)


# What the bundle's transparency-log entry and in-toto subject say (read from the sample by hand).
INTEGRATED_AT = datetime.fromtimestamp(1782251465, tz=UTC)


SUBJECT_SHA256 = "59239f442bcc5814c5981c1d424e25ab190784c6d3162b76fa90bbce88a4e4c9"


GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)


SNP_MEASUREMENT_SLICE = slice(0x90, 0xC0)  # MEASUREMENT in the SEV-SNP ATTESTATION_REPORT


def bundle_bytes() -> bytes:
    return BUNDLE.read_bytes()


def with_bundle(change: Any) -> bytes:
    """The sample bundle with one change applied to its parsed JSON."""
    document = json.loads(bundle_bytes())
    change(document)
    return json.dumps(document).encode()


def flip_b64(value: str, index: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def manifest_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "release": "veil-node 1.4.2",
        "tdx": [{"mr_td": SAMPLE_MR_TD, "rtmr3": "00" * 48}],
        "sev_snp": [{"measurement": GENOA_MEASUREMENT}],
        "gpu": [{"driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01"}],
        "models": {"smollm2-135m-instruct": "sha256:" + "ab" * 32},
        "created_at": "2026-06-01T00:00:00Z",
    }
    document.update(changes)
    return document


def manifest_bytes(**changes: Any) -> bytes:
    return json.dumps(manifest_document(**changes), indent=2).encode()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
