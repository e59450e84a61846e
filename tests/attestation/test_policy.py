"""Policy files: JSON or TOML, strict about names so a typo cannot loosen them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.attestation import SAMPLE_MR_TD
from veil.attestation.policy import Policy, PolicyError


def test_default_allows_only_up_to_date_pins_nothing_and_refuses_no_tee() -> None:
    policy = Policy()
    assert policy.allowed_tcb_statuses == ("UpToDate",)
    assert policy.pins() == {}
    assert policy.allow_no_tee is False


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "allowed_tcb_statuses": ["UpToDate", "OutOfDate"],
                "mr_td": SAMPLE_MR_TD.upper(),
                "allow_no_tee": True,
            }
        )
    )
    policy = Policy.load(path)
    assert policy.allows_status("OutOfDate")
    assert policy.pins() == {"mr_td": bytes.fromhex(SAMPLE_MR_TD)}
    assert policy.allow_no_tee


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'allowed_tcb_statuses = ["SWHardeningNeeded"]\nrtmr3 = "{"00" * 48}"\n')
    policy = Policy.load(path)
    assert policy.allowed_tcb_statuses == ("SWHardeningNeeded",)
    assert policy.pins() == {"rtmr3": bytes(48)}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"allowed_tcb_status": ["UpToDate"]}, "allowed_tcb_status"),
        ({"allowed_tcb_statuses": ["UpTodate"]}, "unknown TCB status UpTodate"),
        ({"allowed_tcb_statuses": ["Revoked"]}, "never be allowed"),
        ({"allowed_tcb_statuses": []}, "allowed_tcb_statuses"),
        ({"mr_td": "abcd"}, "48 bytes"),
        ({"rtmr1": "zz" * 48}, "hex"),
    ],
)
def test_mistakes_are_errors(tmp_path: Path, document: dict[str, object], complaint: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyError, match=complaint):
        Policy.load(path)


def test_unreadable_or_malformed_files_say_which(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.toml"
    broken.write_text("allow_no_tee = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.load(broken)
