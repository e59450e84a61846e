"""The bytes of an NVIDIA Hopper GPU attestation report, parsed with every size checked first.

A Hopper GPU in confidential-computing mode attests through SPDM 1.1 (DMTF DSP0274):
the verifier's GET_MEASUREMENTS request (37 bytes) followed by the GPU's MEASUREMENTS response.
NVIDIA's tools call the concatenation the "attestation report"; its last 96 bytes are an ECDSA
P-384 signature (raw r || s) by the device's leaf key over everything before them, so the request
-- and with it the verifier's nonce -- is covered by the signature.

Request:  version(1) 0xE0(1) attributes(1) operation(1) nonce(32) slot(1)
Response: version(1) 0x60(1) param1(1) slot(1) blocks(1) record length(3, LE) record
          nonce(32) opaque length(2, LE) opaque data  signature(96)
Record:   per block: index(1) specification(1) size(2, LE) DMTF value type(1) value size(2) value
Opaque:   NVIDIA's TLVs: type(2, LE) size(2, LE) value (driver version, VBIOS version, FWID, ...)

Nothing here checks a signature; ``verify_nvidia`` does that. This module only refuses bytes that
are not a well-formed report (``GpuReportFormatError``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from veil.attestation.evidence import AttestationError

__all__ = [
    "NONCE_SIZE",
    "SIGNATURE_SIZE",
    "GpuEvidenceItem",
    "GpuReport",
    "GpuReportFormatError",
    "MeasurementBlock",
    "parse_gpu_evidence_json",
    "parse_gpu_report",
]

SPDM_GET_MEASUREMENTS = 0xE0
SPDM_MEASUREMENTS = 0x60
SPDM_VERSION_1_1 = 0x11
REQUEST_SIZE = 37  # SPDM 1.1 GET_MEASUREMENTS with a signature requested: header, nonce, slot
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384, r || s, 48 bytes each, big-endian
RESPONSE_HEADER_SIZE = 8
BLOCK_HEADER_SIZE = 4
DMTF_HEADER_SIZE = 3
DMTF_SPECIFICATION = 0x01  # bit 0 of a block's MeasurementSpecification: the DMTF format

# NVIDIA's opaque-data field types (from NVIDIA's nvtrust verifier and its attestation docs).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_FWID = 20
OPAQUE_FIELD_NAMES: Mapping[int, str] = MappingProxyType(
    {
        1: "cert_issuer_name",
        2: "cert_authority_key_identifier",
        3: "driver_version",
        4: "gpu_info",
        5: "sku",
        6: "vbios_version",
        7: "manufacturer_id",
        8: "tamper_detection",
        9: "smc",
        10: "vpr",
        11: "nvdec0_status",
        12: "msrscnt",
        13: "cprinfo",
        14: "board_id",
        15: "chip_sku",
        16: "chip_sku_mod",
        17: "project",
        18: "project_sku",
        19: "project_sku_mod",
        20: "fwid",
        21: "protected_pcie_status",
        34: "opaque_data_version",
        36: "feature_flag",
    }
)
FWID_SIZE = 48  # SHA-384
VBIOS_VERSION_SIZE = 8

_HEX_TEXT = re.compile(rb"\A[0-9a-fA-F\s]+\Z")


class GpuReportFormatError(AttestationError, ValueError):
    """The bytes are not a well-formed Hopper SPDM attestation report."""


@dataclass(frozen=True)
class MeasurementBlock:
    """One SPDM measurement block: its index (1-based, as the GPU numbers them) and value."""

    index: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    """A parsed report. ``signed_bytes`` is what the signature covers."""

    request: bytes
    response: bytes
    nonce: bytes
    responder_nonce: bytes
    measurements: tuple[MeasurementBlock, ...]
    opaque: Mapping[int, bytes]
    signature: bytes

    @property
    def raw(self) -> bytes:
        return self.request + self.response

    @property
    def signed_bytes(self) -> bytes:
        return self.request + self.response[:-SIGNATURE_SIZE]

    def measurement(self, index: int) -> MeasurementBlock | None:
        for block in self.measurements:
            if block.index == index:
                return block
        return None

    @property
    def driver_version(self) -> str | None:
        value = self.opaque.get(OPAQUE_DRIVER_VERSION)
        return None if value is None else _text(value, "driver version")

    @property
    def vbios_version(self) -> str | None:
        """As NVIDIA prints it, e.g. 96.00.9F.00.01 (bytes 3, 2, 1, 0, 4 of the field)."""
        value = self.opaque.get(OPAQUE_VBIOS_VERSION)
        if value is None:
            return None
        if len(value) != VBIOS_VERSION_SIZE:
            raise GpuReportFormatError(
                f"VBIOS version field is {len(value)} bytes, expected {VBIOS_VERSION_SIZE}"
            )
        return ".".join(f"{value[i]:02X}" for i in (3, 2, 1, 0, 4))

    @property
    def fwid(self) -> bytes | None:
        value = self.opaque.get(OPAQUE_FWID)
        if value is not None and len(value) != FWID_SIZE:
            raise GpuReportFormatError(f"FWID field is {len(value)} bytes, expected {FWID_SIZE}")
        return value


def _text(value: bytes, what: str) -> str:
    try:
        return value.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        raise GpuReportFormatError(f"{what} is not ASCII text") from None


def _decode(data: bytes | str) -> bytes:
    """Raw bytes, or the hex text NVIDIA's sample files use."""
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    data = bytes(data)
    if data[:2] == bytes((SPDM_VERSION_1_1, SPDM_GET_MEASUREMENTS)):
        return data
    if data and _HEX_TEXT.match(data):
        try:
            return binascii.unhexlify(b"".join(data.split()))
        except binascii.Error:
            raise GpuReportFormatError("report hex text has an odd number of digits") from None
    return data


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def parse_gpu_report(data: bytes | str) -> GpuReport:
    """Parse a report (raw bytes, or hex text). Raises ``GpuReportFormatError``."""
    raw = _decode(data)
    minimum = REQUEST_SIZE + RESPONSE_HEADER_SIZE + NONCE_SIZE + 2 + SIGNATURE_SIZE
    if len(raw) < minimum:
        raise GpuReportFormatError(
            f"a GPU attestation report is at least {minimum} bytes, got {len(raw)}"
        )
    request, response = raw[:REQUEST_SIZE], raw[REQUEST_SIZE:]
    # 1. the request: SPDM 1.1 GET_MEASUREMENTS asking for a signature
    if request[0] != SPDM_VERSION_1_1 or request[1] != SPDM_GET_MEASUREMENTS:
        raise GpuReportFormatError(
            f"expected an SPDM 1.1 GET_MEASUREMENTS request (11 e0), found {request[:2].hex(' ')}"
        )
    if not request[2] & 0x01:
        raise GpuReportFormatError("the request did not ask for a signed response")
    # 2. the response header
    if response[0] != request[0] or response[1] != SPDM_MEASUREMENTS:
        raise GpuReportFormatError(
            f"expected an SPDM 1.1 MEASUREMENTS response (11 60), found {response[:2].hex(' ')}"
        )
    block_count = response[4]
    record_size = _le(response, 5, 3)
    offset = RESPONSE_HEADER_SIZE
    if offset + record_size + NONCE_SIZE + 2 > len(response) - SIGNATURE_SIZE:
        raise GpuReportFormatError(
            f"measurement record of {record_size} bytes overruns the {len(response)}-byte response"
        )
    measurements = _parse_record(response[offset : offset + record_size], block_count)
    offset += record_size
    responder_nonce = response[offset : offset + NONCE_SIZE]
    offset += NONCE_SIZE
    opaque_size = _le(response, offset, 2)
    offset += 2
    expected_size = offset + opaque_size + SIGNATURE_SIZE
    if expected_size != len(response):
        raise GpuReportFormatError(
            f"response is {len(response)} bytes, its length fields say {expected_size}"
        )
    opaque = _parse_opaque(response[offset : offset + opaque_size])
    return GpuReport(
        request=request,
        response=response,
        nonce=request[4 : 4 + NONCE_SIZE],
        responder_nonce=responder_nonce,
        measurements=measurements,
        opaque=MappingProxyType(opaque),
        signature=response[-SIGNATURE_SIZE:],
    )


