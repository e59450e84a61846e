"""NVIDIA GPU verification in the page (gpu.ts: WebCrypto + PKI.js) on NVIDIA's own Hopper sample
report and device chain (at 2025-10-24, with its nonce) and a live H100 report from Tinfoil, each
case also run through Python's check_gpu: the same steps, in the same order, with the same
outcomes (and, where they fail, the same reasons).

RIMs and OCSP replies, verified in the page too, are test_gpu_rim.py's."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.attestation.nvidia_samples import (
    AT,
    CHAIN,
    DRIVER_RIM,
    NONCE,
    NV,
    TINFOIL_AT,
    TINFOIL_CHAIN,
    TINFOIL_NONCE,
    TINFOIL_REPORT,
    VBIOS_RIM,
    flip,
    raw_report,
)
from tests.attestation.snp_samples import MILAN_MEASUREMENT, milan
from tests.web.browser import Browser
from veil.attestation.abi_nvidia import parse_gpu_report
from veil.attestation.evidence import gpu_digest, gpu_nonce, report_data
from veil.attestation.report_steps import VerificationReport
from veil.attestation.verify_nvidia import check_gpu
from veil.attestation.verify_snp import check_snp

SCRIPT = (Path(__file__).resolve().parent / "gpu.js").read_text()
DRIVER, VBIOS = "550.90.07", "96.00.9F.00.01"
GPU_STEPS = [
    "GPU signature",
    "GPU certificate chain",
    "GPU FWID",
    "GPU nonce",
    "GPU RIM signatures",
    "GPU firmware versions",
    "GPU measurements",
    "GPU OCSP",
    "GPU RIM OCSP",
]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem_certs(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker + b"\n" for part in pem.split(marker) if b"BEGIN" in part]


def _cases() -> dict[str, dict[str, Any]]:
    report = raw_report()
    pins = {"drivers": [DRIVER], "vbios": [VBIOS]}
    certs = _pem_certs(CHAIN)
    root = (NV / "nvtrust_verifier_RIM_root.pem").read_bytes()
    return {
        "genuine": {"report": report, **pins},
        "unpinned": {"report": report},
        "driver_only": {"report": report, "drivers": [DRIVER]},
        "wrong_driver": {"report": report, "drivers": ["535.0.0"], "vbios": [VBIOS]},
        "flipped": {"report": flip(report, 60), **pins},  # a measurement value
        "signature_flipped": {"report": flip(report, len(report) - 1), **pins},
        "other_nonce": {"report": report, "nonce": bytes(32), **pins},
        "no_root": {"report": report, "chain": b"".join(certs[:-1]), **pins},
        "rim_root": {"report": report, "chain": b"".join(certs[:-1]) + root, **pins},
        "too_early": {"report": report, "at": datetime(2020, 1, 1), **pins},
        "tinfoil": {
            "report": TINFOIL_REPORT,
            "chain": TINFOIL_CHAIN,
            "nonce": TINFOIL_NONCE,
            "at": TINFOIL_AT,
            "drivers": ["595.71.05"],
            "vbios": ["96.00.D9.00.02"],
        },
    }


def _python(case: dict[str, Any]) -> VerificationReport:
    report = VerificationReport(subject="GPU")
    at = case.get("at", AT)
    check_gpu(
        report,
        case["report"],
        case.get("chain", CHAIN),
        at=at if at.tzinfo else at.replace(tzinfo=AT.tzinfo),
        expected_nonce=case.get("nonce", NONCE),
        allowed_drivers=case.get("drivers", ()),
        allowed_vbios=case.get("vbios", ()),
    )
    return report


def _page_case(case: dict[str, Any]) -> dict[str, Any]:
    at = case.get("at", AT)
    return {
        "report": b64(case["report"]),
        "chain": case.get("chain", CHAIN).decode(),
        "at": iso(at),
        "nonce": b64(case.get("nonce", NONCE)),
        "rims": [],
        "ocsp": [],
        "drivers": case.get("drivers", []),
        "vbios": case.get("vbios", []),
    }


KEYS = {"x": bytes(range(32)), "e": bytes(range(32, 64)), "n": bytes(range(64, 96))}


def _bundle() -> dict[str, Any]:
    report, vcek, chain = milan()
    gpu = {"arch": "HOPPER", "report": b64(raw_report()), "cert_chain": CHAIN.decode()}
    return {
        "format": "sev-snp",
        "quote": b64(report),
        "report_data": b64(report[0x50:0x90]),
        "nonce": b64(KEYS["n"]),
        "x25519_public_key": b64(KEYS["x"]),
        "ed25519_public_key": b64(KEYS["e"]),
        "vcek": b64(vcek),
        "cert_chain": chain.decode(),
        "gpus": [gpu],
    }


@pytest.fixture(scope="module")
def results(browser: Browser, console_url: str) -> dict[str, Any]:
    cases = _cases()
    page_cases = {name: _page_case(c) for name, c in cases.items()}
    rims = [b64((NV / name).read_bytes()) for name in (DRIVER_RIM, VBIOS_RIM)]
    gpu = {"report": b64(raw_report()), "cert_chain": CHAIN.decode()}
    arg = {
        "cases": page_cases,
        "parse": {"nvtrust": b64(raw_report()), "tinfoil": b64(TINFOIL_REPORT)},
        "many": {
            "keys": {"x25519": b64(KEYS["x"]), "ed25519": b64(KEYS["e"]), "nonce": b64(KEYS["n"])},
            "gpus": [gpu, {**gpu, "rims": rims}],
            "at": iso(AT),
            "pins": {"gpu_driver_versions": [DRIVER], "gpu_vbios_versions": [VBIOS]},
        },
        "bundle": {
            "bundle": _bundle(),
            "at": iso(AT),
            "pins": {
                "snp_measurement": MILAN_MEASUREMENT.hex(),
                "gpu_driver_versions": [DRIVER],
                "gpu_vbios_versions": [VBIOS],
            },
        },
    }
    page = browser.page()
    try:
        page.goto(console_url)
        out: dict[str, Any] = page.evaluate(SCRIPT, arg)
        assert page.errors() == []
    finally:
        page.close()
    out["python"] = {name: _python(c) for name, c in cases.items()}
    return out


def outcome(steps: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    return [(s["name"], s["ok"]) for s in steps]


def test_every_case_has_pythons_steps_outcomes_and_reasons(results: dict[str, Any]) -> None:
    for name, python in results["python"].items():
        page = results["cases"][name]["steps"]
        assert outcome(page) == [(s.name, s.ok) for s in python.steps], name
        assert [bool(s.get("notChecked")) for s in page] == [s.not_checked for s in python.steps]
        for mine, theirs in zip(page, python.steps, strict=True):
            if not theirs.ok and theirs.name != "GPU measurements":  # the page says where to pin
                assert mine["detail"] == theirs.detail, name


def test_the_genuine_report_passes_with_its_versions_pinned(results: dict[str, Any]) -> None:
    steps = results["cases"]["genuine"]["steps"]
    assert [s["name"] for s in steps] == GPU_STEPS and all(s["ok"] for s in steps)
    not_checked = [s["name"] for s in steps if s.get("notChecked")]
    assert not_checked == ["GPU RIM signatures", "GPU OCSP", "GPU RIM OCSP"]
    assert results["cases"]["genuine"]["facts"]["gpu_driver"] == DRIVER
    assert results["cases"]["genuine"]["facts"]["gpu_vbios"] == VBIOS
    tinfoil = dict(outcome(results["cases"]["tinfoil"]["steps"]))
    assert all(tinfoil[n] for n in GPU_STEPS[:4])


def test_a_flipped_byte_fails_the_signature(results: dict[str, Any]) -> None:
    for name in ("flipped", "signature_flipped"):
        assert dict(outcome(results["cases"][name]["steps"]))["GPU signature"] is False, name


def test_the_chain_must_end_at_nvidias_pinned_root(results: dict[str, Any]) -> None:
    for name, reason in (
        ("no_root", "is not self-signed"),
        ("rim_root", "is not signed by the next certificate"),
        ("too_early", "is not valid before"),
    ):
        step = results["cases"][name]["steps"][1]
        assert step["name"] == "GPU certificate chain" and step["ok"] is False, name
        assert reason in step["detail"], name


def test_nonce_and_versions_are_checked(results: dict[str, Any]) -> None:
    assert dict(outcome(results["cases"]["other_nonce"]["steps"]))["GPU nonce"] is False
    wrong = dict(outcome(results["cases"]["wrong_driver"]["steps"]))
    assert wrong["GPU firmware versions"] is False
    unpinned = {s["name"]: s for s in results["cases"]["unpinned"]["steps"]}
    assert unpinned["GPU measurements"]["ok"] is False
    assert f'gpu_driver_versions = ["{DRIVER}"]' in unpinned["GPU measurements"]["detail"]


def test_parsed_fields_equal_pythons(results: dict[str, Any]) -> None:
    for name, raw in (("nvtrust", raw_report()), ("tinfoil", TINFOIL_REPORT)):
        py = parse_gpu_report(raw)
        page = results["parsed"][name]
        assert page["nonce"] == py.nonce.hex()
        assert page["driver"] == py.driver_version and page["vbios"] == py.vbios_version
        assert page["fwid"] == (py.fwid.hex() if py.fwid else None)
        assert page["signed"] == py.signed_bytes.hex() and page["signature"] == py.signature.hex()
        assert page["measurements"] == {str(b.index): b.value.hex() for b in py.measurements}


def test_several_gpus_are_numbered_and_answer_gpu_nonce(results: dict[str, Any]) -> None:
    many = results["many"]
    assert many["gpuNonce"] == gpu_nonce(KEYS["x"], KEYS["e"], KEYS["n"]).hex()
    names = [s["name"] for s in many["steps"]]
    assert names == [f"{n} 0" for n in GPU_STEPS] + [f"{n} 1" for n in GPU_STEPS]
    steps = dict(outcome(many["steps"]))
    assert steps["GPU nonce 0"] is False  # NVIDIA's sample answers another nonce
    assert steps["GPU signature 1"] is True and steps["GPU RIM signatures 1"] is True  # NVIDIA's
    assert many["facts"]["gpu0_gpu_driver"] == DRIVER
    assert outcome(results["none"]) == [("GPU evidence", False)]  # pinned GPUs, none given


def test_an_snp_bundle_with_a_gpu_runs_both_then_the_binding(results: dict[str, Any]) -> None:
    bundle = results["bundle"]
    names = [s["name"] for s in bundle["steps"]]
    snp = ["SNP signature", "SNP certificate chain", "SNP VCEK extensions", "SNP policy"]
    assert names == ["format", *snp, "SNP TCB", "measurements", *GPU_STEPS, "binding",
                     "expected keys", "nonce"]  # fmt: skip
    steps = dict(outcome(bundle["steps"]))
    assert all(steps[n] for n in snp) and steps["measurements"]
    assert steps["GPU signature"] and steps["GPU certificate chain"] and steps["GPU FWID"]
    assert steps["GPU nonce"] is False and steps["binding"] is False and bundle["ok"] is False
    report, vcek, chain = milan()
    python = VerificationReport(subject="SNP")
    check_snp(python, report, vcek, chain, at=AT, accepted_measurements=[MILAN_MEASUREMENT],
              allow_debug=True)  # fmt: skip
    assert python.ok  # the same SNP verdict in Python
    digest = gpu_digest([(raw_report(), CHAIN)])
    want = report_data(KEYS["x"], KEYS["e"], KEYS["n"], digest)
    assert bundle["facts"]["report_data_expected"] == want.hex()
    # Without a GPU verifier the page refuses the bundle's GPU evidence outright.
    assert ("gpus", False) in outcome(bundle["bare"])
