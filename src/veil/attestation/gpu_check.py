"""One GPU step's outcome (``GpuCheck``) and the names of the GPU steps, shared by their modules."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GpuCheck"]

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
