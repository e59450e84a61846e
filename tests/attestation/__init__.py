"""Attestation tests, on the real Intel TDX sample quotes in ../shared/attestation-samples/.

``tdx_quote`` verifies as UpToDate at ``GOOD_AT`` and its collateral has expired by ``TODAY``;
``tdx_quote_outdated`` comes from a platform whose TCB is older than every level its collateral
lists, checked at ``OUTDATED_AT`` (inside that collateral's validity window).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The samples live beside the repository (../shared); VEIL_ATTESTATION_SAMPLES points elsewhere.
SAMPLES = Path(
    os.environ.get(
        "VEIL_ATTESTATION_SAMPLES",
        Path(__file__).resolve().parents[3] / "shared" / "attestation-samples",
    )
)
QUOTE = SAMPLES / "tdx_quote"
COLLATERAL = SAMPLES / "tdx_quote_collateral.json"
OUTDATED_QUOTE = SAMPLES / "tdx_quote_outdated"
OUTDATED_COLLATERAL = SAMPLES / "tdx_quote_outdated_collateral.json"

GOOD_AT = datetime(2025, 7, 1, tzinfo=UTC)
TODAY = datetime.now(UTC)  # the real date: the sample collateral has long expired by now
OUTDATED_AT = datetime(2026, 3, 1, tzinfo=UTC)

SAMPLE_MR_TD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)


def quote_bytes() -> bytes:
    return QUOTE.read_bytes()


def collateral() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(COLLATERAL.read_text())
    return document


def outdated_collateral() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OUTDATED_COLLATERAL.read_text())
    return document
