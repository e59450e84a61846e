"""NVIDIA confidential-computing GPUs' evidence, via ``nv-attestation-sdk`` when that package is
installed and a GPU with CC mode on is present. GPU evidence is not a CPU TEE: it rides in the
same bundle as a TDX or SEV-SNP report, which binds it (``providers.choose_gpu_provider``).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import importlib.util
from typing import Any

from veil.attestation.evidence import AttestationError, GpuEvidence
from veil.attestation.providers_base import ProviderUnavailable

NVIDIA_NONCE_SIZE = 32


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
