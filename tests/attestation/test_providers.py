"""Choosing a node-side provider, and the bundle it builds.

There is no TEE on the test machine. ``ConfigfsStandIn`` is a stand-in for the kernel's
configfs-tsm: a temporary directory whose attribute files it creates on mkdir, and which reacts to
a write of ``inblob`` the way the kernel does (bump ``generation``, produce ``outblob``). Its
"report" is just a labelled copy of the inblob, not a quote.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.attestation.tsm_standin import ConfigfsStandIn
from veil.attestation.evidence import NO_TEE_WARNING, report_data
from veil.attestation.providers import (
    NoTeeProvider,
    build_evidence,
    choose_gpu_provider,
    choose_provider,
)
from veil.attestation.providers_base import ProviderUnavailable
from veil.attestation.providers_nvidia import NvidiaProvider
from veil.attestation.providers_tsm import ConfigfsTsmProvider

X = bytes(range(32))
ED = bytes(range(100, 132))
NONCE = bytes(range(200, 232))


def test_auto_picks_configfs_tsm_by_its_provider_file(tmp_path: Path) -> None:
    for kernel_name, expected in (("tdx_guest", "tdx"), ("sev_guest", "sev-snp")):
        standin = ConfigfsStandIn(tmp_path / kernel_name, provider=kernel_name)
        chosen = choose_provider("auto", tsm_root=standin.root, kernel=standin)
        assert isinstance(chosen, ConfigfsTsmProvider)
        assert chosen.name == expected
        assert list(standin.root.iterdir()) == []  # the probe cleaned up after itself


def test_named_provider_that_is_missing_is_a_clear_error(tmp_path: Path) -> None:
    standin = ConfigfsStandIn(tmp_path / "tsm" / "report")
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
