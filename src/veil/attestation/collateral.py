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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import dcap_qvl
import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from veil.attestation.evidence import AttestationError
from veil.keyfiles import write_secret

__all__ = [
    "AMD_KDS_URL",
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "CollateralFetchError",
    "CollateralFetcher",
    "PcsReplyError",
    "build_tdx_collateral",
    "check_collateral_freshness",
    "collateral_from_path",
    "tdx_collateral_from_pcs_replies",
]

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
# Intel's PCS has no root CA CRL endpoint: the Intel SGX Root CA's CRL distribution point (named in
# every certificate it issues) serves the CRL, in DER, at this address.
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
AMD_KDS_URL = "https://kdsintf.amd.com"
DEFAULT_CACHE_DIR = Path("~/.cache/veil/collateral")


def default_cache_dir() -> Path:
    """``$VEIL_CACHE_DIR/collateral``, else ``$XDG_CACHE_HOME/veil/collateral``, else
    ``~/.cache/veil/collateral``."""
    if os.environ.get("VEIL_CACHE_DIR"):
        return Path(os.environ["VEIL_CACHE_DIR"]).expanduser() / "collateral"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "veil" / "collateral"
    return DEFAULT_CACHE_DIR.expanduser()


DEFAULT_MAX_AGE_DAYS = 30
DEFAULT_ROOT_CA_CRL_MAX_AGE_DAYS = 366

# Issuer chains travel URL-encoded in these reply headers (PCS v4 name first, then the v3 name).
TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)

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
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
SNP_CHIP_ID_SIZE = 64
PCK_CAS = ("platform", "processor")
_FMSPC = re.compile(r"[0-9a-fA-F]{12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")  # ECDSA P-256, r || s
_TIME = "%Y-%m-%dT%H:%M:%SZ"


class PcsReplyError(AttestationError, ValueError):
    """A PCS reply (from a directory or a server) is not what Intel serves."""


class CollateralFetchError(AttestationError):
    """A collateral service did not answer with collateral; the message names the URL."""


