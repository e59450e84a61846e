"""NVIDIA Hopper GPU evidence for the GPU tests: real samples (../shared/attestation-samples/nvidia).

Times, and why:

- ``AT`` = 2025-10-24T12:00Z: NVIDIA recorded the RIM chains' OCSP replies at 11:32Z that day
  (valid for 24 h), and both RIM signing certificates were still valid (they expired 2026-02-22
  and 2026-06-01). The device chain's replies are a day's answer from 2025-08-21, so at ``AT``
  they are stale and must fail;
- ``DEVICE_OCSP_AT`` = 2025-08-21T12:00Z: inside the device replies' window (06:47Z + 24 h), and
  the RIM signing certificates were valid too; at that time the RIM chains' replies (issued two
  months later) are not yet valid;
- ``OLD_RIM_AT`` = 2025-01-15: the other VBIOS RIM's signing certificate expired 2025-06-22, so its
  mismatch is shown while its signature is still valid;
- ``TODAY`` = 2026-12-02 (the machine's date): the RIM signing certificates have expired.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tests.attestation import SAMPLES

NV = SAMPLES / "nvidia"


OCSP_DIR = NV / "ocsp"


REPORT = (NV / "nvtrust_hopperAttestationReport.txt").read_bytes()


CHAIN = (NV / "nvtrust_hopperCertChain.txt").read_bytes()


DRIVER_RIM = "NV_GPU_DRIVER_GH100_550.90.07.swidtag"


VBIOS_RIM = "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag"


OTHER_VBIOS_RIM = "nvtrust_1010_0200_882_96005E0001_PROD.swidtag"


NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


TINFOIL_REPORT = (NV / "teep_tinfoil_h100_evidence.bin").read_bytes()


TINFOIL_CHAIN = (NV / "teep_tinfoil_h100_certchain.pem").read_bytes()


TINFOIL_NONCE = bytes.fromhex("080c405ce6789e1761445180029523df3ae49576043f7f0868413a38e5e9a84e")


TINFOIL_AT = datetime(2026, 6, 29, 2, 8, 14, tzinfo=UTC)  # when its TDX quote verified


AT = datetime(2025, 10, 24, 12, 0, tzinfo=UTC)


DEVICE_OCSP_AT = datetime(2025, 8, 21, 12, 0, tzinfo=UTC)


OLD_RIM_AT = datetime(2025, 1, 15, tzinfo=UTC)


TODAY = datetime(2026, 12, 2, tzinfo=UTC)


def rims(*names: str) -> dict[str, bytes]:
    return {name: (NV / name).read_bytes() for name in names or (DRIVER_RIM, VBIOS_RIM)}


def replies(kind: str) -> dict[str, bytes]:
    """``device``: the three device-chain replies; ``rim``: the four RIM-chain replies."""
    files = sorted(OCSP_DIR.glob("*.dat"))
    chosen = [f for f in files if ("gpu_certificate" in f.name) == (kind == "device")]
    return {f.name: f.read_bytes() for f in chosen}


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def raw_report() -> bytes:
    return bytes.fromhex(REPORT.decode().strip())


def rim_with_flip(name: str, marker: bytes, shift: int) -> bytes:
    data = (NV / name).read_bytes()
    offset = data.index(marker) + shift
    changed = b"0" if data[offset : offset + 1] != b"0" else b"1"
    return data[:offset] + changed + data[offset + 1 :]
