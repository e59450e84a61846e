"""GPU steps 5-7, against NVIDIA's reference integrity manifests: RIM signatures, firmware
versions, measurements.

Each RIM is a signed SWID tag (``rim``) for one driver or VBIOS version; its active measurements
must equal the report's blocks at their indices. Without RIMs, only pinned driver and VBIOS
versions can vouch for the firmware.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from veil.attestation.abi_nvidia import GpuReport
from veil.attestation.gpu_check import STEP_MEASUREMENTS, STEP_VERSIONS, GpuCheck
from veil.attestation.rim import Rim, RimError, load_rim

__all__ = ["check_measurements", "check_versions", "load_rims"]


def load_rims(
    rims: Sequence[bytes] | Mapping[str, bytes], at: datetime, roots: Iterable[bytes]
) -> tuple[list[Rim], list[str]]:
    items = (
        list(rims.items())
        if isinstance(rims, Mapping)
        else [(f"RIM {i + 1}", data) for i, data in enumerate(rims)]
    )
    loaded, problems = [], []
    pins = tuple(roots)
    for name, data in items:
        try:
            loaded.append(load_rim(bytes(data), at=at, name=name, pinned_roots=pins))
        except RimError as exc:
            problems.append(str(exc))
    return loaded, problems


def _same_version(a: str, b: str) -> bool:
    """Versions as NVIDIA writes them; VBIOS hex digits appear in either case."""
    return a.strip().lower() == b.strip().lower()


def check_versions(
    report: GpuReport,
    rims: list[Rim],
    rims_given: int,
    allowed_drivers: Sequence[str],
    allowed_vbios: Sequence[str],
) -> GpuCheck:
    driver, vbios = report.driver_version, report.vbios_version
    actual = f"driver {driver}, VBIOS {vbios}"
    if not rims_given and not allowed_drivers and not allowed_vbios:
        return GpuCheck(STEP_VERSIONS, None, f"no RIMs and no version pins ({actual})")
    problems = []
    if driver is None or vbios is None:
        problems.append("the report does not state its driver and VBIOS versions")
    if rims_given:
        for kind, reported in (("driver", driver), ("vbios", vbios)):
            of_kind = [r for r in rims if r.kind == kind]
            shown = "VBIOS" if kind == "vbios" else kind
            if not of_kind:
                problems.append(f"no valid {shown} RIM given")
            for rim in of_kind:
                if reported is None or not _same_version(rim.version, reported):
                    problems.append(
                        f"{shown} RIM {rim.name!r} is for {rim.version}, the GPU runs {reported}"
                    )
            if len(of_kind) > 1:
                problems.append(f"more than one {shown} RIM given")
    if allowed_drivers and not any(driver and _same_version(driver, p) for p in allowed_drivers):
        problems.append(f"driver {driver} is not among the pinned {', '.join(allowed_drivers)}")
    if allowed_vbios and not any(vbios and _same_version(vbios, p) for p in allowed_vbios):
        problems.append(f"VBIOS {vbios} is not among the pinned {', '.join(allowed_vbios)}")
    expected = "; ".join(
        part
        for part in (
            f"RIM driver {', '.join(r.version for r in rims if r.kind == 'driver')}"
            if rims
            else "",
            f"RIM VBIOS {', '.join(r.version for r in rims if r.kind == 'vbios')}" if rims else "",
            f"pinned drivers {', '.join(allowed_drivers)}" if allowed_drivers else "",
            f"pinned VBIOS {', '.join(allowed_vbios)}" if allowed_vbios else "",
        )
        if part
    )
    if problems:
        return GpuCheck(STEP_VERSIONS, False, "; ".join(problems), expected=expected, actual=actual)
    sources = " and ".join(
        s
        for s, on in (
            ("the RIMs", rims_given),
            ("the version pins", allowed_drivers or allowed_vbios),
        )
        if on
    )
    return GpuCheck(STEP_VERSIONS, True, f"{actual} match {sources}")


def check_measurements(
    report: GpuReport,
    rims: list[Rim],
    rim_problems: list[str],
    allowed_drivers: Sequence[str],
    allowed_vbios: Sequence[str],
) -> tuple[GpuCheck, tuple[int, ...], int]:
    driver, vbios = report.driver_version, report.vbios_version
    if not rims and not rim_problems:
        if allowed_drivers and allowed_vbios:
            return (
                GpuCheck(
                    STEP_MEASUREMENTS,
                    True,
                    f"no RIM given: the {len(report.measurements)} measurements are not compared; "
                    f"the firmware is accepted by its signed versions (driver {driver}, VBIOS "
                    f"{vbios}), which the version pins decide",
                ),
                (),
                0,
            )
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                "no RIM given and the firmware versions are not pinned, so nothing vouches for the "
                f"GPU's measurements: supply NVIDIA's driver and VBIOS RIMs, or pin "
                f"allowed_drivers=('{driver}',) and allowed_vbios=('{vbios}',)",
            ),
            (),
            0,
        )
    # 1. the golden values: driver and VBIOS RIMs must not both claim an index
    golden: dict[int, tuple[tuple[bytes, ...], str]] = {}
    clashes = []
    for rim in rims:
        for index, values in rim.measurements.items():
            if index in golden:
                clashes.append(index)
            golden[index] = (values, rim.name)
    if clashes:
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"two RIMs both set measurement index(es) {', '.join(map(str, sorted(clashes)))}",
            ),
            tuple(sorted(clashes)),
            0,
        )
    # 2. compare each active one with the report's block (RIM index i = SPDM block i + 1)
    mismatched = []
    for index, (values, _) in sorted(golden.items()):
        block = report.measurement(index + 1)
        seen = block.value if block is not None else b""
        if not any(hmac.compare_digest(seen, value) for value in values):
            mismatched.append(index)
    matched = len(golden) - len(mismatched)
    unverified = " (against RIMs whose signatures did not all verify)" if rim_problems else ""
    if not golden:
        return GpuCheck(STEP_MEASUREMENTS, False, "no valid RIM to compare with"), (), 0
    if mismatched:
        first = mismatched[0]
        block = report.measurement(first + 1)
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"{len(mismatched)} of {len(golden)} active measurements differ from the RIMs, at "
                f"index(es) {', '.join(map(str, mismatched))}{unverified}",
                expected=golden[first][0][0].hex(),
                actual=block.value.hex() if block is not None else None,
            ),
            tuple(mismatched),
            matched,
        )
    if rim_problems:
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"all {matched} active measurements match, but not every RIM verified",
            ),
            (),
            matched,
        )
    kinds = {rim.kind for rim in rims}
    if kinds != {"driver", "vbios"}:
        absent = "VBIOS" if "vbios" not in kinds else "driver"
        return (
            GpuCheck(
                STEP_MEASUREMENTS,
                False,
                f"all {matched} active measurements match, but no {absent} RIM was given: the "
                f"{absent}'s measurements are unchecked",
            ),
            (),
            matched,
        )
    return (
        GpuCheck(
            STEP_MEASUREMENTS,
            True,
            f"all {matched} active measurements match the RIMs ({', '.join(r.name for r in rims)})",
        ),
        (),
        matched,
    )
