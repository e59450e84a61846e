"""Attestation: a node proves its keys live in a TEE; a client checks that proof (docs/PROTOCOL.md 3).

One small module per concern (see README.md here for what each step checks):

- ``evidence``   the evidence document and the report_data binding of both node keys and a nonce
- ``providers*`` node side: configfs-tsm (TDX, SEV-SNP), NVIDIA GPU, and "none" for development
- ``abi_tdx``    the TDX quote fields Veil reads, via dcap-qvl's parser
- ``verify_tdx`` offline TDX quote verification with dcap-qvl against given collateral
- ``policy``     what a verifier accepts: TCB statuses, pinned measurements, allow_no_tee
- ``report*``    every check as a named step; ``verify_evidence`` (``report``) runs them
- ``abi_snp``, ``verify_snp*``         SEV-SNP reports and their VCEK / ASK / ARK chains
- ``abi_nvidia``, ``pki_nvidia``, ``rim``, ``verify_nvidia*``, ``nras``, ``nvidia``
                 NVIDIA GPU reports: parsing, certificate chains, signed RIMs, OCSP, the remote
                 verifier's verdict
- ``collateral*`` Intel PCS / PCCS / AMD KDS replies: parsing, freshness, fetch and cache
- ``eventlog``   RTMR replay from a runtime event log
- ``release*``   release manifests and their Ed25519 or Sigstore signatures
- ``cli*``       ``veil attest verify`` / ``veil attest pin``; ``release_cli``: ``veil release``
"""

from veil.attestation.abi_tdx import QuoteFormatError, TdxQuote, parse_tdx_quote
from veil.attestation.evidence import (
    NO_TEE_WARNING,
    AttestationError,
    Evidence,
    EvidenceError,
    report_data,
)
from veil.attestation.policy import Policy, PolicyError
from veil.attestation.providers import NoTeeProvider, build_evidence, choose_provider
from veil.attestation.providers_base import AttestationProvider, ProviderUnavailable
from veil.attestation.providers_nvidia import NvidiaProvider
from veil.attestation.providers_tsm import ConfigfsTsmProvider, TsmRaceError
from veil.attestation.report import verify_evidence, verify_quote
from veil.attestation.report_steps import Step, VerificationReport
from veil.attestation.verify_tdx import (
    NO_MATCHING_TCB_LEVEL,
    CollateralError,
    CollateralRequired,
    QuoteVerificationError,
    TdxVerification,
    verify_tdx_quote,
)

__all__ = [
    "NO_MATCHING_TCB_LEVEL",
    "NO_TEE_WARNING",
    "AttestationError",
    "AttestationProvider",
    "CollateralError",
    "CollateralRequired",
    "ConfigfsTsmProvider",
    "Evidence",
    "EvidenceError",
    "NoTeeProvider",
    "NvidiaProvider",
    "Policy",
    "PolicyError",
    "ProviderUnavailable",
    "QuoteFormatError",
    "QuoteVerificationError",
    "Step",
    "TdxQuote",
    "TdxVerification",
    "TsmRaceError",
    "VerificationReport",
    "build_evidence",
    "choose_provider",
    "parse_tdx_quote",
    "report_data",
    "verify_evidence",
    "verify_quote",
    "verify_tdx_quote",
]
