"""Settings, in one place: every default Veil has lives here (env prefix ``VEIL_``)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MiB = 1024 * 1024

# The node's replay caches (veil.node.replay): v3 request ids and gateway ticket ids.
# ~40 MB in memory; 200k ids per 250 s window is ~800 requests/s sustained.
REPLAY_MAX_ENTRIES = 200_000
# One tenant's share: ~40 requests/s sustained over a 250 s window. A twentieth of the total, so
# one tenant (or a few) cannot fill the space every other tenant needs.
REPLAY_MAX_PER_TENANT = 10_000
# Live gateway tickets one node process remembers; a full cache refuses (503), never forgets.
TICKET_REPLAY_MAX_ENTRIES = 200_000
# Redis keys: request ids under PREFIX, ticket ids under PREFIX + TICKET_REPLAY_SUFFIX.
REPLAY_PREFIX = "veil:replay:"
TICKET_REPLAY_SUFFIX = "ticket:"
# A Redis that answers slower than this is "unknown": the request is refused (503), not served.
REPLAY_REDIS_TIMEOUT_SECONDS = 2.0

# Running receipts of a stream (veil.node.streams): one after the first content chunk (the prompt
# is paid for as soon as the answer starts), then one once RUNNING_RECEIPT_CHUNKS content chunks
# or RUNNING_RECEIPT_SECONDS have passed since the last, whichever comes first, and always the
# final one. A client that hangs up pays at least up to the last running receipt: at most
# RUNNING_RECEIPT_CHUNKS - 1 content chunks, all sent within RUNNING_RECEIPT_SECONDS of it, go
# unbilled. 32 chunks and 0.25 s keep signing (node) and verifying (gateway) to a few percent of
# a core at 20,000 chunks/s, and a CPU model at 20 tokens/s still gets a receipt every 5 tokens.
RUNNING_RECEIPT_CHUNKS = 32
RUNNING_RECEIPT_SECONDS = 0.25

# The client (veil.Client, the openai transport, `veil chat`); VEIL_BASE_URL overrides the URL.
CLIENT_BASE_URL = "http://127.0.0.1:8080"
# A chat answer may take minutes on a CPU node; connecting may not.
CLIENT_TIMEOUT_SECONDS = 600.0
CLIENT_CONNECT_TIMEOUT_SECONDS = 10.0
# Attempts (each a new lock, attestation and encryption) for 409/425/503, and the first pause
# between them (doubled each time).
CLIENT_MAX_ATTEMPTS = 3
CLIENT_BACKOFF_SECONDS = 0.25
# The one default chat budget: a chat request that names no max_tokens may write this many
# completion tokens, whoever applies it - the client (confidential: it reserves this plus the
# request's size in bytes, an upper bound of the prompt's tokens), the gateway (a plain request:
# the same sum) and the node (whatever units the request carries). A lock that names no budget
# holds GatewaySettings.default_chat_units: the gateway cannot see the prompt at lock time.
DEFAULT_CHAT_COMPLETION_TOKENS = 256


# The KEMs of veil-v3 (veil.hazmat.v3.Kem's values) and what a node accepts by default.
KemName = Literal["mlkem768-x25519", "x25519"]
DEFAULT_KEMS: tuple[KemName, ...] = ("mlkem768-x25519",)


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "veil"


class NodeSettings(BaseSettings):
    """A node: where it keeps keys and models, what it serves, and its limits."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Prepared embedded models; several nodes (and the test suite) may share one directory.
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8081
    # Serve the embedded models (DESIGN.md); off for nodes that only front upstream servers.
    embedded: bool = True
    # "MODEL=URL" or "KIND:MODEL=URL", repeatable on the command line.
    upstreams: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)
    key_grace_seconds: float = Field(default=600.0, ge=0)
    # Budget for a request that carries no num_compute_units and no gateway ticket (a node used
    # directly): prompt + completion tokens for chat (whose completion is still at most
    # DEFAULT_CHAT_COMPLETION_TOKENS unless it names max_tokens), input tokens for embeddings.
    default_units: int = Field(default=4096, ge=1)
    chat_context_tokens: int = Field(default=2048, ge=128)
    # Ed25519 public keys (base64) of gateways whose tickets this node honours. Paid routes are
    # served only with a valid ticket from one of them.
    gateway_keys: list[str] = Field(default_factory=list)
    # Serve paid routes without tickets (a node used directly, no gateway in front): anyone who
    # reaches it is served free and sets their own budget. Ignored when gateway_keys are given.
    insecure_no_gateway: bool = False
    # Longest a request may run on the node (seconds); past it the engine is stopped and the
    # signed receipt covers what was produced. A ticket's own deadline, if earlier, wins.
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    # How long the node keeps each request's newest signed usage receipt, and at most how many,
    # for a gateway that lost it (killed between the answer and its ledger write) to fetch it
    # from POST /v1/receipts when it finds the request orphaned. The retention must outlast a
    # gateway's lease plus its in-flight grace (by default 310 s + 300 s); 1,000 ids per query.
    # Each entry is under 1 KiB: the default maximum holds well under 100 MB.
    receipt_retention_seconds: float = Field(default=3600.0, gt=0)
    receipt_retention_entries: int = Field(default=100_000, ge=1)
    # The KEMs this node accepts for veil-v3 requests (VEIL_KEMS, a JSON list): post-quantum
    # ML-KEM-768 + X25519 only by default; "x25519" admits clients whose policy allows classical.
    kems: list[KemName] = Field(default_factory=lambda: list(DEFAULT_KEMS), min_length=1)
    # The CPU TEE: auto (configfs-tsm where it exists, else none), tdx, sev-snp or none.
    attestation: str = "auto"
    # GPU evidence beside it: auto (NVIDIA CC GPUs where present), nvidia (required) or off.
    gpu_attestation: str = "auto"
    # The release this node runs: its manifest and one signature (Ed25519 document or Sigstore
    # bundle), served in every evidence bundle for clients that pin releases.
    release_manifest: Path | None = None
    release_signature: Path | None = None
    release_bundle: Path | None = None
    # A dstack-style runtime event log (JSON list) whose replay gives the quote's RTMRs.
    event_log: Path | None = None
    # Where v3 request ids are remembered: "memory" (one node process) or redis://HOST:PORT/DB
    # (several node processes behind one gateway share it).
    replay_cache: str = "memory"
    # Bounds of the in-memory replay caches, and each tenant's (stack's) share of the v3 id space;
    # the Redis key prefix (the ticket ids live under PREFIX + "ticket:").
    replay_max_entries: int = Field(default=REPLAY_MAX_ENTRIES, ge=1)
    replay_max_per_tenant: int = Field(default=REPLAY_MAX_PER_TENANT, ge=1)
    replay_prefix: str = Field(default=REPLAY_PREFIX, min_length=1, max_length=200)
    # The in-memory bound of gateway ticket ids (their own cache, beside the v3 ids').
    ticket_replay_max_entries: int = Field(default=TICKET_REPLAY_MAX_ENTRIES, ge=1)
    replay_redis_timeout_seconds: float = Field(default=REPLAY_REDIS_TIMEOUT_SECONDS, gt=0)
    log_level: str = "info"
    # "text" for people, "json" for log pipelines: one object per line, never a body.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long requests and streams in flight may take to finish before they are cut.
    drain_timeout_seconds: int = Field(default=30, ge=1, le=3600)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"


