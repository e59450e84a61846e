"""``veil attest pin``: trust on first use only for evidence that verifies, and pins that round-trip
through a policy file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.attestation import COLLATERAL, QUOTE, SAMPLE_MR_TD
from tests.servers import ServerThread
from veil.attestation.cli import attest_app
from veil.config import NodeSettings
from veil.node.app import create_app
from veil.node.keyring import Keyring
from veil.node.service import EngineRegistry

GOOD_AT = "2025-07-01T00:00:00Z"


runner = CliRunner()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Keyring]]:
    data_dir = tmp_path_factory.mktemp("node")
    settings = NodeSettings(data_dir=data_dir, embedded=False)
    keyring = Keyring(data_dir)
    with ServerThread(create_app(settings, EngineRegistry(), keyring, manage_engines=False)) as srv:
        yield srv.url, keyring


def test_pin_refuses_a_node_whose_evidence_fails_more_than_the_pins(
    node: tuple[str, Keyring], tmp_path: Path
) -> None:
    """The node here has no TEE: nothing to pin, so no policy is written (trust on first use
    still needs evidence that verifies)."""
    url, _ = node
    out_file = tmp_path / "policy.toml"
    result = runner.invoke(attest_app, ["pin", url, "--out", str(out_file)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "not pinned" in result.stderr
    assert not out_file.exists()


def test_pins_seen_in_a_report_round_trip_through_a_policy_file(tmp_path: Path) -> None:
    from veil.attestation.cli import _toml, pins_from_report
    from veil.attestation.policy import Policy
    from veil.attestation.report import verify_quote

    report = verify_quote(QUOTE.read_bytes(), json.loads(COLLATERAL.read_text()), Policy(),
                          at=datetime_of(GOOD_AT))  # fmt: skip
    evidence = type("Bundle", (), {"format": "tdx", "event_log": None})()
    pins = pins_from_report(evidence, report)  # type: ignore[arg-type]
    assert pins["mr_td"] == SAMPLE_MR_TD and set(pins) == {
        "mr_td",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
    }
    path = tmp_path / "pinned.toml"
    path.write_text(_toml(pins))
    again = verify_quote(QUOTE.read_bytes(), json.loads(COLLATERAL.read_text()), Policy.load(path),
                         at=datetime_of(GOOD_AT))  # fmt: skip
    assert again.step("measurements").outcome == "pass" and again.ok


def datetime_of(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)
