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

``choose_provider("auto")`` takes configfs-tsm where it exists, else "none".
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol, cast

from veil.attestation.evidence import (
    NO_TEE_WARNING,
    REPORT_DATA_SIZE,
    AttestationError,
    Evidence,
    EvidenceFormat,
    GpuEvidence,
    ReleaseEvidence,
    gpu_digest,
    gpu_nonce,
    report_data,
)

log = logging.getLogger("veil.attestation")

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
TSM_PROVIDERS: dict[str, EvidenceFormat] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}
NVIDIA_NONCE_SIZE = 32


class ProviderUnavailable(AttestationError):
    """The named evidence source does not exist on this machine."""


class TsmRaceError(AttestationError):
    """Another writer touched our configfs-tsm entry between our write and our read."""


class AttestationProvider(Protocol):
    name: str

    def get_evidence(self, report_data: bytes) -> bytes | None:
        """The TEE's signed statement over ``report_data`` (None when there is no TEE)."""
        ...


class TsmKernel(Protocol):
    """What the kernel does on configfs-tsm operations, for running without one.

    Production passes nothing: the real configfs does all of this itself. Tests pass a stand-in
    that creates the attribute files on ``mkdir``, reacts to writes (bump ``generation``, produce
    ``outblob``) and removes the files before ``rmdir``. There is no TEE in such a test.
    """

    def created(self, entry: Path) -> None: ...

    def written(self, entry: Path, attribute: str) -> None: ...

    def removing(self, entry: Path) -> None: ...


def _check_report_data(value: bytes) -> bytes:
    if len(value) != REPORT_DATA_SIZE:
        raise AttestationError(f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(value)}")
    return bytes(value)


