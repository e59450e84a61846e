"""The report model: steps, their outcomes, and how a report shows them."""

from __future__ import annotations

from rich.console import Console

from tests.attestation import (
    GOOD_AT,
    SAMPLE_MR_TD,
    collateral,
    quote_bytes,
)
from veil.attestation.policy import Policy
from veil.attestation.report import verify_quote


def test_render_shows_each_step_and_the_tcb_status() -> None:
    policy = Policy(mr_td=bytes.fromhex(SAMPLE_MR_TD))
    report = verify_quote(quote_bytes(), collateral(), policy, at=GOOD_AT)
    console = Console(record=True, width=200)
    console.print(report.render())
    text = console.export_text()
    for expected in ("quote", "TD attributes", "TCB status", "UpToDate", "PASS", SAMPLE_MR_TD):
        assert expected in text
    as_dict = report.to_dict()
    assert as_dict["ok"] is True and as_dict["tcb_status"] == "UpToDate"
