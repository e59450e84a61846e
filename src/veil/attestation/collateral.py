"""Attestation collateral from sources the client chooses, and how fresh it must be.

A TDX quote is verified against Intel-signed collateral (TCB info, QE identity, CRLs); an SEV-SNP
report against the VCEK AMD's key server issues for the chip and its TCB. Where that collateral comes
from is the client's choice: a directory of Intel PCS replies, a PCCS or Intel's PCS itself
(``CollateralFetcher.tdx``), AMD's KDS (``CollateralFetcher.snp_vcek``), or whatever a node or
gateway relays. Every source is treated alike, because the signatures, not the courier, make it
genuine: Intel signs the TCB info and QE identity, and the CRLs, under its root; AMD signs the VCEK.

A signature does not say *when*, though. An old TCB info, still inside its validity window but
issued before a TCB recovery, would rate a now-vulnerable platform "UpToDate". So collateral from
ANY source passes ``check_collateral_freshness`` first: it must be valid at the verification time
and issued at most ``max_age_days`` (default 30) before it. That bound is what makes relayed
collateral safe to use: a relay can withhold fresh collateral, never make stale collateral pass.

The collateral this module builds is dcap-qvl's ``QuoteCollateralV3`` JSON object (what
``veil.attestation.verify_tdx.verify_tdx_quote`` takes): the TCB info and QE identity as the exact
JSON text Intel signed, their signatures and both CRLs as hex, the issuer chains as PEM.

One module per step; this one names them all:

- ``collateral_pcs``        raw Intel PCS replies (a directory, or a server's bodies) -> collateral
- ``collateral_freshness``  valid at the verification time and issued recently
- ``collateral_fetch``      PCCS / Intel PCS / AMD KDS clients with the on-disk cache
"""

from __future__ import annotations

from veil.attestation.collateral_fetch import (
    AMD_KDS_URL,
    INTEL_PCS_URL,
    INTEL_ROOT_CA_CRL_URL,
    CollateralFetcher,
    CollateralFetchError,
    VerifierCollateral,
    default_cache_dir,
    fetcher_for,
)
from veil.attestation.collateral_freshness import check_collateral_freshness
from veil.attestation.collateral_pcs import (
    PcsReplyError,
    build_tdx_collateral,
    collateral_from_path,
    tdx_collateral_from_pcs_replies,
)

__all__ = [
    "AMD_KDS_URL",
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "CollateralFetchError",
    "CollateralFetcher",
    "PcsReplyError",
    "VerifierCollateral",
    "build_tdx_collateral",
    "check_collateral_freshness",
    "collateral_from_path",
    "default_cache_dir",
    "fetcher_for",
    "tdx_collateral_from_pcs_replies",
]
