"""Signed releases in the page (release.ts, references.ts): a manifest signed with Python's own
``sign_manifest`` under a fresh Ed25519 key (the user's release key), listing the real sample
measurements of ../shared/attestation-samples (the TDX sample quote's MRTD and RTMRs, AMD's
Genoa report), verified in Chromium with WebCrypto and used by the TDX, SNP and GPU steps; each
case also run through Python's own verify_release / check_release / check_tdx_measurements /
check_sev_snp / check_gpus: the same steps, outcomes and (for the release step) reasons."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.attestation.snp_samples import GENOA_MEASUREMENT, MILAN_MEASUREMENT, genoa
from tests.web.browser import Browser, Page
from tests.web.conftest import Served, sign_in
from tests.web.test_tdx import AT as TDX_AT
from tests.web.test_tdx import SAMPLES
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.evidence import ReleaseEvidence
from veil.attestation.policy import Policy
from veil.attestation.release import (
    ReleaseSigner,
    ReleaseVerificationError,
    sign_manifest,
    verify_release,
)
from veil.attestation.release_ed25519 import SIGNATURE_DOMAIN
from veil.attestation.report_gpus import check_gpus
from veil.attestation.report_references import check_release
from veil.attestation.report_snp import check_sev_snp
from veil.attestation.report_steps import VerificationReport
from veil.attestation.report_tdx import check_tdx_measurements

SCRIPT = (Path(__file__).resolve().parent / "release.js").read_text()
SNP_AT = "2026-06-29T12:00:00Z"
NAME = "veil-node 1.2.3"
ZERO = "00" * 48


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def raw_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


KEY, OTHER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
QUOTE = parse_tdx_quote((SAMPLES / "tdx_quote").read_bytes())
MR_TD, RTMRS = QUOTE.mr_td.hex(), [r.hex() for r in QUOTE.rtmrs]


def manifest(tdx: list[dict[str, str]], snp: list[bytes], **extra: Any) -> bytes:
    doc = {"release": NAME, "tdx": tdx, "sev_snp": [{"measurement": m.hex()} for m in snp]}
    return json.dumps({**doc, **extra}, indent=2).encode()  # the exact bytes, signed as they are


GENUINE = manifest(
    [{"mr_td": ZERO}, {"mr_td": MR_TD, "rtmr0": RTMRS[0], "rtmr1": RTMRS[1], "rtmr2": RTMRS[2]}],
    [MILAN_MEASUREMENT, GENOA_MEASUREMENT],
    gpu=[{"driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01"}],
    created_at="2026-06-01T00:00:00Z",
)
NOT_LISTING = manifest([{"mr_td": ZERO}], [MILAN_MEASUREMENT])
RTMR_ONLY = manifest([{"rtmr1": RTMRS[1], "rtmr2": RTMRS[2]}], [MILAN_MEASUREMENT])
FLIPPED = GENUINE.replace(b"1.2.3", b"1.2.4")


def sig(raw: bytes, key: Ed25519PrivateKey = KEY) -> bytes:
    return json.dumps(sign_manifest(raw, key)).encode()


def forged(raw: bytes, key: Ed25519PrivateKey = KEY, **override: str) -> bytes:
    """A signature document made by hand (sign_manifest refuses an invalid manifest)."""
    digest = hashlib.sha256(raw).digest()
    doc = {
        "format": "veil-release-signature-v1",
        "manifest_sha256": digest.hex(),
        "public_key": b64(raw_key(key)),
        "signature": b64(key.sign(SIGNATURE_DOMAIN + digest)),
    }
    return json.dumps({**doc, **override}).encode()


BAD_SIZE = manifest([{"mr_td": MR_TD[:-2]}], [])
SIGNATURES: dict[str, dict[str, Any]] = {
    "genuine": {"manifest": GENUINE, "signature": sig(GENUINE), "keys": [KEY]},
    "two_keys": {"manifest": GENUINE, "signature": sig(GENUINE), "keys": [OTHER, KEY]},
    "flipped_manifest": {"manifest": FLIPPED, "signature": sig(GENUINE), "keys": [KEY]},
    "flipped_digest_too": {
        "manifest": FLIPPED,
        "signature": forged(GENUINE, manifest_sha256=hashlib.sha256(FLIPPED).hexdigest()),
        "keys": [KEY],
    },
    "other_key": {"manifest": GENUINE, "signature": sig(GENUINE, OTHER), "keys": [KEY]},
    "wrong_format": {"manifest": GENUINE, "signature": forged(GENUINE, format="veil-v0"), "keys": [KEY]},
    "short_signature": {"manifest": GENUINE, "signature": forged(GENUINE, signature=b64(b"x" * 63)), "keys": [KEY]},
    "invalid_manifest": {"manifest": BAD_SIZE, "signature": forged(BAD_SIZE), "keys": [KEY]},
}  # fmt: skip


# Manifests signed as they are (valid or not): parse_manifest's verdict, in the page too.
TDX_SET = {"mr_td": MR_TD}
MANIFESTS = {
    "extra_field": {"release": NAME, "tdx": [TDX_SET], "unknown": 1},
    "no_cpu_tee": {"release": NAME, "gpu": [{"driver_version": "1", "vbios_version": "2"}]},
    "empty_tdx_set": {"release": NAME, "tdx": [{}]},
    "unknown_register": {"release": NAME, "tdx": [{**TDX_SET, "rtmr9": ZERO}]},
    "empty_name": {"release": "", "tdx": [TDX_SET]},
    "bad_model_digest": {"release": NAME, "tdx": [TDX_SET], "models": {"m": "sha256:xyz"}},
    "bad_bundle_digest": {"release": NAME, "tdx": [TDX_SET], "console_bundle_sha256": "ab"},
    "bad_created_at": {"release": NAME, "tdx": [TDX_SET], "created_at": "yesterday"},
    "long_gpu_version": {
        "release": NAME, "tdx": [TDX_SET],
        "gpu": [{"driver_version": "9" * 65, "vbios_version": "1"}],
    },
    "prefixed_upper_hex": {"release": NAME, "tdx": [{"mr_td": "0x" + MR_TD.upper()}]},
    "created_at_number": {"release": NAME, "sev_snp": [{"measurement": ZERO}], "created_at": 1700000000},
    "models_and_bundle": {
        "release": NAME, "tdx": [TDX_SET], "models": {"m": "sha256:" + "ab" * 32},
        "console_bundle_sha256": "cd" * 32,
    },
}  # fmt: skip
for _name, _doc in MANIFESTS.items():
    _raw = json.dumps(_doc).encode()
    SIGNATURES[f"manifest_{_name}"] = {"manifest": _raw, "signature": forged(_raw), "keys": [KEY]}

# Refused by the page alone: a Sigstore bundle (Python verifies those, offline, with `sigstore`).
SIGSTORE = json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}).encode()
PAGE_ONLY = {"sigstore_bundle": {"manifest": GENUINE, "signature": SIGSTORE, "keys": [KEY]}}


def _encode(case: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in case.items() if k not in ("manifest", "signature", "keys")}
    if case.get("manifest") is not None:
        out["manifest"], out["signature"] = b64(case["manifest"]), b64(case["signature"])
    out["keys"] = [b64(raw_key(k)) for k in case["keys"]]
    out.setdefault("pins", {})
    return out


def release(raw: bytes = GENUINE, signature: bytes | None = None, **extra: Any) -> dict[str, Any]:
    return {"manifest": raw, "signature": signature or sig(raw), "keys": [KEY], **extra}


TDX_CASES = {
    "release": release(),
    "release_and_pin": release(pins={"mr_td": MR_TD}),
    "release_pin_differs": release(pins={"rtmr3": ZERO}),
    "not_listed": release(NOT_LISTING),
    "rtmr_only_release": release(RTMR_ONLY),
    "rtmr_only_release_mr_td_pinned": release(RTMR_ONLY, pins={"mr_td": MR_TD}),
    "flipped": release(FLIPPED, sig(GENUINE)),
    "other_key": release(signature=sig(GENUINE, OTHER)),
    "shown_by_node": release(shown=True),
    "keys_but_no_release": {"manifest": None, "keys": [KEY]},
    "shown_but_no_key": release(shown=True, keys=[]),
}
SNP_CASES = {
    "release": release(),
    "release_pin_narrows_to_it": release(pins={"snp_measurement": GENOA_MEASUREMENT.hex()}),
    "release_pin_narrows_it_out": release(pins={"snp_measurement": MILAN_MEASUREMENT.hex()}),
    "pin_not_in_release": release(NOT_LISTING, pins={"snp_measurement": GENOA_MEASUREMENT.hex()}),
    "not_listed": release(NOT_LISTING),
    "flipped": release(FLIPPED, sig(GENUINE)),
    "shown_by_node": release(shown=True),
    "shown_by_node_other_key": release(signature=sig(GENUINE, OTHER), shown=True),
}
GPU_CASES = {"release_expects_gpus": release(), "no_gpu_sets": release(NOT_LISTING)}


def _python_refs(case: dict[str, Any], report: VerificationReport, at: datetime) -> Any:
    pins = dict(case.get("pins", {}))
    if "snp_measurement" in pins:
        pins["snp_measurement"] = (pins["snp_measurement"],)
    policy = Policy(
        release_signers=tuple(ReleaseSigner(ed25519_public_key=raw_key(k)) for k in case["keys"]),
        **pins,
    )
    shown = None
    if case.get("manifest") is not None:
        shown = ReleaseEvidence(manifest=case["manifest"], signature=json.loads(case["signature"]))
    return check_release(report, SimpleNamespace(release=shown), policy, at)  # type: ignore[arg-type]


def _python_tdx(case: dict[str, Any]) -> VerificationReport:
    report = VerificationReport(subject="TDX")
    refs = _python_refs(case, report, datetime(2025, 7, 1, tzinfo=UTC))
    check_tdx_measurements(report, QUOTE, refs)
    return report


def _python_snp(case: dict[str, Any]) -> VerificationReport:
    report = VerificationReport(subject="SNP")
    at = datetime(2026, 6, 29, 12, tzinfo=UTC)
    refs = _python_refs(case, report, at)
    report_raw, vcek, chain = genoa()
    check_sev_snp(report, report_raw, vcek, chain, refs, at, None)
    return report


def _python_gpus(case: dict[str, Any]) -> VerificationReport:
    report = VerificationReport(subject="GPU")
    at = datetime(2026, 6, 29, 12, tzinfo=UTC)
    check_gpus(report, SimpleNamespace(gpus=()), _python_refs(case, report, at), at)  # type: ignore[arg-type]
    return report


@pytest.fixture(scope="module")
def results(browser: Browser, console_url: str) -> dict[str, Any]:
    g = genoa()
    quote = (SAMPLES / "tdx_quote").read_bytes()
    collateral = json.loads((SAMPLES / "tdx_quote_collateral.json").read_text())
    zeros = b64(bytes(32))
    arg = {
        "signatures": {n: _encode(c) for n, c in {**SIGNATURES, **PAGE_ONLY}.items()},
        "tdx": {"quote": b64(quote), "collateral": collateral, "at": TDX_AT, "cases": {n: _encode(c) for n, c in TDX_CASES.items()}},
        "snp": {"report": b64(g[0]), "vcek": b64(g[1]), "chain": g[2].decode(), "at": SNP_AT, "cases": {n: _encode(c) for n, c in SNP_CASES.items()}},
        "gpus": {n: _encode(c) for n, c in GPU_CASES.items()},
        "whole": {
            **_encode(release()),
            "evidence": {
                "format": "tdx", "quote": b64(quote), "collateral": collateral,
                "report_data": b64(QUOTE.report_data), "nonce": zeros,
                "x25519_public_key": zeros, "ed25519_public_key": zeros,
            },
        },
    }  # fmt: skip
    page = browser.page()
    try:
        page.goto(console_url)
        out: dict[str, Any] = page.evaluate(SCRIPT, arg)
        assert page.errors() == []
    finally:
        page.close()
    return out


def outcome(steps: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    return [(s["name"], s["ok"]) for s in steps]


def _python_verify(case: dict[str, Any]) -> str | None:
    signers = [ReleaseSigner(ed25519_public_key=raw_key(k)) for k in case["keys"]]
    try:
        verify_release(case["manifest"], case["signature"], signers)
    except ReleaseVerificationError as exc:
        return exc.reason
    return None


def test_signatures_verify_as_pythons_verify_release(results: dict[str, Any]) -> None:
    for name, case in SIGNATURES.items():
        page, python = results["signatures"][name], _python_verify(case)
        assert page["ok"] is (python is None), (name, page, python)
        if python is not None and name != "invalid_manifest" and not name.startswith("manifest_"):
            # (pydantic words its own errors)
            assert page["reason"] == python, name
        elif python is not None:  # pydantic words its own errors: the same field is named
            where = "manifest is not a valid release manifest: "
            assert page["reason"].startswith(where) and python.startswith(where), name
            assert page["reason"].split(": ")[1] == python.split(": ")[1], (name, page, python)
    genuine = results["signatures"]["genuine"]
    assert genuine["release"] == NAME and genuine["digest"] == hashlib.sha256(GENUINE).hexdigest()
    assert genuine["signer"] == f"ed25519: {b64(raw_key(KEY))}"
    assert genuine["manifest"]["sev_snp"] == [MILAN_MEASUREMENT.hex(), GENOA_MEASUREMENT.hex()]
    assert genuine["manifest"]["gpu"] == [["550.90.07", "96.00.9F.00.01"]]


def test_a_flipped_byte_or_another_key_fails_the_signature(results: dict[str, Any]) -> None:
    s = results["signatures"]
    assert s["flipped_manifest"]["reason"].startswith("signature is for manifest sha256")
    assert "does not verify over manifest" in s["flipped_digest_too"]["reason"]
    assert s["other_key"]["reason"].startswith("release signer is not trusted: signed by ed25519: ")
    assert s["invalid_manifest"]["reason"].startswith(
        "manifest is not a valid release manifest: tdx.0.mr_td"
    )


PAGE_WORDED = {"keys_but_no_release", "shown_but_no_key"}


def test_a_sigstore_release_is_refused_in_the_page(results: dict[str, Any]) -> None:
    refused = results["signatures"]["sigstore_bundle"]
    assert refused["ok"] is False
    assert refused["reason"].startswith("Sigstore release bundles are not verified in this page")
    assert "veil release verify" in refused["reason"] and "veil attest verify" in refused["reason"]


def test_tdx_measurements_through_the_release_as_python(results: dict[str, Any]) -> None:
    for name, case in TDX_CASES.items():
        page = [
            s for s in results["tdx"][name]["steps"] if s["name"] in ("release", "measurements")
        ]
        python = _python_tdx(case).steps
        assert outcome(page) == [(s.name, s.ok) for s in python], name
        for mine, theirs in zip(page, python, strict=True):
            if name in PAGE_WORDED and mine["name"] == "release":  # names its panel, not a policy
                assert "Attestation panel" in mine["detail"], name
            elif mine["name"] == "release" or theirs.ok:
                assert mine["detail"] == theirs.detail, name
    run = results["tdx"]["release"]
    assert [(n, ok) for n, ok in outcome(run["steps"])] == [
        ("release", True), ("collateral", True), ("quote", True), ("TD attributes", True),
        ("TCB status", True), ("measurements", True),
    ]  # fmt: skip
    assert (
        run["facts"]["release"] == NAME
        and run["facts"]["release_match"] == "tdx[1] (mr_td, rtmr0, rtmr1, rtmr2)"
    )
    assert run["facts"]["release_source"] == "loaded in this page"
    assert results["tdx"]["shown_by_node"]["facts"]["release_source"] == "shown by the node"


def test_snp_measurements_through_the_release_as_python(results: dict[str, Any]) -> None:
    for name, case in SNP_CASES.items():
        page, python = results["snp"][name]["steps"], _python_snp(case).steps
        assert outcome(page) == [(s.name, s.ok) for s in python], name
        assert page[0]["detail"] == python[0].detail, name  # the release step, word for word
    assert dict(outcome(results["snp"]["release"]["steps"]))["measurements"] is True
    assert results["snp"]["release"]["facts"]["release_match"] == "sev_snp[1]"
    for refused in ("release_pin_narrows_it_out", "pin_not_in_release", "not_listed", "flipped"):
        assert dict(outcome(results["snp"][refused]["steps"]))["measurements"] is False, refused


def test_gpu_sets_of_the_release_as_python(results: dict[str, Any]) -> None:
    for name, case in GPU_CASES.items():
        page, python = results["gpus"][name]["steps"], _python_gpus(case).steps
        assert outcome(page) == [(s.name, s.ok) for s in python], name
    assert outcome(results["gpus"]["release_expects_gpus"]["steps"])[-1] == ("GPU evidence", False)


def test_the_whole_check_shows_the_release_step_after_format(results: dict[str, Any]) -> None:
    whole = results["whole"]
    names = [n for n, _ in whole["steps"]]
    assert names[:3] == ["format", "release", "collateral"]
    assert dict(whole["steps"])["release"] is True and dict(whole["steps"])["measurements"] is True
    assert dict(whole["steps"])["binding"] is False  # the sample binds Tinfoil's keys, not these
    assert whole["facts"]["release_sha256"] == hashlib.sha256(GENUINE).hexdigest()


SET_FILES = """([manifest, signature]) => {
  const put = (testid, b64, name) => {
    const dt = new DataTransfer();
    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name));
    document.querySelector(`[data-testid=${testid}]`).files = dt.files;
  };
  put("release-manifest", manifest, "manifest.json");
  put("release-signature", signature, "manifest.sig.json");
}"""
VERDICT = "() => { const t = document.querySelector('[data-testid=release-verdict]')?.textContent ?? ''; return /^(VERIFIED|REFUSED)/.test(t) ? t : null; }"


def _load(page: Page, raw: bytes, signature: bytes, key: bytes) -> str:
    page.evaluate(
        "() => { document.querySelector('[data-testid=release-verdict]').textContent = ''; }"
    )
    page.evaluate(SET_FILES, [b64(raw), b64(signature)])
    page.fill("release-keys", b64(key))
    page.click("load-release")
    return str(page.wait_for(VERDICT, timeout=30))


def test_the_panel_loads_a_release_under_the_users_key(page: Page, served: Served) -> None:
    key = served.new_user("web-release", {})
    sign_in(page, served.url, key)
    page.click("nav-attestation")
    page.wait("release-keys")
    verdict = _load(page, GENUINE, sig(GENUINE), raw_key(KEY))
    assert verdict.startswith(f"VERIFIED release {NAME} (manifest sha256 ")
    assert "2 TDX, 2 SEV-SNP, 1 GPU set(s)" in verdict
    assert page.evaluate("() => localStorage.getItem('veil.release') !== null") is True
    verdict = _load(page, FLIPPED, sig(GENUINE), raw_key(KEY))
    assert (
        verdict.startswith("REFUSED: signature is for manifest sha256")
        and "no release is loaded" in verdict
    )
    assert page.evaluate("() => localStorage.getItem('veil.release')") is None
    verdict = _load(page, GENUINE, sig(GENUINE, OTHER), raw_key(KEY))
    assert verdict.startswith("REFUSED: release signer is not trusted")
    assert page.errors() == []
