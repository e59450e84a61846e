"""What every evidence provider shares (``providers.py`` chooses one): the ``AttestationProvider``
interface, the error for a source this machine lacks, and the size check of ``report_data``."""

from __future__ import annotations

import logging
from typing import Protocol

from veil.attestation.evidence import REPORT_DATA_SIZE, AttestationError

log = logging.getLogger("veil.attestation")


class ProviderUnavailable(AttestationError):
    """The named evidence source does not exist on this machine."""


class AttestationProvider(Protocol):
    name: str

    def get_evidence(self, report_data: bytes) -> bytes | None:
        """The TEE's signed statement over ``report_data`` (None when there is no TEE)."""
        ...


def check_report_data(value: bytes) -> bytes:
    if len(value) != REPORT_DATA_SIZE:
        raise AttestationError(f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(value)}")
    return bytes(value)