class ConfigfsTsmProvider:
    """TDX or SEV-SNP evidence through configfs-tsm."""

    def __init__(
        self,
        format: EvidenceFormat,
        root: Path = TSM_REPORT_ROOT,
        *,
        kernel: TsmKernel | None = None,
    ) -> None:
        if format not in TSM_PROVIDERS.values():
            raise ValueError(f"configfs-tsm gives tdx or sev-snp evidence, not {format!r}")
        self.name: str = format
        self.format: EvidenceFormat = format
        self.root = Path(root)
        self._kernel = kernel

    # -- one report entry -----------------------------------------------------------------
    def _create_entry(self) -> Path:
        if not self.root.is_dir():
            raise ProviderUnavailable(f"configfs-tsm is not available: {self.root} does not exist")
        entry = self.root / f"veil-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            entry.mkdir(mode=0o700)
        except OSError as exc:
            raise ProviderUnavailable(
                f"cannot create a report entry under {self.root}: {exc.strerror or exc}"
            ) from None
        if self._kernel is not None:
            self._kernel.created(entry)
        return entry

    def _remove_entry(self, entry: Path) -> None:
        if self._kernel is not None:
            self._kernel.removing(entry)
        try:
            entry.rmdir()
        except OSError as exc:  # leaves a stale entry behind, but the evidence itself is fine
            log.warning("could not remove configfs-tsm entry %s: %s", entry.name, exc.strerror)

    def _write(self, entry: Path, attribute: str, data: bytes) -> None:
        # configfs gathers a binary attribute's writes and hands the blob to the driver on close,
        # so generation moves once the file is closed.
        fd = os.open(entry / attribute, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise AttestationError(f"short write to configfs-tsm {attribute}")
        finally:
            os.close(fd)
        if self._kernel is not None:
            self._kernel.written(entry, attribute)

    @staticmethod
    def _generation(entry: Path) -> int:
        return int((entry / "generation").read_text().strip())

    @staticmethod
    def _provider(entry: Path) -> str:
        return (entry / "provider").read_text().strip()

    # -- the interface ---------------------------------------------------------------------
    def probe(self) -> EvidenceFormat | None:
        """Which TEE configfs-tsm reports here; None where the interface does not exist.

        Where it exists but cannot be used (no permission, a TEE Veil does not know), this raises
        instead: a confidential machine must never quietly fall back to "no TEE".
        """
        if not self.root.is_dir():
            return None
        entry = self._create_entry()
        try:
            provider = self._provider(entry)
        except OSError as exc:
            raise ProviderUnavailable(
                f"cannot read the configfs-tsm provider: {exc.strerror or exc}"
            ) from None
        finally:
            self._remove_entry(entry)
        found = TSM_PROVIDERS.get(provider)
        if found is None:
            raise ProviderUnavailable(
                f"configfs-tsm provider {provider!r} is not one Veil supports"
            )
        return found

    def get_evidence(self, report_data: bytes) -> bytes:
        inblob = _check_report_data(report_data)
        entry = self._create_entry()
        try:
            return self._report(entry, inblob)
        except OSError as exc:  # e.g. EIO when the TEE firmware refuses to produce a report
            raise AttestationError(
                f"configfs-tsm did not produce a report: {exc.strerror or exc}"
            ) from None
        finally:
            self._remove_entry(entry)

    def _report(self, entry: Path, inblob: bytes) -> bytes:
        provider = self._provider(entry)
        if TSM_PROVIDERS.get(provider) != self.format:
            raise ProviderUnavailable(
                f"configfs-tsm is served by {provider!r}, not a {self.format} guest"
            )
        expected = self._generation(entry) + 1  # the kernel counts our one write
        self._write(entry, "inblob", inblob)
        if self._generation(entry) != expected:
            raise TsmRaceError("configfs-tsm entry was written by someone else before reading")
        outblob = (entry / "outblob").read_bytes()
        if self._generation(entry) != expected:
            raise TsmRaceError("configfs-tsm entry was written by someone else while reading")
        if not outblob:
            raise AttestationError(f"{provider} returned an empty report")
        return outblob


class NvidiaProvider:
    """NVIDIA confidential GPUs' evidence through ``nv-attestation-sdk`` (only where it and a CC
    GPU exist). Not a CPU TEE: its evidence rides beside a TDX or SEV-SNP report, which commits to
    its digest (see ``evidence.py``), and each GPU signs ``gpu_nonce`` of the bundle's keys.
    """

    name = "nvidia"

    @staticmethod
    def sdk_installed() -> bool:
        return importlib.util.find_spec("nv_attestation_sdk") is not None

    @staticmethod
    def cc_gpu_present() -> bool:
        try:
            nvml: Any = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception:  # no NVML library, no driver, no GPU: all mean "not here"
            return False
        try:
            state = nvml.nvmlSystemGetConfComputeState()
            return bool(getattr(state, "ccFeature", 0))
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):  # shutting down a library we only probed
                nvml.nvmlShutdown()

    @classmethod
    def available(cls) -> bool:
        return cls.sdk_installed() and cls.cc_gpu_present()

    def unavailable_reason(self) -> str:
        if not self.sdk_installed():
            return "nv-attestation-sdk is not installed"
        return "no NVIDIA GPU with confidential computing enabled was found"

    def get_gpu_evidence(self, nonce: bytes) -> list[GpuEvidence]:
        """Every GPU's SPDM report over ``nonce`` (32 bytes) and its device certificate chain."""
        if len(nonce) != NVIDIA_NONCE_SIZE:
            raise AttestationError(f"the GPU nonce must be {NVIDIA_NONCE_SIZE} bytes")
        if not self.available():
            raise ProviderUnavailable(f"nvidia evidence unavailable: {self.unavailable_reason()}")
        sdk: Any = importlib.import_module("nv_attestation_sdk.attestation")
        client = sdk.Attestation()
        client.clear_verifiers()
        client.add_verifier(sdk.Devices.GPU, sdk.Environment.LOCAL, "", "")
        client.set_nonce(nonce.hex())
        collected = client.get_evidence(ppcie_mode=False)
        # Some SDK versions answer (nonce, evidence_list), others the list alone.
        if isinstance(collected, tuple) and len(collected) == 2:
            collected = collected[1]
        if not collected:
            raise AttestationError("the NVIDIA SDK returned no GPU evidence")
        try:
            return [
                GpuEvidence(
                    arch=str(item.get("arch", "HOPPER")).upper(),
                    report=base64.b64decode(item["evidence"]),
                    cert_chain=base64.b64decode(item["certificate"]).decode("ascii"),
                )
                for item in collected
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise AttestationError(
                "the NVIDIA SDK returned GPU evidence of an unknown shape"
            ) from None


class NoTeeProvider:
    """No TEE. The keys are not protected by anything; use only for development."""

    name = "none"

    def __init__(self) -> None:
        log.warning("attestation: %s; clients in strict mode will refuse this node", NO_TEE_WARNING)

    def get_evidence(self, report_data: bytes) -> None:
        _check_report_data(report_data)
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
