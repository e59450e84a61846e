"""TDX quote verification in the page (dcap-qvl compiled to WebAssembly) on the real sample quote
and collateral of ../shared/attestation-samples, at the time its collateral holds (2025-07-01)
and today (expired), genuine and with one byte flipped."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT
from tests.web.browser import Browser
from veil.attestation.abi_tdx import parse_tdx_quote

SAMPLES = Path(
    os.environ.get("VEIL_ATTESTATION_SAMPLES", ROOT.parent / "shared" / "attestation-samples")
)
SCRIPT = (Path(__file__).resolve().parent / "tdx.js").read_text()
AT = "2025-07-01T00:00:00Z"
MR_TD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"


@pytest.fixture(scope="module")
def results(browser: Browser, console_url: str) -> dict[str, Any]:
    quote = SAMPLES / "tdx_quote"
    if not quote.is_file():
        pytest.fail(f"the attestation samples are missing: {SAMPLES}")
    page = browser.page()
    try:
        page.goto(console_url)
        parsed = parse_tdx_quote(quote.read_bytes())  # Python's own parser, to compare
        arg = {
            "quote": base64.b64encode(quote.read_bytes()).decode(),
            "collateral": json.loads((SAMPLES / "tdx_quote_collateral.json").read_text()),
            "at": AT,
            "pins": {"mr_td": MR_TD},
            "expect": parsed.report_data.hex(),
        }
        result: dict[str, Any] = page.evaluate(SCRIPT, arg)
        result["python_report_data"] = parsed.report_data.hex()
        return result
    finally:
        page.close()


def outcome(run: dict[str, Any]) -> dict[str, bool]:
    return {s["name"]: s["ok"] for s in run["steps"]}


def test_a_genuine_quote_passes_every_step_at_its_time(results: dict[str, Any]) -> None:
    genuine = results["genuine"]
    assert outcome(genuine) == {
        "collateral": True, "quote": True, "TD attributes": True, "TCB status": True,
        "measurements": True,
    }  # fmt: skip
    assert genuine["reportData"] == results["python_report_data"]
    assert "TCB info issued" in genuine["steps"][0]["detail"]  # the collateral dates, shown


def test_measurements_must_be_pinned_and_match(results: dict[str, Any]) -> None:
    assert outcome(results["unpinned"])["measurements"] is False
    assert MR_TD in results["unpinned"]["steps"][-1]["detail"]  # the value to pin
    assert outcome(results["wrongPin"])["measurements"] is False


def test_a_flipped_byte_fails_the_quote(results: dict[str, Any]) -> None:
    assert outcome(results["tampered"]) == {"collateral": True, "quote": False}
    assert results["tampered"]["reportData"] is None


def test_expired_collateral_is_refused_today(results: dict[str, Any]) -> None:
    assert outcome(results["today"]) == {"collateral": False}


def test_a_genuine_quote_bound_to_other_keys_is_refused(results: dict[str, Any]) -> None:
    whole = results["whole"]
    assert whole["ok"] is False
    assert dict(whole["steps"])["quote"] is True and dict(whole["steps"])["binding"] is False
