"""Collateral samples for the collateral tests: real quotes, their PCS replies' dates and fields.

The material is genuine: the Intel PCS replies captured with the Tinfoil and NEAR AI quotes on
2026-06-29, and AMD's VCEK and ASK/ARK chain for Tinfoil's Genoa chip. The fetcher talks real HTTP
to ``pcs_kds_standin``, a loopback stand-in serving those recorded replies (the real services cannot
be reached from here).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.attestation import SAMPLES
from tests.attestation.pcs_kds_standin import PCS_REPLIES, PcsKdsStandIn
from veil.attestation.collateral import CollateralFetcher

TINFOIL_QUOTE = SAMPLES / "tdx" / "teep_tinfoil_tdx_quote.bin"


NEAR_QUOTE = SAMPLES / "tdx" / "neardirect_dstack_tdx_quote.bin"


TINFOIL_AT = datetime(2026, 6, 29, 2, 8, 14, tzinfo=UTC)


NEAR_AT = datetime(2026, 6, 29, 2, 6, 32, tzinfo=UTC)


FMSPC = "90c06f000000"


TCB_ISSUED = "2026-06-29T01:42:47Z"


TCB_NEXT_UPDATE = "2026-07-29T01:42:47Z"


COLLATERAL_KEYS = {
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
}


def fetcher(standin: PcsKdsStandIn, cache: Path | None, **kwargs: Any) -> CollateralFetcher:
    return CollateralFetcher(pccs_url=standin.url, kds_url=standin.url, cache_dir=cache, **kwargs)


def copy_replies(tmp_path: Path) -> Path:
    target = tmp_path / "replies"
    target.mkdir()
    for path in PCS_REPLIES.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target
