"""The GPU RIM steps: RIM signatures at the time, measurements against the RIMs, firmware
versions pinned."""

from __future__ import annotations

import pytest

from tests.attestation.nvidia_samples import (
    AT,
    CHAIN,
    DRIVER_RIM,
    NONCE,
    NV,
    OLD_RIM_AT,
    OTHER_VBIOS_RIM,
    REPORT,
    TINFOIL_AT,
    TINFOIL_CHAIN,
    TINFOIL_NONCE,
    TINFOIL_REPORT,
    TODAY,
    VBIOS_RIM,
    rim_with_flip,
    rims,
)
from veil.attestation.rim import RimError, load_rim
from veil.attestation.verify_nvidia import verify_gpu_report


def test_other_vbios_rim_mismatches_at_exactly_1_2_9_11() -> None:
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=OLD_RIM_AT,
        expected_nonce=NONCE,
        rims=rims(DRIVER_RIM, OTHER_VBIOS_RIM),
    )
    assert result.check("GPU RIM signatures").ok is True  # genuine, and valid on OLD_RIM_AT
    assert result.mismatched_indices == (1, 2, 9, 11)
    step = result.check("GPU measurements")
    assert step.ok is False and "index(es) 1, 2, 9, 11" in step.detail
    versions = result.check("GPU firmware versions")
    assert versions.ok is False
    assert "96.00.5E.00.01" in versions.detail and "96.00.9F.00.01" in versions.detail
    assert not result.ok


def test_a_driver_rim_alone_leaves_the_vbios_unchecked() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(DRIVER_RIM))
    step = result.check("GPU measurements")
    assert step.ok is False and "no VBIOS RIM" in step.detail
    assert result.measurements_matched == 21
    assert "no valid VBIOS RIM given" in result.check("GPU firmware versions").detail
    assert not result.ok


def test_today_the_rim_signing_certificates_have_expired() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=TODAY, expected_nonce=NONCE, rims=rims())
    step = result.check("GPU RIM signatures")
    assert step.ok is False
    assert "expired on 2026-06-01T02:08:29Z" in step.detail  # the driver RIM's signer
    assert "expired on 2026-02-22" in step.detail  # the VBIOS RIM's signer
    assert result.check("GPU measurements").ok is False
    assert result.check("GPU certificate chain").ok is True  # the device chain runs to 9999
    assert not result.ok


def test_a_flipped_byte_in_a_rim_measurement_fails() -> None:
    # measurement 7 of the driver RIM (active): one hex digit changed
    tampered = rim_with_flip(
        DRIVER_RIM, b'index="7" active="True" alternatives="1" ns2:Hash0="', 60
    )
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=AT,
        expected_nonce=NONCE,
        rims={DRIVER_RIM: tampered, VBIOS_RIM: (NV / VBIOS_RIM).read_bytes()},
    )
    step = result.check("GPU RIM signatures")
    assert step.ok is False and DRIVER_RIM in step.detail and "does not verify" in step.detail
    assert result.check("GPU measurements").ok is False
    assert not result.ok
    with pytest.raises(RimError, match="does not verify"):
        load_rim(tampered, at=AT, name=DRIVER_RIM)


def test_tinfoil_h100_without_rims_or_pins_fails_measurements_saying_what_to_pin() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT, TINFOIL_CHAIN, at=TINFOIL_AT, expected_nonce=TINFOIL_NONCE
    )
    step = result.check("GPU measurements")
    assert step.ok is False
    assert "allowed_drivers=('595.71.05',)" in step.detail
    assert "allowed_vbios=('96.00.D9.00.02',)" in step.detail
    assert not result.ok


def test_tinfoil_h100_passes_with_both_versions_pinned() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT,
        TINFOIL_CHAIN,
        at=TINFOIL_AT,
        expected_nonce=TINFOIL_NONCE,
        allowed_drivers=("595.71.05",),
        allowed_vbios=("96.00.d9.00.02",),  # NVIDIA writes VBIOS versions in either case
    )
    assert result.ok, result.failures
    assert result.check("GPU firmware versions").ok is True
    assert result.check("GPU measurements").ok is True


@pytest.mark.parametrize(
    ("drivers", "vbios", "step", "ok"),
    [
        (("550.90.07",), ("96.00.D9.00.02",), "GPU firmware versions", False),
        (("595.71.05",), (), "GPU measurements", False),  # one pin alone is not enough
    ],
)
def test_tinfoil_h100_wrong_or_partial_pins_fail(
    drivers: tuple[str, ...], vbios: tuple[str, ...], step: str, ok: bool
) -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT,
        TINFOIL_CHAIN,
        at=TINFOIL_AT,
        expected_nonce=TINFOIL_NONCE,
        allowed_drivers=drivers,
        allowed_vbios=vbios,
    )
    assert result.check(step).ok is ok
    assert not result.ok
