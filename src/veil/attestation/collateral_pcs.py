"""Intel PCS replies -> dcap-qvl collateral (step 3 of the verifier, TDX: where collateral comes from).

The collateral this module builds is dcap-qvl's ``QuoteCollateralV3`` JSON object (what
``veil.attestation.verify_tdx.verify_tdx_quote`` takes): the TCB info and QE identity as the exact
JSON text Intel signed, their signatures and both CRLs as hex, the issuer chains as PEM. Where the
replies came from (a directory, a PCCS, a relay) earns them nothing: ``collateral_freshness`` and
the verifier judge them all alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attestation.evidence import AttestationError

__all__ = [
    "PcsReplyError",
    "build_tdx_collateral",
    "collateral_from_path",
    "tdx_collateral_from_pcs_replies",
]

COLLATERAL_KEYS = frozenset(
    {
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
)
MAX_REPLY_BYTES = 1 << 20  # the largest genuine reply (a PCK CRL) is tens of kB
PCK_CAS = ("platform", "processor")
_FMSPC = re.compile(r"[0-9a-fA-F]{12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")  # ECDSA P-256, r || s


class PcsReplyError(AttestationError, ValueError):
    """A PCS reply (from a directory or a server) is not what Intel serves."""


def tdx_collateral_from_pcs_replies(
    directory: str | Path, *, fmspc: str | None = None, ca: str = "platform"
) -> dict[str, str]:
    """dcap-qvl ``QuoteCollateralV3`` JSON from Intel PCS v4 replies saved as served.

    The directory holds ``tcb_info_<fmspc>.json`` (``{"tcbInfo": ..., "signature": ...}``),
    ``qe_identity.json`` (``{"enclaveIdentity": ..., "signature": ...}``), ``pck_crl_<ca>.der``,
    ``IntelSGXRootCA_crl.der`` and the issuer chains from the reply headers,
    ``tcb_info_issuer_chain.pem``, ``qe_identity_issuer_chain.pem``, ``pck_crl_issuer_chain.pem``
    (PEM, or URL-encoded PEM as in the header). ``fmspc`` picks a TCB info when there are several.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PcsReplyError(f"{root} is not a directory of PCS replies")
    tcb_path = _tcb_info_file(root, fmspc)
    wanted_fmspc = tcb_path.stem.removeprefix("tcb_info_")
    return build_tdx_collateral(
        tcb_info_reply=_read(root, tcb_path.name),
        tcb_info_issuer_chain=_read(root, "tcb_info_issuer_chain.pem").decode("utf-8", "replace"),
        qe_identity_reply=_read(root, "qe_identity.json"),
        qe_identity_issuer_chain=_read(root, "qe_identity_issuer_chain.pem").decode(
            "utf-8", "replace"
        ),
        pck_crl=_read(root, f"pck_crl_{checked_pck_ca(ca)}.der"),
        pck_crl_issuer_chain=_read(root, "pck_crl_issuer_chain.pem").decode("utf-8", "replace"),
        root_ca_crl=_read(root, "IntelSGXRootCA_crl.der", "root_ca_crl.der"),
        fmspc=wanted_fmspc,
    )


def collateral_from_path(path: str | Path) -> dict[str, str]:
    """TDX collateral from a directory of Intel PCS replies or a dcap-qvl JSON file.

    What ``--collateral`` accepts. Either way the result still has to pass
    ``check_collateral_freshness`` and the verifier: where it came from earns it nothing.
    """
    source = Path(path)
    if source.is_dir():
        return tdx_collateral_from_pcs_replies(source)
    try:
        if source.stat().st_size > MAX_REPLY_BYTES:
            raise PcsReplyError(f"{source.name} is larger than {MAX_REPLY_BYTES} bytes")
        document = json.loads(source.read_bytes())
    except OSError as exc:
        raise PcsReplyError(f"cannot read collateral {source}: {exc.strerror}") from None
    except ValueError:
        raise PcsReplyError(f"{source.name} is not JSON collateral") from None
    missing = sorted(COLLATERAL_KEYS - set(document)) if isinstance(document, dict) else ["all"]
    if missing:
        raise PcsReplyError(
            f"{source.name} is not dcap-qvl QuoteCollateralV3 JSON: missing {', '.join(missing)}"
        )
    return {key: str(document[key]) for key in sorted(COLLATERAL_KEYS)}


