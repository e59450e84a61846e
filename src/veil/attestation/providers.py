"""Node side: where evidence comes from.

Every provider turns the 64-byte ``report_data`` into the TEE's signed statement about it:

- ``ConfigfsTsmProvider``: Intel TDX and AMD SEV-SNP guests, through the kernel's configfs-tsm
  interface (Linux 6.7+, ``Documentation/ABI/testing/configfs-tsm-report``). One report is one
  directory under ``/sys/kernel/config/tsm/report``: ``mkdir`` it, write ``inblob``, read
  ``outblob`` (the quote / attestation report), ``provider`` says which TEE answered, and
  ``generation`` counts writes so a racing writer is noticed; ``rmdir`` it afterwards.
- ``NvidiaProvider``: NVIDIA confidential-computing GPUs, via ``nv-attestation-sdk`` when that
  package is installed and a GPU with CC mode on is present. GPU evidence is not a CPU TEE: it
  rides in the same bundle, bound by the CPU report (``choose_gpu_provider``).
- ``NoTeeProvider``: no TEE at all. For development only; the evidence says so in plain words and a
  verifier refuses it unless its policy sets ``allow_no_tee``.

``choose_provider("auto")`` takes configfs-tsm where it exists, else "none". The providers live in
``providers_tsm.py`` and ``providers_nvidia.py`` (and what they share in ``providers_base.py``);
this module chooses one and builds the bundle, and reads the release and event log files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from veil.attestation.evidence import (
    NO_TEE_WARNING,
    AttestationError,
    Evidence,
    EvidenceFormat,
    GpuEvidence,
    ReleaseEvidence,
    gpu_digest,
    gpu_nonce,
    report_data,
)
from veil.attestation.providers_base import (
    AttestationProvider,
    ProviderUnavailable,
    check_report_data,
    log,
)
from veil.attestation.providers_nvidia import NvidiaProvider
from veil.attestation.providers_tsm import TSM_REPORT_ROOT, ConfigfsTsmProvider, TsmKernel


class NoTeeProvider:
    """No TEE. The keys are not protected by anything; use only for development."""

    name = "none"

    def __init__(self) -> None:
        log.warning("attestation: %s; clients in strict mode will refuse this node", NO_TEE_WARNING)

    def get_evidence(self, report_data: bytes) -> None:
        check_report_data(report_data)
        return None


PROVIDER_NAMES = ("auto", "tdx", "sev-snp", "none")
GPU_PROVIDER_NAMES = ("auto", "nvidia", "off")


def choose_provider(
    name: str = "auto", *, tsm_root: Path = TSM_REPORT_ROOT, kernel: TsmKernel | None = None
) -> AttestationProvider:
    """The named CPU TEE provider, or with ``"auto"`` configfs-tsm where it exists, else none.

    A named provider that is not available here is an error, never a silent fallback.
    """
    if name == "nvidia":
        raise ProviderUnavailable(
            "nvidia is GPU evidence, collected beside a CPU TEE's (TDX or SEV-SNP) that binds it; "
            "choose the CPU TEE with --attestation and the GPUs with --gpu-attestation"
        )
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown attestation provider {name!r} (choose from {PROVIDER_NAMES})")
    if name in ("auto", "tdx", "sev-snp"):
        found = ConfigfsTsmProvider("tdx", tsm_root, kernel=kernel).probe()
        if found is not None and name in ("auto", found):
            return ConfigfsTsmProvider(found, tsm_root, kernel=kernel)
        if name != "auto":
            seen = (
                f"configfs-tsm here serves a {found} guest"
                if found
                else f"{tsm_root} is missing (a {name} guest with Linux 6.7+ configfs-tsm is needed)"
            )
            raise ProviderUnavailable(f"{name} evidence is unavailable: {seen}")
    return NoTeeProvider()


def choose_gpu_provider(name: str = "auto") -> NvidiaProvider | None:
    """GPU evidence: ``auto`` takes NVIDIA's where a CC GPU is present, ``off`` none; a named
    provider that is not available is an error."""
    if name not in GPU_PROVIDER_NAMES:
        raise ValueError(f"unknown GPU attestation {name!r} (choose from {GPU_PROVIDER_NAMES})")
    if name == "off":
        return None
    nvidia = NvidiaProvider()
    if nvidia.available():
        return nvidia
    if name == "nvidia":
        raise ProviderUnavailable(f"nvidia evidence unavailable: {nvidia.unavailable_reason()}")
    return None


def build_evidence(
    provider: AttestationProvider,
    x25519_public_key: bytes,
    ed25519_public_key: bytes,
    nonce: bytes,
    *,
    gpu_provider: NvidiaProvider | None = None,
    collateral: dict[str, Any] | None = None,
    release: ReleaseEvidence | None = None,
    event_log: list[dict[str, Any]] | None = None,
    kem_public_key: bytes | None = None,
) -> Evidence:
    """One evidence bundle: GPU reports over ``gpu_nonce`` first, then the CPU TEE's report over
    ``report_data``, which commits to both keys, the GPU evidence's digest and ``nonce`` (and,
    with the veil-v3 formula, to ``kem_public_key``: the node's post-quantum key)."""
    gpus: list[GpuEvidence] = []
    if gpu_provider is not None:
        gpus = gpu_provider.get_gpu_evidence(
            gpu_nonce(x25519_public_key, ed25519_public_key, nonce)
        )
    digest = gpu_digest([(g.report, g.cert_chain.encode()) for g in gpus])
    bound = report_data(x25519_public_key, ed25519_public_key, nonce, digest, kem_public_key)
    quote = provider.get_evidence(bound)
    fmt: EvidenceFormat = "none" if quote is None else _format_of(provider)
    return Evidence(
        format=fmt,
        report_data=bound,
        nonce=nonce,
        x25519_public_key=x25519_public_key,
        ed25519_public_key=ed25519_public_key,
        kem_public_key=kem_public_key,
        quote=quote,
        collateral=collateral if quote is not None else None,
        event_log=event_log if quote is not None else None,
        gpus=tuple(gpus),
        release=release,
        warning=NO_TEE_WARNING if quote is None else None,
    )


