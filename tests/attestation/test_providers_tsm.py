"""ConfigfsTsmProvider on a stand-in for the kernel's side of configfs-tsm (no TEE here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.attestation.tsm_standin import ConfigfsStandIn
from veil.attestation.evidence import AttestationError, report_data
from veil.attestation.providers import build_evidence
from veil.attestation.providers_base import ProviderUnavailable
from veil.attestation.providers_tsm import ConfigfsTsmProvider, TsmRaceError

X = bytes(range(32))
ED = bytes(range(100, 132))
NONCE = bytes(range(200, 232))


@pytest.fixture
def standin(tmp_path: Path) -> ConfigfsStandIn:
    return ConfigfsStandIn(tmp_path / "tsm" / "report")


def test_inblob_is_exactly_the_64_byte_report_data(standin: ConfigfsStandIn) -> None:
    provider = ConfigfsTsmProvider("tdx", standin.root, kernel=standin)
    evidence = build_evidence(provider, X, ED, NONCE)
    assert standin.inblobs == [report_data(X, ED, NONCE)]
    assert len(standin.inblobs[0]) == 64
    assert evidence.format == "tdx"
    assert evidence.quote == standin.report_for(report_data(X, ED, NONCE))


def test_evidence_report_data_binds_the_keys_and_nonce(standin: ConfigfsStandIn) -> None:
    evidence = build_evidence(
        ConfigfsTsmProvider("tdx", standin.root, kernel=standin), X, ED, NONCE
    )
    assert evidence.report_data == report_data(X, ED, NONCE) == evidence.expected_report_data()
    assert (evidence.x25519_public_key, evidence.ed25519_public_key, evidence.nonce) == (
        X,
        ED,
        NONCE,
    )
    assert evidence.warning is None


def test_each_report_uses_a_fresh_entry_and_removes_it(standin: ConfigfsStandIn) -> None:
    provider = ConfigfsTsmProvider("tdx", standin.root, kernel=standin)
    provider.get_evidence(bytes(64))
    provider.get_evidence(bytes(64))
    assert len(set(standin.entries)) == 2
    assert list(standin.root.iterdir()) == []


def test_a_racing_writer_is_detected(standin: ConfigfsStandIn) -> None:
    standin.racing_writes = 1
    provider = ConfigfsTsmProvider("tdx", standin.root, kernel=standin)
    with pytest.raises(TsmRaceError, match="written by someone else"):
        provider.get_evidence(report_data(X, ED, NONCE))
    assert list(standin.root.iterdir()) == []


def test_sev_snp_goes_through_the_same_interface(tmp_path: Path) -> None:
    standin = ConfigfsStandIn(tmp_path / "report", provider="sev_guest")
    evidence = build_evidence(
        ConfigfsTsmProvider("sev-snp", standin.root, kernel=standin), X, ED, NONCE
    )
    assert evidence.format == "sev-snp"
    assert standin.inblobs == [report_data(X, ED, NONCE)]


def test_a_provider_of_the_other_tee_is_refused(standin: ConfigfsStandIn) -> None:
    provider = ConfigfsTsmProvider("sev-snp", standin.root, kernel=standin)
    with pytest.raises(ProviderUnavailable, match="'tdx_guest', not a sev-snp guest"):
        provider.get_evidence(bytes(64))


def test_report_data_of_the_wrong_size_is_refused(standin: ConfigfsStandIn) -> None:
    provider = ConfigfsTsmProvider("tdx", standin.root, kernel=standin)
    with pytest.raises(AttestationError, match="64 bytes"):
        provider.get_evidence(bytes(32))
    assert standin.inblobs == []


def test_a_kernel_that_produces_no_report_is_an_attestation_error(
    standin: ConfigfsStandIn,
) -> None:
    class RefusingStandIn(ConfigfsStandIn):
        def written(self, entry: Path, attribute: str) -> None:
            super().written(entry, attribute)
            (entry / "outblob").unlink()  # reading it now fails, as EIO from the driver would

    refusing = RefusingStandIn(standin.root)
    provider = ConfigfsTsmProvider("tdx", refusing.root, kernel=refusing)
    with pytest.raises(AttestationError, match="did not produce a report"):
        provider.get_evidence(bytes(64))
    assert list(refusing.root.iterdir()) == []