# --- 1. Intel PCS replies -> dcap-qvl collateral ------------------------------------------------


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
        pck_crl=_read(root, f"pck_crl_{_pck_ca(ca)}.der"),
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
        path = root / f"tcb_info_{_fmspc(fmspc)}.json"
        if not path.is_file():
            raise PcsReplyError(f"{root} has no {path.name}")
        return path
    found = sorted(root.glob("tcb_info_*.json"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise PcsReplyError(
            f"{root} must hold exactly one tcb_info_<fmspc>.json (found: {names}); name the FMSPC"
        )
    _fmspc(found[0].stem.removeprefix("tcb_info_"))
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


# --- 2. Freshness: valid now, and issued recently ----------------------------------------------


def check_collateral_freshness(
    collateral: Mapping[str, Any],
    at: datetime,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    *,
    root_ca_crl_max_age_days: int = DEFAULT_ROOT_CA_CRL_MAX_AGE_DAYS,
) -> list[str]:
    """What makes ``collateral`` unfit for a verification at ``at``; an empty list means fit.

    Steps, for the TCB info and QE identity (``issueDate`` / ``nextUpdate``) and for the PCK and
    root CA CRLs (``thisUpdate`` / ``nextUpdate``): (1) issued no later than ``at``; (2) its next
    update after ``at``; (3) issued no more than ``max_age_days`` before ``at``. An item that cannot
    be read is a problem too: a check that cannot run fails.

    The root CA CRL has its own bound, ``root_ca_crl_max_age_days`` (default 366): Intel issues it
    about once a year with a year's validity (the one PCS served on 2026-06-29 was last updated
    2026-02-26), so a 30-day bound would refuse the current genuine CRL. It lists revoked Intel CAs;
    the TCB info, QE identity and PCK CRL, which change with TCB recoveries, keep the tight bound.
    """
    for name, value in (
        ("max_age_days", max_age_days),
        ("root_ca_crl_max_age_days", root_ca_crl_max_age_days),
    ):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    when = _utc(at)
    problems: list[str] = []
    for key, name in (("tcb_info", "TCB info"), ("qe_identity", "QE identity")):
        window = _json_window(collateral.get(key))
        if window is None:
            problems.append(f"{name} has no readable issueDate and nextUpdate; cannot check it")
            continue
        problems += _window_problems(name, "issued", window, when, max_age_days)
    for key, name, bound in (
        ("pck_crl", "PCK CRL", max_age_days),
        ("root_ca_crl", "root CA CRL", root_ca_crl_max_age_days),
    ):
        crl_window = _crl_window(collateral.get(key))
        if crl_window is None:
            problems.append(f"{name} is not a readable CRL with a next update; cannot check it")
            continue
        problems += _window_problems(name, "last updated", crl_window, when, bound)
    return problems


def _window_problems(
    name: str,
    issued: str,
    window: tuple[datetime, datetime],
    at: datetime,
    max_age_days: int,
) -> list[str]:
    start, next_update = window
    s, n, a = start.strftime(_TIME), next_update.strftime(_TIME), at.strftime(_TIME)
    problems = []
    if start > at:
        problems.append(f"{name} {issued} {s} is after the verification time {a}")
    if next_update <= at:
        problems.append(
            f"{name} expired: its next update {n} is not after the verification time {a}; "
            f"fetch fresh collateral"
        )
    if start < at - timedelta(days=max_age_days):
        problems.append(
            f"{name} {issued} {s} is more than {max_age_days} days before the verification time "
            f"{a}; fetch fresh collateral"
        )
    return problems


def _json_window(value: Any) -> tuple[datetime, datetime] | None:
    try:
        document = json.loads(value) if isinstance(value, str | bytes) else value
        return _parse_time(document["issueDate"]), _parse_time(document["nextUpdate"])
    except (ValueError, KeyError, TypeError):
        return None


def _crl_window(value: Any) -> tuple[datetime, datetime] | None:
    try:
        if isinstance(value, str):
            der = bytes.fromhex(value)
        elif isinstance(value, bytes | bytearray):
            der = bytes(value)
        elif isinstance(value, list):
            der = bytes(value)  # a byte array serialised as a list of numbers
        else:
            return None
        crl = x509.load_der_x509_crl(der)
    except (ValueError, TypeError):
        return None
    if crl.next_update_utc is None:
        return None
    return crl.last_update_utc, crl.next_update_utc


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# --- 3. Fetching from a PCCS / Intel PCS and AMD KDS, cached on disk ----------------------------


class CollateralFetcher:
    """Fetch TDX collateral from a PCCS or Intel's PCS and SNP certificates from AMD's KDS.

    Replies are cached on disk (files 0600 in a 0700 directory): TDX collateral keyed by FMSPC and
    PCK CA, reused only while ``check_collateral_freshness`` passes at the requested time; VCEKs
    keyed by product, chip id and TCB, and cert chains by product, reused until a certificate in
    them expires. Pass ``http`` to use your own ``httpx.Client`` (proxies, CA bundle).

    The root CA CRL is not on Intel's PCS API but at the root CA's CRL distribution point
    (``INTEL_ROOT_CA_CRL_URL``); a PCCS serves it at ``/sgx/certification/v4/rootcacrl``. So with
    Intel's PCS the fetcher asks the former, with a PCCS the latter and, on a 404 (an older PCCS),
    the former. ``root_ca_crl_url`` (one address or several, tried in order on 404) overrides that.
    """

    def __init__(
        self,
        pccs_url: str = INTEL_PCS_URL,
        kds_url: str = AMD_KDS_URL,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
        *,
        root_ca_crl_url: str | Sequence[str] | None = None,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    ) -> None:
        self.pccs_url = _base_url(pccs_url, "pccs_url")
        self.kds_url = _base_url(kds_url, "kds_url")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.timeout = timeout
        self.max_age_days = max_age_days
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        if isinstance(root_ca_crl_url, str):
            self.root_ca_crl_urls: tuple[str, ...] = (root_ca_crl_url,)
        elif root_ca_crl_url is not None:
            self.root_ca_crl_urls = tuple(root_ca_crl_url)
            if not self.root_ca_crl_urls:
                raise ValueError("root_ca_crl_url must name at least one address")
        elif urlsplit(self.pccs_url).hostname == urlsplit(INTEL_PCS_URL).hostname:
            self.root_ca_crl_urls = (INTEL_ROOT_CA_CRL_URL,)
        else:  # a PCCS serves it; an older one may not, then fall back to Intel's address
            self.root_ca_crl_urls = (
                f"{self.pccs_url}/sgx/certification/v4/rootcacrl",
                INTEL_ROOT_CA_CRL_URL,
            )

    # TDX ---------------------------------------------------------------------------------------

    def tdx(
        self, fmspc: str, ca: str = "platform", *, at: datetime | None = None
    ) -> dict[str, str]:
        """dcap-qvl collateral for a platform, as ``tdx_collateral_from_pcs_replies`` builds it.

        A cached copy is used only if it passes ``check_collateral_freshness`` at ``at`` (default
        now); otherwise it is fetched again. The fetched collateral is returned as served: the
        verifier still checks its freshness, so stale collateral from the service fails there.
        """
        fmspc = _fmspc(fmspc)
        ca = _pck_ca(ca)
        when = _utc(at) if at is not None else datetime.now(UTC)
        cache_name = f"tdx-{fmspc}-{ca}.json"
        cached = self._cache_read(cache_name)
        if cached is not None:
            with contextlib.suppress(ValueError):
                document = json.loads(cached)
                if isinstance(document, dict) and not check_collateral_freshness(
                    document, when, self.max_age_days
                ):
                    return {str(k): str(v) for k, v in document.items()}
        collateral = self._fetch_tdx(fmspc, ca)
        self._cache_write(cache_name, json.dumps(collateral, indent=1).encode())
        return collateral

    def tdx_for_quote(self, quote: bytes, *, at: datetime | None = None) -> dict[str, str]:
        """Collateral for the platform that made ``quote`` (its PCK certificate names FMSPC, CA)."""
        try:
            parsed = dcap_qvl.Quote.parse(bytes(quote))
            fmspc, ca = str(parsed.fmspc()), str(parsed.ca())
        except BaseException as exc:
            # dcap-qvl raises ValueError, or pyo3's PanicException (a BaseException) on bytes
            # that crash its parser; anything else is not ours to swallow.
            if not isinstance(exc, ValueError) and type(exc).__name__ != "PanicException":
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PcsReplyError(f"cannot read FMSPC and PCK CA from the quote: {first}") from None
        return self.tdx(fmspc, ca, at=at)

    def _fetch_tdx(self, fmspc: str, ca: str) -> dict[str, str]:
        base = self.pccs_url
        tcb = self._get(f"{base}/tdx/certification/v4/tcb?{urlencode({'fmspc': fmspc})}")
        qe = self._get(f"{base}/tdx/certification/v4/qe/identity")
        pck = self._get(
            f"{base}/sgx/certification/v4/pckcrl?{urlencode({'ca': ca, 'encoding': 'der'})}"
        )
        root_crl = self._get_first(self.root_ca_crl_urls)
        try:
            return build_tdx_collateral(
                tcb_info_reply=tcb.content,
                tcb_info_issuer_chain=_header(tcb, TCB_INFO_CHAIN_HEADERS),
                qe_identity_reply=qe.content,
                qe_identity_issuer_chain=_header(qe, QE_IDENTITY_CHAIN_HEADERS),
                pck_crl=pck.content,
                pck_crl_issuer_chain=_header(pck, PCK_CRL_CHAIN_HEADERS),
                root_ca_crl=root_crl.content,
                fmspc=fmspc,
            )
        except PcsReplyError as exc:
            raise CollateralFetchError(f"collateral from {base} is unusable: {exc}") from None

    # SEV-SNP -----------------------------------------------------------------------------------

    def snp_vcek(
        self,
        product: str,
        chip_id: bytes,
        tcb: Mapping[str, int],
        *,
        at: datetime | None = None,
    ) -> bytes:
        """The VCEK (DER) AMD's KDS issues for this chip at this reported TCB.

        ``tcb`` holds ``bootloader``, ``tee``, ``snp``, ``microcode`` (and ``fmc`` on Turin), or
        the KDS names ``blSPL``, ``teeSPL``, ``snpSPL``, ``ucodeSPL`` (``fmcSPL``). A cached VCEK is
        used while it is valid at ``at`` (default now).
        """
        product = _snp_product(product)
        if len(chip_id) != SNP_CHIP_ID_SIZE:
            raise ValueError(f"chip_id is {len(chip_id)} bytes, expected {SNP_CHIP_ID_SIZE}")
        params = _kds_tcb(product, tcb)
        # Turin's KDS names a chip by the first 8 bytes of its id; earlier products by all 64.
        hwid = (chip_id[:8] if product == "Turin" else chip_id).hex()
        when = _utc(at) if at is not None else datetime.now(UTC)
        key = hashlib.sha256(f"{product}/{hwid}?{urlencode(params)}".encode()).hexdigest()[:32]
        cache_name = f"snp-vcek-{product}-{key}.der"
        cached = self._cache_read(cache_name)
        if cached is not None and _certs_valid(cached, when, der=True):
            return cached
        url = f"{self.kds_url}/vcek/v1/{product}/{hwid}?{urlencode(params)}"
        body = self._get(url).content
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # AMD's serial 0
                x509.load_der_x509_certificate(body)
        except ValueError:
            raise CollateralFetchError(f"GET {url} did not return a DER certificate") from None
        self._cache_write(cache_name, body)
        return body

    def snp_cert_chain(self, product: str, *, at: datetime | None = None) -> bytes:
        """AMD's ASK and ARK certificates (PEM, in that order) for ``product``, from the KDS."""
        product = _snp_product(product)
        when = _utc(at) if at is not None else datetime.now(UTC)
        cache_name = f"snp-chain-{product}.pem"
        cached = self._cache_read(cache_name)
        if cached is not None and _certs_valid(cached, when, der=False):
            return cached
        url = f"{self.kds_url}/vcek/v1/{product}/cert_chain"
        body = self._get(url).content
        try:
            certificates = x509.load_pem_x509_certificates(body)
        except ValueError:
            certificates = []
        if len(certificates) != 2:
            raise CollateralFetchError(f"GET {url} did not return two PEM certificates (ASK, ARK)")
        self._cache_write(cache_name, body)
        return body

    # HTTP and cache ----------------------------------------------------------------------------

    def _get(self, url: str) -> httpx.Response:
        try:
            reply = self._http.get(url, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise CollateralFetchError(f"GET {url} failed: {type(exc).__name__}") from None
        if reply.status_code != 200:
            raise CollateralFetchError(f"GET {url} answered HTTP {reply.status_code}")
        if len(reply.content) > MAX_REPLY_BYTES:
            raise CollateralFetchError(f"GET {url} answered more than {MAX_REPLY_BYTES} bytes")
        return reply

    def _get_first(self, urls: tuple[str, ...]) -> httpx.Response:
        """The first of ``urls`` that serves; a 404 moves on to the next, any other error stops."""
        for index, url in enumerate(urls):
            try:
                return self._get(url)
            except CollateralFetchError as exc:
                if index == len(urls) - 1 or not str(exc).endswith("HTTP 404"):
                    raise
        raise CollateralFetchError("no root CA CRL address configured")

    def _cache_read(self, name: str) -> bytes | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / name
        try:
            if path.stat().st_size > MAX_REPLY_BYTES:
                return None
            return path.read_bytes()
        except OSError:
            return None

    def _cache_write(self, name: str, data: bytes) -> None:
        if self.cache_dir is None:
            return
        if not self.cache_dir.exists():
            self.cache_dir.mkdir(parents=True, mode=0o700)
        os.chmod(self.cache_dir, 0o700)
        write_secret(self.cache_dir / name, data)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CollateralFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header(reply: httpx.Response, names: tuple[str, ...]) -> str:
    for name in names:
        value = reply.headers.get(name)
        if value:
            return str(value)
    raise CollateralFetchError(f"GET {reply.request.url} answered without a {names[0]} header")


def _certs_valid(data: bytes, at: datetime, *, der: bool) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # VCEK serial 0
            certs = (
                [x509.load_der_x509_certificate(data)]
                if der
                else x509.load_pem_x509_certificates(data)
            )
    except ValueError:
        return False
    return bool(certs) and all(c.not_valid_before_utc <= at < c.not_valid_after_utc for c in certs)


def _kds_tcb(product: str, tcb: Mapping[str, int]) -> dict[str, int]:
    names = {"bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "microcode": "ucodeSPL"}
    if product == "Turin":
        names["fmc"] = "fmcSPL"
    params: dict[str, int] = {}
    for short, kds in names.items():
        value = tcb.get(short, tcb.get(kds))
        if value is None:
            raise ValueError(f"tcb has no {short!r} (or {kds!r}) value")
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"tcb {short!r} must be an integer 0..255, got {value!r}")
        params[kds] = value
    return params


def _base_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def _fmspc(value: str) -> str:
    if not _FMSPC.fullmatch(value):
        raise ValueError(f"FMSPC must be 12 hex digits, got {value!r}")
    return value.lower()


def _pck_ca(value: str) -> str:
    if value not in PCK_CAS:
        raise ValueError(f"PCK CA must be one of {', '.join(PCK_CAS)}, got {value!r}")
    return value


def _snp_product(value: str) -> str:
    if value not in SNP_PRODUCTS:
        raise ValueError(f"SEV-SNP product must be one of {', '.join(SNP_PRODUCTS)}, got {value!r}")
    return value


class VerifierCollateral(CollateralFetcher):
    """The collateral source a verifier uses (``report.CollateralSource``): the services the
    *client's* policy names, with the on-disk cache. Whatever it fetches is checked by the
    verifier exactly like collateral a node offers (Intel / AMD signatures, freshness)."""

    def describe(self) -> str:
        return f"{self.pccs_url} / {self.kds_url}"

    def snp_product(self, report: Any) -> str:
        product = getattr(report, "product", None)
        if product is None:
            raise CollateralFetchError(
                "the SNP report does not say which product it comes from (a version 2 report has "
                "no CPUID fields): pass the VCEK and AMD's chain with the evidence"
            )
        return str(product)


def fetcher_for(
    policy: Any, *, pccs_url: str | None = None, kds_url: str | None = None
) -> VerifierCollateral:
    """The client's own collateral source: the URLs given, else the policy's, cached on disk."""
    return VerifierCollateral(
        pccs_url=str(pccs_url or getattr(policy, "pccs_url", None) or INTEL_PCS_URL),
        kds_url=str(kds_url or getattr(policy, "kds_url", None) or AMD_KDS_URL),
        max_age_days=getattr(policy, "max_collateral_age_days", DEFAULT_MAX_AGE_DAYS),
        cache_dir=default_cache_dir(),
    )
