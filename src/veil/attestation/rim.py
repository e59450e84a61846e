"""NVIDIA reference integrity manifests (RIMs): the signed golden measurements of one firmware build.

A RIM is an ISO/IEC 19770-2 SWID tag (TCG RIM information model) that NVIDIA signs with an
enveloped XML-DSig (ECDSA P-384, SHA-384, C14N 1.1). One RIM describes the driver build and one
the VBIOS build; ``Meta/@colloquialVersion`` names the version, and each
``Payload/Resource[@type="Measurement"]`` gives an index (0-based: index i is the report's SPDM
block i + 1), whether it is active, and ``alternatives`` acceptable SHA-384 values
``Hash0 .. Hash{n-1}``.

The signature is checked with ``signxml`` (never a hand-written canonicalisation), using the first
certificate of the signature's KeyInfo at the verification time; that certificate must chain to
NVIDIA's pinned RIM root. Only what the signature covers (signxml's ``signed_xml``) is read.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from veil.attestation.evidence import AttestationError
from veil.attestation.pki_nvidia import RIM_ROOT_SHA256, ChainError, stamp, verify_chain

__all__ = ["Rim", "RimError", "load_rim"]

DSIG = "http://www.w3.org/2000/09/xmldsig#"
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
MEASUREMENT_SIZE = 48
MAX_RIM_SIZE = 1 << 20  # NVIDIA's RIMs are ~20 KB
MAX_ALTERNATIVES = 64
_VBIOS_VERSION = re.compile(r"\A[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}\Z")

RimKind = Literal["driver", "vbios"]


class RimError(AttestationError):
    """A RIM that is malformed, or whose signature or signing chain does not verify."""


@dataclass(frozen=True)
class Rim:
    """A RIM whose XML-DSig and signing chain verified at ``verified_at``."""

    name: str
    kind: RimKind
    version: str
    tag_id: str
    measurements: Mapping[int, tuple[bytes, ...]]  # active ones only: index -> alternatives
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    verified_at: datetime


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _key_info_chain(data: bytes, name: str) -> list[x509.Certificate]:
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise RimError(f"RIM {name!r} is not well-formed XML: {exc.msg}") from None
    certs = []
    for node in root.iterfind(
        f"{{{DSIG}}}Signature/{{{DSIG}}}KeyInfo/{{{DSIG}}}X509Data/{{{DSIG}}}X509Certificate"
    ):
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(node.text or "")))
        except (binascii.Error, ValueError):
            raise RimError(f"RIM {name!r}: a KeyInfo certificate is not DER X.509") from None
    if not certs:
        raise RimError(f"RIM {name!r} carries no signing certificate in its KeyInfo")
    return certs


def _config(at: datetime) -> SignatureConfiguration:
    return SignatureConfiguration(
        require_x509=True,
        location="./",  # the one enveloped signature, a child of the root element
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=at,
    )


def load_rim(
    data: bytes,
    *,
    at: datetime,
    name: str = "RIM",
    pinned_roots: Iterable[bytes] = (RIM_ROOT_SHA256,),
) -> Rim:
    """Verify one RIM's signature and signing chain at ``at`` and read its measurements."""
    if len(data) > MAX_RIM_SIZE:
        raise RimError(f"RIM {name!r} is {len(data)} bytes, more than {MAX_RIM_SIZE}")
    # 1. the signing chain from KeyInfo: leaf first, to the pinned RIM root, valid at ``at``
    chain = _key_info_chain(data, name)
    try:
        verify_chain(chain, at, pinned_roots, f"RIM {name!r} signing chain")
    except ChainError as exc:
        raise RimError(str(exc)) from None
    # 2. the XML signature by the leaf, via signxml
    try:
        result = XMLVerifier().verify(data, x509_cert=chain[0], expect_config=_config(at))
    except InvalidInput as exc:
        raise RimError(f"RIM {name!r}: not a signature signxml accepts: {exc}") from None
    except SignXMLException as exc:
        raise RimError(
            f"RIM {name!r}: XML signature does not verify at {stamp(at)}: {exc}"
        ) from None
    if isinstance(result, list):  # only with expect_references > 1
        raise RimError(f"RIM {name!r}: more than one signed reference")
    signed = result.signed_xml
    if signed is None or signed.tag != f"{{{SWID}}}SoftwareIdentity":
        raise RimError(f"RIM {name!r}: the signed element is not a SWID SoftwareIdentity")
    # 3. what the signature covers: version and active measurements
    meta = signed.find(f"{{{SWID}}}Meta")
    version = meta.get("colloquialVersion") if meta is not None else None
    if not version:
        raise RimError(f"RIM {name!r}: no Meta/@colloquialVersion")
    kind: RimKind = "vbios" if _VBIOS_VERSION.match(version) else "driver"
    return Rim(
        name=name,
        kind=kind,
        version=version,
        tag_id=signed.get("tagId", ""),
        measurements=MappingProxyType(_measurements(signed, name)),
        signer=chain[0],
        chain=tuple(chain),
        verified_at=at,
    )


def _measurements(signed: etree._Element, name: str) -> dict[int, tuple[bytes, ...]]:
    found: dict[int, tuple[bytes, ...]] = {}
    for resource in signed.iterfind(f"{{{SWID}}}Payload/{{{SWID}}}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index = int(resource.get("index", ""))
            count = int(resource.get("alternatives", ""))
            size = int(resource.get("size", str(MEASUREMENT_SIZE)))
        except ValueError:
            raise RimError(
                f"RIM {name!r}: a measurement's index or alternatives is not a number"
            ) from None
        active = resource.get("active")
        if active not in ("True", "False"):
            raise RimError(f"RIM {name!r}: measurement {index} has active={active!r}")
        if active == "False":
            continue
        if not 0 <= index < 256 or not 1 <= count <= MAX_ALTERNATIVES or size != MEASUREMENT_SIZE:
            raise RimError(
                f"RIM {name!r}: measurement {index} has {count} alternatives of {size} bytes"
            )
        if index in found:
            raise RimError(f"RIM {name!r}: measurement {index} appears twice")
        values = []
        for k in range(count):
            text = resource.get(f"{{{SHA384_NS}}}Hash{k}")
            try:
                value = bytes.fromhex(text or "")
            except ValueError:
                value = b""
            if len(value) != MEASUREMENT_SIZE:
                raise RimError(f"RIM {name!r}: measurement {index} Hash{k} is not 48 hex bytes")
            values.append(value)
        found[index] = tuple(values)
    return found
