"""What a verifier accepts: the references evidence must match, and where collateral comes from.

**Strict means pinned.** A policy passes evidence only when it matches a reference the *client*
configured: values pinned here, or a release manifest signed by one of ``release_signers``. With
neither, the measurement step fails and says what to pin (``veil attest pin`` writes a policy
from a node it sees, as trust on first use). A policy file is JSON or TOML (by its suffix)::

    # Intel TDX
    allowed_tcb_statuses = ["UpToDate"]
    mr_td = "91eb2b44...118b7"          # 48 bytes, hex; rtmr0..rtmr3, mr_seam, mr_config_id,
    rtmr1 = "..."                        # mr_owner, mr_owner_config work the same way
    td_attributes = "0000001000000000"   # 8 bytes, hex: pinned exactly when given
    xfam = "e702060000000000"            # 8 bytes, hex
    app_compose_hash = "..."             # 32 bytes, hex: dstack runtime measurement (event log)
    # AMD SEV-SNP
    snp_measurement = "7adcb574..."      # 48 bytes, hex
    snp_min_tcb = { bootloader = 10, tee = 0, snp = 23, microcode = 84 }
    snp_allow_debug = false              # guest policy bits that must be off
    snp_allow_migration_agent = false
    # NVIDIA GPUs
    gpu_driver_versions = ["550.90.07"]
    gpu_vbios_versions = ["96.00.9F.00.01"]
    # collateral the client fetches itself, and how old it may be
    pccs_url = "https://api.trustedservices.intel.com"
    kds_url = "https://kdsintf.amd.com"
    max_collateral_age_days = 30
    # signed releases the client accepts (instead of, or besides, raw pins)
    [[release_signers]]
    sigstore_identity = "https://github.com/ORG/REPO/.github/workflows/release.yml@refs/tags/v1.0.0"
    sigstore_issuer = "https://token.actions.githubusercontent.com"
    [[release_signers]]
    ed25519_public_key = "BASE64"
    allow_no_tee = false
    # veil-v3: seal with classical X25519 to a node that publishes no post-quantum key
    allow_classical_kem = false

Unknown keys and unknown status names are errors, so a typo cannot silently loosen a policy.
"Revoked" can never be allowed.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from veil.attestation.abi_tdx import MEASUREMENT_SIZE
from veil.attestation.evidence import AttestationError
from veil.attestation.release import ReleaseSigner
from veil.attestation.verify_tdx import NO_MATCHING_TCB_LEVEL

# Intel's TCB status names (TCB info v3 for TDX), plus the one Veil adds for a platform older than
# every listed level (see verify_tdx.py).
KNOWN_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
        NO_MATCHING_TCB_LEVEL,
    }
)
# The TDX measurement registers a policy may pin, in the order reports show them.
MEASUREMENT_NAMES = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_seam",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
)
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
DEFAULT_PCCS_URL = "https://api.trustedservices.intel.com"
DEFAULT_KDS_URL = "https://kdsintf.amd.com"
DEFAULT_MAX_COLLATERAL_AGE_DAYS = 30


class PolicyError(AttestationError, ValueError):
    """A policy file that cannot be read or says something invalid."""


def _hex_of(size: int) -> Callable[[object], bytes]:
    def decode(value: object) -> bytes:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            text = value.strip().lower().removeprefix("0x")
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raise ValueError("must be hex") from None
        else:
            raise ValueError("must be a hex string")
        if len(raw) != size:
            raise ValueError(f"must be {size} bytes ({2 * size} hex digits)")
        return raw

    return decode


_AS_HEX = PlainSerializer(lambda raw: raw.hex(), return_type=str, when_used="always")
Measurement = Annotated[bytes, BeforeValidator(_hex_of(MEASUREMENT_SIZE)), _AS_HEX]
Attributes8 = Annotated[bytes, BeforeValidator(_hex_of(8)), _AS_HEX]
Digest32 = Annotated[bytes, BeforeValidator(_hex_of(32)), _AS_HEX]


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- Intel TDX
    allowed_tcb_statuses: tuple[str, ...] = Field(default=("UpToDate",), min_length=1)
    mr_td: Measurement | None = None
    rtmr0: Measurement | None = None
    rtmr1: Measurement | None = None
    rtmr2: Measurement | None = None
    rtmr3: Measurement | None = None
    mr_seam: Measurement | None = None
    mr_config_id: Measurement | None = None
    mr_owner: Measurement | None = None
    mr_owner_config: Measurement | None = None
    td_attributes: Attributes8 | None = None
    xfam: Attributes8 | None = None
    app_compose_hash: tuple[Digest32, ...] = ()
    # -- AMD SEV-SNP
    snp_measurement: tuple[Measurement, ...] = ()
    snp_min_tcb: dict[str, int] = Field(default_factory=dict)
    snp_allow_debug: bool = False
    snp_allow_migration_agent: bool = False
    # -- NVIDIA GPUs
    gpu_driver_versions: tuple[str, ...] = ()
    gpu_vbios_versions: tuple[str, ...] = ()
    # -- collateral and releases
    pccs_url: str = DEFAULT_PCCS_URL
    kds_url: str = DEFAULT_KDS_URL
    max_collateral_age_days: int = Field(default=DEFAULT_MAX_COLLATERAL_AGE_DAYS, ge=0, le=3650)
    release_signers: tuple[ReleaseSigner, ...] = ()
    sigstore_trusted_root: str | None = None
    # -- development only
    allow_no_tee: bool = False
    # -- veil-v3: accept a node without a post-quantum (ML-KEM-768 + X25519) key, sealing with
    # X25519 alone; a recorded prompt could then be opened by a future quantum computer.
    allow_classical_kem: bool = False

    @field_validator("allowed_tcb_statuses")
    @classmethod
    def _known_statuses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "Revoked" in value:
            raise ValueError("'Revoked' can never be allowed")
        unknown = sorted(set(value) - KNOWN_TCB_STATUSES)
        if unknown:
            known = ", ".join(sorted(KNOWN_TCB_STATUSES))
            raise ValueError(f"unknown TCB status {', '.join(unknown)} (known: {known})")
        return value

    @field_validator("snp_measurement", "app_compose_hash", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | bytes) else value

    @field_validator("snp_min_tcb")
    @classmethod
    def _tcb_components(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(SNP_TCB_COMPONENTS))
        if unknown:
            raise ValueError(
                f"unknown SNP TCB component {', '.join(unknown)} "
                f"(known: {', '.join(SNP_TCB_COMPONENTS)})"
            )
        for name, level in value.items():
            if not 0 <= level <= 255:
                raise ValueError(f"{name} must be 0..255")
        return value

    def pins(self) -> dict[str, bytes]:
        """The TDX registers this policy pins, by name (mr_td, rtmr0 .. rtmr3, ...)."""
        pinned = {name: getattr(self, name) for name in MEASUREMENT_NAMES}
        return {name: value for name, value in pinned.items() if value is not None}

    def allows_status(self, status: str) -> bool:
        return status in self.allowed_tcb_statuses

    @classmethod
    def from_mapping(cls, document: Any, *, source: str = "policy") -> Policy:
        if not isinstance(document, dict):
            raise PolicyError(f"{source}: a policy must be an object/table")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'policy'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PolicyError(f"{source}: {problems}") from None

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        """Read a policy from a ``.toml`` or JSON file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read policy {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".toml":
                document: Any = tomllib.loads(raw.decode("utf-8"))
            else:
                document = json.loads(raw)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
            raise PolicyError(f"policy {path} is not valid {kind}: {exc}") from None
        return cls.from_mapping(document, source=str(path))