def build_tdx_collateral(
    *,
    tcb_info_reply: bytes,
    tcb_info_issuer_chain: str,
    qe_identity_reply: bytes,
    qe_identity_issuer_chain: str,
    pck_crl: bytes,
    pck_crl_issuer_chain: str,
    root_ca_crl: bytes,
    fmspc: str | None = None,
) -> dict[str, str]:
    """The dcap-qvl collateral from the raw reply bodies and issuer-chain header values.

    Steps: (1) cut the signed ``tcbInfo`` / ``enclaveIdentity`` value out of each reply as the exact
    text served (re-serialising would change the bytes Intel signed); (2) check they are TDX
    collateral for ``fmspc`` with a 64-byte signature; (3) decode the CRLs (DER, PEM or hex) and
    issuer chains (PEM or URL-encoded PEM); (4) assemble dcap-qvl's encodings.
    """
    tcb_info, tcb_signature = _signed_part(tcb_info_reply, "tcbInfo", "TCB info reply")
    qe_identity, qe_signature = _signed_part(
        qe_identity_reply, "enclaveIdentity", "QE identity reply"
    )
    tcb_document = json.loads(tcb_info)
    if tcb_document.get("id") != "TDX":
        raise PcsReplyError(f"TCB info id is {tcb_document.get('id')!r}, expected 'TDX'")
    served_fmspc = str(tcb_document.get("fmspc", ""))
    if fmspc is not None and served_fmspc.lower() != fmspc.lower():
        raise PcsReplyError(f"TCB info is for FMSPC {served_fmspc!r}, expected {fmspc.lower()!r}")
    qe_id = json.loads(qe_identity).get("id")
    if qe_id != "TD_QE":
        raise PcsReplyError(f"QE identity id is {qe_id!r}, expected 'TD_QE'")
    return {
        "pck_crl_issuer_chain": _pem_chain(pck_crl_issuer_chain, "PCK CRL issuer chain"),
        "root_ca_crl": _crl_der(root_ca_crl, "root CA CRL").hex(),
        "pck_crl": _crl_der(pck_crl, "PCK CRL").hex(),
        "tcb_info_issuer_chain": _pem_chain(tcb_info_issuer_chain, "TCB info issuer chain"),
        "tcb_info": tcb_info,
        "tcb_info_signature": tcb_signature,
        "qe_identity_issuer_chain": _pem_chain(
            qe_identity_issuer_chain, "QE identity issuer chain"
        ),
        "qe_identity": qe_identity,
        "qe_identity_signature": qe_signature,
    }


