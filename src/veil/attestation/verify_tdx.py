"""Is this TDX quote genuine? Offline verification with ``dcap-qvl`` against given collateral.

``dcap_qvl.verify(quote, collateral, now_secs)`` checks, at the time ``now_secs``: the collateral's
validity window and CRLs, the Intel-rooted chains of the TCB info, the QE identity and the PCK
certificate inside the quote, the QE report signature and its hash over the attestation key, the
quote's ECDSA signature by that key, the platform TCB level, and the TD attributes (no debug TD).
It answers with a TCB status ("UpToDate", "OutOfDate", ...) and advisory ids, or raises
``ValueError``. Whether a status is acceptable is policy, decided in ``report_tdx.py``.

One dcap-qvl error is a finding rather than a forgery: "No matching TCB level found" means every
signature checked out but the platform's TCB is older than every level Intel's TCB info still lists
(dcap-qvl 0.7.0 matches the TCB level only after all signature checks). We report it as the status
``NoMatchingTcbLevel`` so a policy can name it; the TD attribute checks dcap-qvl skips in that case
are made by ``report_tdx.py`` from ``TdxQuote.attribute_problems()`` for every quote.

Collateral is never fetched here: no network. Pass the ``QuoteCollateralV3`` JSON object (as
``dcap_qvl.get_collateral(pccs_url, quote)`` returns it, ``.to_json()``) from the node's evidence or a
file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dcap_qvl

from veil.attestation.abi_tdx import TdxQuote, parse_tdx_quote
from veil.attestation.evidence import AttestationError

NO_MATCHING_TCB_LEVEL = "NoMatchingTcbLevel"


class CollateralRequired(AttestationError):
    """No collateral was given: verification is offline, so it cannot be fetched here."""


class CollateralError(AttestationError, ValueError):
    """The collateral is not a dcap-qvl ``QuoteCollateralV3`` JSON object."""


class QuoteVerificationError(AttestationError):
    """dcap-qvl refused the quote. ``reason`` is for people, ``detail`` is dcap-qvl's own words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} (dcap-qvl: {detail})")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TdxVerification:
    """A quote whose signatures and collateral chain verified at ``verified_at``."""

    quote: TdxQuote
    tcb_status: str
    advisory_ids: tuple[str, ...]
    verified_at: datetime
    platform_status: str | None = None
    qe_status: str | None = None

    @property
    def mr_td(self) -> bytes:
        return self.quote.mr_td

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.quote.rtmrs

    @property
    def report_data(self) -> bytes:
        return self.quote.report_data


def load_collateral(collateral: dict[str, Any] | str | bytes) -> Any:
    """A ``dcap_qvl.QuoteCollateralV3`` from its JSON form (object, text or bytes)."""
    if isinstance(collateral, dict):
        text = json.dumps(collateral)
    elif isinstance(collateral, bytes):
        try:
            text = collateral.decode("utf-8")
        except UnicodeDecodeError:
            raise CollateralError("collateral is not UTF-8 JSON") from None
    elif isinstance(collateral, str):
        text = collateral
    else:
        raise CollateralError("collateral must be a JSON object")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except ValueError as exc:
        raise CollateralError(
            f"collateral is not QuoteCollateralV3 JSON: {_one_line(exc)}"
        ) from None