def _format_of(provider: AttestationProvider) -> EvidenceFormat:
    name = provider.name
    if name in ("tdx", "sev-snp"):
        return cast(EvidenceFormat, name)
    raise AttestationError(f"provider {name!r} returned evidence of an unknown format")


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise AttestationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AttestationError(f"{what} {path} is not valid JSON: {exc}") from None


def load_release_evidence(settings: Any) -> ReleaseEvidence | None:
    """The node's release manifest and its signature, from the files its settings name."""
    manifest_path = getattr(settings, "release_manifest", None)
    signature_path = getattr(settings, "release_signature", None)
    bundle_path = getattr(settings, "release_bundle", None)
    if manifest_path is None and signature_path is None and bundle_path is None:
        return None
    if signature_path is None and bundle_path is None:
        raise AttestationError(
            "a release manifest needs its signature: --release-signature or --release-bundle"
        )
    manifest = None
    if manifest_path is not None:
        try:
            manifest = Path(manifest_path).read_bytes()
        except OSError as exc:
            raise AttestationError(
                f"cannot read release manifest {manifest_path}: {exc.strerror or exc}"
            ) from None
    return ReleaseEvidence(
        manifest=manifest,
        signature=None
        if signature_path is None
        else _read_json_file(Path(signature_path), "release signature"),
        sigstore_bundle=None
        if bundle_path is None
        else _read_json_file(Path(bundle_path), "Sigstore bundle"),
    )


def load_event_log(settings: Any) -> list[dict[str, Any]] | None:
    path = getattr(settings, "event_log", None)
    if path is None:
        return None
    document = _read_json_file(Path(path), "event log")
    if isinstance(document, dict) and isinstance(document.get("event_log"), list):
        document = document["event_log"]
    if not isinstance(document, list) or not all(isinstance(e, dict) for e in document):
        raise AttestationError(f"event log {path} is not a JSON list of events")
    return document