class GatewaySettings(BaseSettings):
    """A gateway: its ledger, the nodes behind it, and its defaults for reservations."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    # sqlite+aiosqlite:///PATH (default: DATA_DIR/ledger.db) or postgresql+asyncpg://...
    database_url: str | None = None
    nodes: list[str] = Field(default_factory=list)
    # The attestation policy (JSON or TOML, the client's format) each node's evidence must pass,
    # checked when a node is added and at every health check. None: the strict default, under
    # which a TEE node passes only against pins or a signed release the policy names.
    node_policy: Path | None = None
    # Accept nodes whose evidence says "none" (no TEE: development only). `veil serve` sets it for
    # its own demo node; never for nodes that serve real prompts.
    insecure_nodes_no_tee: bool = False
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)
    lock_timeout_seconds: int = Field(default=60, ge=1, le=3600)
    # Units a lock holds when the caller does not say (not Atoma's blanket 8192): prompt and
    # completion; a chat naming no max_tokens still writes DEFAULT_CHAT_COMPLETION_TOKENS at most.
    default_chat_units: int = Field(default=1024, ge=1)
    default_embedding_units: int = Field(default=512, ge=1)
    default_image_units: int = Field(default=1024 * 1024, ge=1)
    health_interval_seconds: float = Field(default=10.0, gt=0)
    expire_interval_seconds: float = Field(default=5.0, gt=0)
    # How long the gateway waits for a node's answer; also the lease a claim gives a request,
    # renewed while it is served (a request is never forgiven for being long).
    node_timeout_seconds: float = Field(default=300.0, gt=0)
    # How overdue an in-flight lease may be (its gateway gone) before expiry releases its units.
    in_flight_grace_seconds: float = Field(default=300.0, ge=0)
    # Rate limits per user (``veil users set-limits`` overrides them per user; admin keys are not
    # limited). Defaults a single honest user never hits.
    default_requests_per_minute: int = Field(default=600, ge=1, le=2**31 - 1)
    default_concurrency: int = Field(default=32, ge=1, le=2**31 - 1)
    # A request the node refused (HTTP 4xx) counts as this many requests in the caller's minute.
    failed_request_weight: int = Field(default=5, ge=1, le=1000)
    # redis://HOST:PORT/DB: rate limits shared by every gateway on it (none: in process only).
    redis_url: str | None = None
    rate_limit_prefix: str = Field(default="veil:rl:", min_length=1, max_length=64)
    # Origins (scheme://host[:port], exactly; never "*") of consoles served elsewhere (`veil
    # console --gateway URL`) whose pages may call the API: CORS headers for them only. None by
    # default: no CORS headers at all. VEIL_CONSOLE_ORIGINS: comma-separated or a JSON list.
    console_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "info"
    # "text" for people, "json" for log pipelines: one object per line, never a body.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long requests and streams in flight may take to finish before they are cut.
    drain_timeout_seconds: int = Field(default=30, ge=1, le=3600)

    @field_validator("console_origins", mode="before")
    @classmethod
    def _console_origins(cls, value: Any) -> Any:
        from veil.gateway.cors import parse_origin

        if isinstance(value, str):  # VEIL_CONSOLE_ORIGINS
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else text.split(",")
            except json.JSONDecodeError:
                raise ValueError(f"{text[:80]!r} is not a JSON list") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of origins such as http://127.0.0.1:8090")
        return sorted({parse_origin(v) for v in value if v.strip()})

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'ledger.db'}"


# --- config files ---------------------------------------------------------------------------------

S = TypeVar("S", bound=BaseSettings)

# Setting names whose values are secrets, and URL passwords: masked by ``masked_settings``.
_SECRET_NAME = re.compile(r"(password|secret|token|api_key|private)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?=@)")


class ConfigFileError(ValueError):
    """A config file that cannot be used: missing, not TOML, or naming settings that do not exist."""


def read_config_file(path: Path, cls: type[BaseSettings]) -> dict[str, Any]:
    """The settings a TOML file gives, checked against ``cls``: an unknown name is an error (a typo
    in a config file must not silently fall back to a default)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ConfigFileError(
            f"config file {path} names unknown settings: {', '.join(unknown)} "
            f"(`veil config show` lists the known ones)"
        )
    return data


def load_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """``cls`` from, highest first: ``flags`` that are not None (the command line), ``VEIL_``
    environment variables, the TOML ``config_file``, the defaults. Raises ConfigFileError or
    pydantic's ValidationError."""
    from_file = read_config_file(config_file, cls) if config_file is not None else {}
    given = {k: v for k, v in flags.items() if v is not None}

    class Layered(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, from_file))

    Layered.__name__ = cls.__name__
    Layered.__qualname__ = cls.__qualname__
    return Layered(**given)


def mask_secret_value(name: str, value: Any) -> Any:
    """``value`` as ``veil config show`` prints it: secrets as ``***``, URL passwords hidden."""
    if value is None:
        return None
    if _SECRET_NAME.search(name):
        return "***"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>***", value)
    if isinstance(value, list):
        return [mask_secret_value(name, v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def masked_settings(settings: BaseSettings) -> dict[str, Any]:
    """Every effective setting, secrets masked."""
    return {
        name: mask_secret_value(name, getattr(settings, name))
        for name in type(settings).model_fields
    }