def _parse_record(record: bytes, block_count: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    offset = 0
    while offset < len(record):
        if offset + BLOCK_HEADER_SIZE > len(record):
            raise GpuReportFormatError(f"truncated measurement block header at offset {offset}")
        index, spec, size = record[offset], record[offset + 1], _le(record, offset + 2, 2)
        body = record[offset + BLOCK_HEADER_SIZE : offset + BLOCK_HEADER_SIZE + size]
        if len(body) != size:
            raise GpuReportFormatError(f"measurement block {index} overruns the record")
        if not spec & DMTF_SPECIFICATION or size < DMTF_HEADER_SIZE:
            raise GpuReportFormatError(f"measurement block {index} is not in the DMTF format")
        value_size = _le(body, 1, 2)
        if DMTF_HEADER_SIZE + value_size != size:
            raise GpuReportFormatError(
                f"measurement block {index}: value of {value_size} bytes in a {size}-byte block"
            )
        if index in seen:
            raise GpuReportFormatError(f"measurement block {index} appears twice")
        seen.add(index)
        blocks.append(MeasurementBlock(index, body[0], body[DMTF_HEADER_SIZE:]))
        offset += BLOCK_HEADER_SIZE + size
    if len(blocks) != block_count:
        raise GpuReportFormatError(
            f"the response announces {block_count} measurement blocks, the record holds "
            f"{len(blocks)}"
        )
    return tuple(blocks)


def _parse_opaque(opaque: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset < len(opaque):
        if offset + 4 > len(opaque):
            raise GpuReportFormatError(f"truncated opaque field header at offset {offset}")
        kind, size = _le(opaque, offset, 2), _le(opaque, offset + 2, 2)
        value = opaque[offset + 4 : offset + 4 + size]
        if len(value) != size:
            raise GpuReportFormatError(f"opaque field {kind} overruns the opaque data")
        if kind in fields:
            raise GpuReportFormatError(f"opaque field {kind} appears twice")
        fields[kind] = value
        offset += 4 + size
    return fields


# -- the JSON that carries reports ----------------------------------------------------------------
@dataclass(frozen=True)
class GpuEvidenceItem:
    """One GPU's evidence as NVIDIA's attestation SDK hands it out: the report, its device chain
    (PEM, leaf first), the architecture name and, where present, the nonce it was asked for."""

    arch: str
    report: bytes
    cert_chain_pem: bytes
    nonce: bytes | None


MAX_EVIDENCE_JSON = 1 << 20


def parse_gpu_evidence_json(
    document: bytes | str | list[Any] | dict[str, Any],
) -> tuple[GpuEvidenceItem, ...]:
    """The items of an SDK evidence list (what ``NvidiaProvider`` returns) or of a
    ``{"evidences": [...]}`` document (as Tinfoil serves it); each item has base64 ``evidence``
    and base64-PEM ``certificate``. Raises ``GpuReportFormatError``."""
    if isinstance(document, bytes | str):
        if len(document) > MAX_EVIDENCE_JSON:
            raise GpuReportFormatError(f"GPU evidence JSON is over {MAX_EVIDENCE_JSON} bytes")
        try:
            document = json.loads(document)
        except ValueError:
            raise GpuReportFormatError("GPU evidence is not JSON") from None
    items = document.get("evidences") if isinstance(document, dict) else document
    if not isinstance(items, list) or not items:
        raise GpuReportFormatError("GPU evidence JSON holds no evidence list")
    found = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise GpuReportFormatError(f"GPU evidence item {i} is not an object")
        try:
            report = base64.b64decode(str(item["evidence"]), validate=True)
            chain = base64.b64decode(str(item["certificate"]), validate=True)
        except KeyError as exc:
            raise GpuReportFormatError(f"GPU evidence item {i} lacks {exc.args[0]!r}") from None
        except (binascii.Error, ValueError):
            raise GpuReportFormatError(f"GPU evidence item {i} is not base64") from None
        nonce_text = item.get("nonce")
        try:
            nonce = bytes.fromhex(nonce_text) if isinstance(nonce_text, str) else None
        except ValueError:
            raise GpuReportFormatError(f"GPU evidence item {i}: nonce is not hex") from None
        found.append(GpuEvidenceItem(str(item.get("arch", "")), report, chain, nonce))
    return tuple(found)
