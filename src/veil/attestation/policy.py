"""What a verifier accepts: TCB statuses, pinned measurements, and whether "no TEE" is tolerable.

A policy file is JSON or TOML (by its suffix; anything but ``.toml`` is read as JSON)::

    allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
    mr_td = "91eb2b44...118b7"      # 48 bytes, hex; optional, like rtmr0 .. rtmr3
    allow_no_tee = false

Unknown keys and unknown status names are errors, so a typo cannot silently loosen a policy.
"Revoked" can never be allowed.
"""

from __future__ import annotations

import json
import tomllib
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
MEASUREMENT_NAMES = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


class PolicyError(AttestationError, ValueError):
    """A policy file that cannot be read or says something invalid."""


def _measurement(value: object) -> bytes:
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
    if len(raw) != MEASUREMENT_SIZE:
        raise ValueError(f"must be {MEASUREMENT_SIZE} bytes ({2 * MEASUREMENT_SIZE} hex digits)")
    return raw


Measurement = Annotated[
    bytes,
    BeforeValidator(_measurement),
    PlainSerializer(lambda raw: raw.hex(), return_type=str, when_used="always"),
]


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_tcb_statuses: tuple[str, ...] = Field(default=("UpToDate",), min_length=1)
    mr_td: Measurement | None = None
    rtmr0: Measurement | None = None
    rtmr1: Measurement | None = None
    rtmr2: Measurement | None = None
    rtmr3: Measurement | None = None
    allow_no_tee: bool = False

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

    def pins(self) -> dict[str, bytes]:
        """The measurements this policy pins, by name (mr_td, rtmr0 .. rtmr3)."""
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
