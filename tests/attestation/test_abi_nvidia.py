"""Parsing NVIDIA Hopper SPDM reports and GPU evidence documents, on real samples."""

from __future__ import annotations

import json

import pytest

from tests.attestation.nvidia_samples import (
    NONCE,
    NV,
    REPORT,
    TINFOIL_CHAIN,
    TINFOIL_NONCE,
    TINFOIL_REPORT,
    raw_report,
)
from veil.attestation.abi_nvidia import (
    GpuReportFormatError,
    parse_gpu_evidence_json,
    parse_gpu_report,
)
from veil.attestation.verify_nvidia import gpu_evidence_digest


def test_parses_nvidias_sample_report() -> None:
    report = parse_gpu_report(REPORT)
    assert report.nonce == NONCE
    assert report.driver_version == "550.90.07"
    assert report.vbios_version == "96.00.9F.00.01"
    assert len(report.measurements) == 64
    assert {b.index for b in report.measurements} == set(range(1, 65))
    assert all(len(b.value) == 48 for b in report.measurements)
    assert len(report.signature) == 96
    assert report.signed_bytes == raw_report()[:-96]
    assert parse_gpu_report(raw_report()) == report  # hex text and raw bytes alike


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "at least"),
        (raw_report()[:200], "overruns"),
        (raw_report()[:-1], "length fields say"),
        (raw_report() + b"\x00", "length fields say"),
        (b"\x10" + raw_report()[1:], "GET_MEASUREMENTS"),
        (raw_report()[:37] + b"\x11\x61" + raw_report()[39:], "MEASUREMENTS response"),
    ],
)
def test_malformed_reports_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(GpuReportFormatError, match=message):
        parse_gpu_report(data)


def test_a_block_count_that_disagrees_with_the_record_is_refused() -> None:
    data = bytearray(raw_report())
    data[37 + 4] = 63  # the response says 63 blocks; the record holds 64
    with pytest.raises(GpuReportFormatError, match="announces 63"):
        parse_gpu_report(bytes(data))


def test_tinfoil_gpu_evidence_digest_and_contents() -> None:
    document = (NV / "teep_tinfoil_gpu_evidence.json").read_bytes()
    assert gpu_evidence_digest(document).hex() == (
        "580ca6c7d7510dccc05551ed04ea1ce621d3c89d1ac02455871b38140c967fba"
    )
    assert gpu_evidence_digest(document + b" ") != gpu_evidence_digest(document)
    (item,) = parse_gpu_evidence_json(document)
    assert item.arch == "HOPPER"
    assert item.report == TINFOIL_REPORT
    assert item.cert_chain_pem == TINFOIL_CHAIN
    assert item.nonce == TINFOIL_NONCE
    # the bare SDK list (what NvidiaProvider serialises) reads the same
    assert parse_gpu_evidence_json(json.dumps(json.loads(document)["evidences"])) == (item,)
    with pytest.raises(GpuReportFormatError, match="lacks 'certificate'"):
        parse_gpu_evidence_json([{"evidence": ""}])
