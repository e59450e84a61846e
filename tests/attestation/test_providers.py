"""Node-side providers.

There is no TEE on the test machine. ``ConfigfsStandIn`` is a stand-in for the kernel's
configfs-tsm: a temporary directory whose attribute files it creates on mkdir, and which reacts to
a write of ``inblob`` the way the kernel does (bump ``generation``, produce ``outblob``). Its
"report" is just a labelled copy of the inblob, not a quote.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from veil.attestation.evidence import NO_TEE_WARNING, AttestationError, report_data
from veil.attestation.providers import (
    ConfigfsTsmProvider,
    NoTeeProvider,
    NvidiaProvider,
    ProviderUnavailable,
    TsmRaceError,
    build_evidence,
    choose_gpu_provider,
    choose_provider,
)

X = bytes(range(32))
ED = bytes(range(100, 132))
NONCE = bytes(range(200, 232))
ATTRIBUTES = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel_floor")


class ConfigfsStandIn:
    """Plays the kernel's part of configfs-tsm on a plain directory (no TEE here)."""

    def __init__(self, root: Path, provider: str = "tdx_guest", racing_writes: int = 0) -> None:
        self.root = root
        self.provider = provider
        self.racing_writes = racing_writes  # extra inblob writes by "another process"
        self.inblobs: list[bytes] = []
        self.entries: list[str] = []
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def report_for(inblob: bytes) -> bytes:
        return b"STAND-IN REPORT, NO TEE:" + inblob

    def created(self, entry: Path) -> None:
        self.entries.append(entry.name)
        for name in ATTRIBUTES:
            (entry / name).write_bytes(b"")
        (entry / "provider").write_text(f"{self.provider}\n")
        (entry / "generation").write_text("0\n")

    def written(self, entry: Path, attribute: str) -> None:
        generation = int((entry / "generation").read_text()) + 1 + self.racing_writes
        (entry / "generation").write_text(f"{generation}\n")
        if attribute == "inblob":
            inblob = (entry / "inblob").read_bytes()
            self.inblobs.append(inblob)
            (entry / "outblob").write_bytes(self.report_for(inblob))

    def removing(self, entry: Path) -> None:
        for child in entry.iterdir():
            child.unlink()


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


def test_auto_picks_configfs_tsm_by_its_provider_file(tmp_path: Path) -> None:
    for kernel_name, expected in (("tdx_guest", "tdx"), ("sev_guest", "sev-snp")):
        standin = ConfigfsStandIn(tmp_path / kernel_name, provider=kernel_name)
        chosen = choose_provider("auto", tsm_root=standin.root, kernel=standin)
        assert isinstance(chosen, ConfigfsTsmProvider)
        assert chosen.name == expected
        assert list(standin.root.iterdir()) == []  # the probe cleaned up after itself


def test_named_provider_that_is_missing_is_a_clear_error(
    tmp_path: Path, standin: ConfigfsStandIn
) -> None:
    with pytest.raises(ProviderUnavailable, match=r"tdx evidence is unavailable: .* is missing"):
        choose_provider("tdx", tsm_root=tmp_path / "absent")
    with pytest.raises(ProviderUnavailable, match="serves a tdx guest"):
        choose_provider("sev-snp", tsm_root=standin.root, kernel=standin)
    with pytest.raises(ValueError, match="unknown attestation provider"):
        choose_provider("sgx")


def test_nvidia_is_not_a_cpu_tee() -> None:
    with pytest.raises(ProviderUnavailable, match="nvidia is GPU evidence"):
        choose_provider("nvidia")


@pytest.mark.skipif(NvidiaProvider.available(), reason="a CC GPU is present here")
def test_nvidia_gpu_evidence_reports_why_it_is_unavailable() -> None:
    with pytest.raises(
        ProviderUnavailable, match=r"nvidia evidence unavailable: (nv-attestation|no NVIDIA)"
    ):
        choose_gpu_provider("nvidia")
    assert choose_gpu_provider("auto") is None  # no CC GPU here: the bundle carries none
    assert choose_gpu_provider("off") is None
    with pytest.raises(ValueError, match="unknown GPU attestation"):
        choose_gpu_provider("amd")
    with pytest.raises(ProviderUnavailable):
        NvidiaProvider().get_gpu_evidence(bytes(32))


@pytest.mark.skipif(NvidiaProvider.available(), reason="a CC GPU is present here")
def test_auto_without_any_tee_falls_back_to_none_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.attestation"):
        chosen = choose_provider("auto", tsm_root=tmp_path / "absent")
    assert isinstance(chosen, NoTeeProvider)
    assert NO_TEE_WARNING in caplog.text


def test_no_tee_evidence_says_so_plainly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.attestation"):
        provider = choose_provider("none")
    assert "no TEE: development only" in caplog.text
    evidence = build_evidence(provider, X, ED, NONCE)
    assert evidence.format == "none"
    assert evidence.warning == "no TEE: development only"
    assert evidence.quote is None and evidence.collateral is None
    assert evidence.report_data == report_data(X, ED, NONCE)


def test_an_unknown_tee_behind_configfs_tsm_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    standin = ConfigfsStandIn(tmp_path / "report", provider="arm_cca_guest")
    with pytest.raises(ProviderUnavailable, match="'arm_cca_guest' is not one Veil supports"):
        choose_provider("auto", tsm_root=standin.root, kernel=standin)
    assert list(standin.root.iterdir()) == []


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
