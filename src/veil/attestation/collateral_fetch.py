"""Collateral fetched from the services the client chooses, cached on disk (step 3 of the verifier).

TDX collateral from a PCCS or Intel's PCS (``CollateralFetcher.tdx``), SEV-SNP certificates from
AMD's KDS (``CollateralFetcher.snp_vcek``, ``snp_cert_chain``). What is fetched is checked exactly
like collateral a node relays: by its Intel / AMD signatures and by ``collateral_freshness``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import dcap_qvl
import httpx
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from veil.attestation.collateral_freshness import (
    DEFAULT_MAX_AGE_DAYS,
    as_utc,
    check_collateral_freshness,
)
from veil.attestation.collateral_pcs import (
    MAX_REPLY_BYTES,
    PcsReplyError,
    build_tdx_collateral,
    checked_fmspc,
    checked_pck_ca,
)
from veil.attestation.evidence import AttestationError
from veil.keyfiles import write_secret

__all__ = [
    "AMD_KDS_URL",
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "CollateralFetchError",
    "CollateralFetcher",
    "VerifierCollateral",
    "default_cache_dir",
    "fetcher_for",
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


# Issuer chains travel URL-encoded in these reply headers (PCS v4 name first, then the v3 name).
TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
SNP_PRODUCTS = ("Milan", "Genoa", "Turin")
SNP_CHIP_ID_SIZE = 64


class CollateralFetchError(AttestationError):
    """A collateral service did not answer with collateral; the message names the URL."""


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
        fmspc = checked_fmspc(fmspc)
        ca = checked_pck_ca(ca)
        when = as_utc(at) if at is not None else datetime.now(UTC)
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
        when = as_utc(at) if at is not None else datetime.now(UTC)
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
        when = as_utc(at) if at is not None else datetime.now(UTC)
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


def _snp_product(value: str) -> str:
    if value not in SNP_PRODUCTS:
        raise ValueError(f"SEV-SNP product must be one of {', '.join(SNP_PRODUCTS)}, got {value!r}")
    return value


class VerifierCollateral(CollateralFetcher):
    """The collateral source a verifier uses (``report_references.CollateralSource``): the
    services the *client's* policy names, with the on-disk cache. Whatever it fetches is checked
    by the verifier exactly like collateral a node offers (Intel / AMD signatures, freshness)."""

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
