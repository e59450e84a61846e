"""NVIDIA Hopper GPU attestation, offline: the public names in one place.

- ``abi_nvidia``    the SPDM GET_MEASUREMENTS request + response ("attestation report") bytes
- ``pki_nvidia``    NVIDIA's pinned device and RIM roots, chain checks, OCSP replies
- ``rim``           reference integrity manifests (signed SWID tags) via signxml
- ``verify_nvidia`` the numbered checks, ``verify_gpu_report`` and ``check_gpu``
- ``nras``          NVIDIA's remote verdict (NRAS EAT JWTs), a second opinion checked offline
"""

from veil.attestation.abi_nvidia import (
    GpuEvidenceItem,
    GpuReport,
    GpuReportFormatError,
    parse_gpu_evidence_json,
    parse_gpu_report,
)
from veil.attestation.nras import NrasError, NrasVerdict, check_nras, verify_nras_eat
from veil.attestation.pki_nvidia import DEVICE_ROOT_SHA256, RIM_ROOT_SHA256
from veil.attestation.rim import Rim, RimError, load_rim
from veil.attestation.verify_nvidia import (
    GpuCheck,
    GpuVerification,
    check_gpu,
    gpu_evidence_digest,
    verify_gpu_report,
)

__all__ = [
    "DEVICE_ROOT_SHA256",
    "RIM_ROOT_SHA256",
    "GpuCheck",
    "GpuEvidenceItem",
    "GpuReport",
    "GpuReportFormatError",
    "GpuVerification",
    "NrasError",
    "NrasVerdict",
    "Rim",
    "RimError",
    "check_gpu",
    "check_nras",
    "gpu_evidence_digest",
    "load_rim",
    "parse_gpu_evidence_json",
    "parse_gpu_report",
    "verify_gpu_report",
    "verify_nras_eat",
]