def as_utc(at: datetime | None) -> datetime:
    """``at`` in UTC (a naive time is taken as UTC); now when ``at`` is None."""
    if at is None:
        return datetime.now(UTC)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def verify_tdx_quote(
    quote: bytes, collateral: dict[str, Any] | str | bytes | None, at: datetime | None = None
) -> TdxVerification:
    """Verify ``quote`` against ``collateral`` as of ``at`` (default: now).

    Raises ``CollateralRequired`` without collateral, ``QuoteFormatError`` for bytes that are not a
    TDX quote, ``CollateralError`` for unreadable collateral and ``QuoteVerificationError`` when
    dcap-qvl refuses the quote. A non-UpToDate TCB status is returned, not raised.
    """
    if collateral is None:
        raise CollateralRequired(
            "collateral is required: verification is offline and does not fetch it; get it with "
            "dcap_qvl.get_collateral(pccs_url, quote) where the network is allowed and pass it in"
        )
    parsed = parse_tdx_quote(quote)
    when = as_utc(at)
    now_secs = int(when.timestamp())
    if now_secs < 0:
        raise AttestationError("verification time is before 1970")
    loaded = load_collateral(collateral)
    try:
        verified = dcap_qvl.verify(bytes(quote), loaded, now_secs)
    except ValueError as exc:
        detail = _one_line(exc)
        if _is_no_matching_tcb_level(detail):
            return TdxVerification(parsed, NO_MATCHING_TCB_LEVEL, (), when)
        raise QuoteVerificationError(_explain(detail, when, collateral), detail) from None
    except BaseException as exc:
        # A crafted quote that panics the Rust verifier surfaces as pyo3's PanicException, which
        # derives from BaseException: refuse the quote rather than let it escape.
        if type(exc).__name__ != "PanicException":
            raise
        raise QuoteVerificationError(
            "the quote verifier rejected a malformed quote", "panic"
        ) from None
    platform_status, qe_status = _sub_statuses(verified)
    return TdxVerification(
        quote=parsed,
        tcb_status=str(verified.status),
        advisory_ids=tuple(str(a) for a in verified.advisory_ids),
        verified_at=when,
        platform_status=platform_status,
        qe_status=qe_status,
    )


def _is_no_matching_tcb_level(detail: str) -> bool:
    return detail.removeprefix("Verification failed: ").strip() == "No matching TCB level found"


def _sub_statuses(verified: Any) -> tuple[str | None, str | None]:
    try:
        document = json.loads(verified.to_json())
    except (ValueError, AttributeError):
        return None, None
    platform = (document.get("platform_status") or {}).get("status")
    qe = (document.get("qe_status") or {}).get("status")
    return (str(platform) if platform else None, str(qe) if qe else None)


def _one_line(exc: BaseException) -> str:
    """dcap-qvl's message with its "Caused by" chain folded into one line."""
    parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
    parts = [re.sub(r"^\d+: ", "", p) for p in parts if p != "Caused by:"]
    return "; ".join(parts) if parts else type(exc).__name__


def _timestamp(secs: int) -> str:
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _collateral_date(collateral: dict[str, Any] | str | bytes, part: str, key: str) -> str | None:
    try:
        document = collateral if isinstance(collateral, dict) else json.loads(collateral)
        value = json.loads(document[part])[key]
    except (ValueError, KeyError, TypeError):
        return None
    return str(value)


def _explain(detail: str, at: datetime, collateral: dict[str, Any] | str | bytes) -> str:
    """Say in words what dcap-qvl's error means for the person running the check."""
    when = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = detail.lower()
    crl = re.search(
        r"CrlExpired \{ time: UnixTime\((\d+)\), next_update: UnixTime\((\d+)\)", detail
    )
    if crl:
        return (
            f"collateral expired: a certificate revocation list was due for renewal on "
            f"{_timestamp(int(crl.group(2)))}, before the verification time {when}; fetch fresh "
            f"collateral"
        )
    if "tcbinfo expired" in text:
        due = _collateral_date(collateral, "tcb_info", "nextUpdate")
        return f"collateral expired: the TCB info was valid until {due or '?'}, not at {when}"
    if "expired" in text:
        return f"collateral or certificate expired at the verification time {when}"
    if "in the future" in text or "not yet valid" in text:
        return f"collateral not yet valid at {when}: it was issued later"
    if "fmspc mismatch" in text:
        return "the collateral is for another platform (FMSPC differs from the quote's)"
    if "signature is invalid" in text or "hash mismatch" in text:
        return "quote signature check failed: the quote was altered or not made by a genuine QE"
    if "debug mode" in text:
        return "the TD runs in debug mode"
    if "revoked" in text:
        return "the platform's TCB is revoked"
    if "certificate" in text or "crl" in text:
        return "certificate chain check failed"
    if "decode" in text or "parse" in text:
        return "the quote or collateral could not be decoded"
    return "quote verification failed"