def _tcb_info_file(root: Path, fmspc: str | None) -> Path:
    if fmspc is not None:
        path = root / f"tcb_info_{checked_fmspc(fmspc)}.json"
        if not path.is_file():
            raise PcsReplyError(f"{root} has no {path.name}")
        return path
    found = sorted(root.glob("tcb_info_*.json"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise PcsReplyError(
            f"{root} must hold exactly one tcb_info_<fmspc>.json (found: {names}); name the FMSPC"
        )
    checked_fmspc(found[0].stem.removeprefix("tcb_info_"))
    return found[0]


def _read(root: Path, *names: str) -> bytes:
    for name in names:
        path = root / name
        if path.is_file():
            if path.stat().st_size > MAX_REPLY_BYTES:
                raise PcsReplyError(f"{path.name} is larger than {MAX_REPLY_BYTES} bytes")
            return path.read_bytes()
    raise PcsReplyError(f"{root} has no {' or '.join(names)}")


def _signed_part(reply: bytes, key: str, what: str) -> tuple[str, str]:
    """The exact text of the top-level ``key`` value and the reply's hex ``signature``.

    The JSON decoder finds where each top-level value ends; the value's text is then cut from the
    reply as served, so not one byte of what Intel signed changes.
    """
    if len(reply) > MAX_REPLY_BYTES:
        raise PcsReplyError(f"{what} is larger than {MAX_REPLY_BYTES} bytes")
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        raise PcsReplyError(f"{what} is not UTF-8 JSON") from None
    spans = _top_level_spans(text, what)
    if key not in spans or "signature" not in spans:
        raise PcsReplyError(
            f"{what} must be an object with {key!r} and 'signature', found keys {sorted(spans)}"
        )
    start, end = spans[key]
    signed = text[start:end]
    if not signed.startswith("{"):
        raise PcsReplyError(f"{what}: {key!r} is not a JSON object")
    signature = json.loads(text[slice(*spans["signature"])])
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise PcsReplyError(f"{what}: signature is not 64 bytes of hex")
    return signed, signature.lower()


def _top_level_spans(text: str, what: str) -> dict[str, tuple[int, int]]:
    """Start and end offsets of each top-level member's value in a JSON object's text."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    try:
        json.loads(text)  # the whole reply must be valid JSON before any part of it is used
        at = _skip_space(text, 0)
        if text[at : at + 1] != "{":
            raise ValueError("not an object")
        at = _skip_space(text, at + 1)
        while text[at : at + 1] != "}":
            name, at = decoder.raw_decode(text, at)
            at = _skip_space(text, at)
            if text[at : at + 1] != ":":
                raise ValueError("expected ':'")
            start = _skip_space(text, at + 1)
            _, end = decoder.raw_decode(text, start)
            if name in spans:
                raise ValueError(f"duplicate member {name!r}")
            spans[str(name)] = (start, end)
            at = _skip_space(text, end)
            if text[at : at + 1] == ",":
                at = _skip_space(text, at + 1)
    except (ValueError, IndexError) as exc:
        raise PcsReplyError(f"{what} is not a JSON object: {exc}") from None
    return spans


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _pem_chain(value: str, what: str) -> str:
    """PEM certificates from a header value (URL-encoded, as PCS sends them) or a PEM file."""
    text = value.strip()
    if "%" in text:  # never in PEM; Intel's encoding leaves "-----BEGIN" itself as it is
        text = unquote(text).strip()
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise PcsReplyError(f"{what} is not a PEM certificate chain") from None
    if len(certificates) < 2:
        raise PcsReplyError(f"{what} holds {len(certificates)} certificate(s), expected 2 or more")
    return text + "\n"


def _crl_der(body: bytes, what: str) -> bytes:
    """A CRL's DER bytes from DER, PEM or hex text (PCCS versions differ), checked to parse."""
    if len(body) > MAX_REPLY_BYTES:
        raise PcsReplyError(f"{what} is larger than {MAX_REPLY_BYTES} bytes")
    der = body
    stripped = body.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            der = x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER)
        except ValueError:
            raise PcsReplyError(f"{what} is not a PEM CRL") from None
    elif re.fullmatch(rb"[0-9a-fA-F]+", stripped or b"-"):
        der = bytes.fromhex(stripped.decode("ascii"))
    try:
        x509.load_der_x509_crl(der)
    except ValueError:
        raise PcsReplyError(f"{what} is not a DER certificate revocation list") from None
    return der


def checked_fmspc(value: str) -> str:
    """``value`` as an FMSPC (12 hex digits), lower case; ValueError otherwise."""
    if not _FMSPC.fullmatch(value):
        raise ValueError(f"FMSPC must be 12 hex digits, got {value!r}")
    return value.lower()


def checked_pck_ca(value: str) -> str:
    """``value`` as a PCK CA name (platform, processor); ValueError otherwise."""
    if value not in PCK_CAS:
        raise ValueError(f"PCK CA must be one of {', '.join(PCK_CAS)}, got {value!r}")
    return value
