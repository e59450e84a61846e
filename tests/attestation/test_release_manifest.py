"""The release manifest model: parsing, its measurement sets and matching them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.attestation import SAMPLE_MR_TD, quote_bytes
from tests.attestation.release_samples import manifest_bytes, manifest_document
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.release import (
    ReleaseManifest,
    ReleaseManifestError,
    parse_manifest,
    tdx_fields,
)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (manifest_document(tdx=[{"mr_td": "ab" * 47}]), "tdx.0.mr_td"),
        (manifest_document(tdx=[{"rtmr1": "ab" * 49}]), "48 bytes"),
        (manifest_document(sev_snp=[{"measurement": "zz" * 48}]), "must be hex"),
        (manifest_document(sev_snp=[{"measurement": "ab" * 32}]), "found 32 bytes"),
        (manifest_document(signature="x"), "signature: Extra inputs are not permitted"),
        (manifest_document(tdx=[{"mr_td": SAMPLE_MR_TD, "mrtd": SAMPLE_MR_TD}]), "tdx.0.mrtd"),
        (
            manifest_document(gpu=[{"driver_version": "550", "vbios_version": "9", "x": 1}]),
            "gpu.0.x",
        ),
        (manifest_document(tdx=[{}]), "must pin at least one of mr_td"),
        (manifest_document(models={"m": "sha256:" + "AB" * 32}), "64 lowercase hex"),
        (manifest_document(models={"m": "md5:" + "ab" * 16}), "digest must be 'sha256:'"),
        (manifest_document(tdx=[], sev_snp=[]), "at least one TDX or SEV-SNP"),
        (manifest_document(release=""), "release"),
    ],
)
def test_invalid_manifests_are_rejected(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ReleaseManifestError, match="not a valid release manifest") as caught:
        parse_manifest(json.dumps(document).encode())
    assert message in caught.value.reason


def test_manifest_that_is_not_json_is_rejected() -> None:
    with pytest.raises(ReleaseManifestError, match="not valid JSON"):
        parse_manifest(b"release = 'x'")


def test_manifest_round_trips_as_hex() -> None:
    manifest = parse_manifest(manifest_bytes())
    dumped = manifest.model_dump(mode="json")
    assert dumped["tdx"][0]["mr_td"] == SAMPLE_MR_TD
    assert ReleaseManifest.model_validate(dumped) == manifest
    with pytest.raises(Exception):
        manifest.release = "changed"  # type: ignore[misc]


def test_tdx_match_on_a_real_quote() -> None:
    quote = parse_tdx_quote(quote_bytes())
    manifest = parse_manifest(manifest_bytes())
    assert manifest.tdx_match(quote) == {"mr_td", "rtmr3"}
    assert manifest.tdx_match(tdx_fields(quote)) == {"mr_td", "rtmr3"}
    wrong_rtmr = manifest_document(tdx=[{"mr_td": SAMPLE_MR_TD, "rtmr3": "01" * 48}])
    assert parse_manifest(json.dumps(wrong_rtmr).encode()).tdx_match(quote) is None
    # A second set that matches is found after one that does not.
    two = manifest_document(tdx=wrong_rtmr["tdx"] + [{"mr_td": SAMPLE_MR_TD}])
    assert parse_manifest(json.dumps(two).encode()).tdx_match(quote) == {"mr_td"}
    # A field the quote does not report never matches.
    fields = tdx_fields(quote)
    del fields["rtmr3"]
    assert manifest.tdx_match(fields) is None


def test_gpu_and_model_match() -> None:
    manifest = parse_manifest(manifest_bytes())
    assert manifest.gpu_match("550.90.07", "96.00.9f.00.01")
    assert not manifest.gpu_match("550.90.08", "96.00.9F.00.01")
    assert not manifest.gpu_match("550.90.07", "96.00.5E.00.01")
    assert manifest.model_match("smollm2-135m-instruct", "sha256:" + "ab" * 32)
    assert not manifest.model_match("smollm2-135m-instruct", "sha256:" + "ab" * 31 + "ac")
    assert not manifest.model_match("other-model", "sha256:" + "ab" * 32)
