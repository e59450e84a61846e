"""The fields of an Intel TDX quote Veil looks at, read through ``dcap-qvl``'s parser.

dcap-qvl already decodes quote v4 and v5 (header, TD report 1.0 / 1.5); this module only gives the
result Veil's names and plain ``bytes``, and decodes the one field dcap-qvl leaves as raw bits
(``td_attributes``). Layout, from Intel's "TDX DCAP Quoting Library API" (quote v4) and the TDX
module ABI::

    quote v4:  header (48) | TD report body (584)           | u32 sig-data size | ECDSA sig (64) | ...
    quote v5:  header (48) | u16 type, u32 size | body (584 or 648) | u32 sig-data size | ECDSA sig ...

The ECDSA signature made by the quoting enclave's attestation key covers everything before the
signature-data size field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dcap_qvl

from veil.attestation.evidence import AttestationError

HEADER_SIZE = 48
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
MEASUREMENT_SIZE = 48
TEE_TYPE_TDX = 0x81

# td_attributes, read as a little-endian u64 (TDX module ABI, TDREPORT "ATTRIBUTES").
TD_ATTR_DEBUG_BITS = 0xFF  # "TUD" byte: bit 0 is DEBUG; any of them set means not a production TD
TD_ATTR_SEPT_VE_DISABLE = 1 << 28


class QuoteFormatError(AttestationError, ValueError):
    """Bytes that are not a TDX quote dcap-qvl can read."""


@dataclass(frozen=True)
class TdxQuote:
    """The TD report body of a quote, plus the header facts a verifier reports."""

    version: int
    body: str  # "TD10" or "TD15"
    fmspc: str
    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    mr_service_td: bytes | None  # TD report 1.5 only

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_value & TD_ATTR_DEBUG_BITS)

    def attribute_problems(self) -> list[str]:
        """Why this TD is not a production TD, if it isn't (empty list: fine)."""
        problems = []
        if self.debug:
            problems.append("the TD runs in debug mode: its memory is readable by the host")
        if not self.td_attributes_value & TD_ATTR_SEPT_VE_DISABLE:
            problems.append("SEPT_VE_DISABLE is off: the host can inject #VE exceptions")
        if self.mr_service_td is not None and any(self.mr_service_td):
            problems.append("a service TD is bound (MR_SERVICETD is not zero)")
        return problems


def parse_tdx_quote(raw: bytes) -> TdxQuote:
    """Decode ``raw`` with dcap-qvl; refuse anything that is not a TDX quote."""
    try:
        quote = dcap_qvl.parse_quote(bytes(raw))
    except ValueError as exc:
        raise QuoteFormatError(f"not a readable quote ({_first_line(exc)})") from None
    if not quote.is_tdx() or quote.header.tee_type != TEE_TYPE_TDX:
        raise QuoteFormatError(f"not a TDX quote (type {quote.quote_type()})")
    report = quote.report
    service_td = getattr(report, "mr_service_td", None)
    try:
        fmspc = str(quote.fmspc())
    except ValueError:
        fmspc = ""
    return TdxQuote(
        version=int(quote.header.version),
        body="TD15" if service_td is not None else "TD10",
        fmspc=fmspc,
        tee_tcb_svn=bytes(report.tee_tcb_svn),
        mr_seam=bytes(report.mr_seam),
        td_attributes=bytes(report.td_attributes),
        xfam=bytes(report.xfam),
        mr_td=bytes(report.mr_td),
        mr_config_id=bytes(report.mr_config_id),
        mr_owner=bytes(report.mr_owner),
        mr_owner_config=bytes(report.mr_owner_config),
        rtmrs=(
            bytes(report.rt_mr0),
            bytes(report.rt_mr1),
            bytes(report.rt_mr2),
            bytes(report.rt_mr3),
        ),
        report_data=bytes(report.report_data),
        mr_service_td=None if service_td is None else bytes(service_td),
    )


def signature_offset(raw: bytes) -> int:
    """Offset of the 64-byte ECDSA quote signature (see the layout in the module docstring)."""
    (version,) = struct.unpack_from("<H", raw, 0)
    if version == 4:
        signed = HEADER_SIZE + TD_REPORT10_SIZE
    elif version == 5:
        _body_type, body_size = struct.unpack_from("<HI", raw, HEADER_SIZE)
        signed = HEADER_SIZE + 6 + body_size
    else:
        raise QuoteFormatError(f"unsupported quote version {version}")
    return signed + 4


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
