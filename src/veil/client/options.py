"""The client's options, resolved once into one frozen object every part reads.

``ClientOptions.resolve(...)`` applies the environment (``VEIL_BASE_URL``, ``VEIL_API_KEY``) and
the defaults of ``veil.config``, checks the protocol and folds ``insecure_no_tee`` into the policy,
so ``Client``, ``AsyncClient``, both transports and the flow take one argument instead of seven.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, get_args

import httpx

from veil import config
from veil.attestation.policy import Policy

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BASE_URL",
    "DEFAULT_CHAT_MAX_TOKENS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PROTOCOL",
    "DEFAULT_TIMEOUT",
    "PROTOCOLS",
    "ClientArguments",
    "ClientOptions",
    "ProtocolName",
    "check_protocol",
    "gateway_root",
    "resolve_policy",
]

DEFAULT_BASE_URL = config.CLIENT_BASE_URL
DEFAULT_CHAT_MAX_TOKENS = config.DEFAULT_CHAT_COMPLETION_TOKENS
DEFAULT_TIMEOUT = httpx.Timeout(
    config.CLIENT_TIMEOUT_SECONDS, connect=config.CLIENT_CONNECT_TIMEOUT_SECONDS
)
DEFAULT_MAX_ATTEMPTS = config.CLIENT_MAX_ATTEMPTS
DEFAULT_BACKOFF = config.CLIENT_BACKOFF_SECONDS

ProtocolName = Literal["veil-v3", "atoma-v1"]
PROTOCOLS: tuple[ProtocolName, ...] = get_args(ProtocolName)
DEFAULT_PROTOCOL: ProtocolName = "veil-v3"


def check_protocol(protocol: str) -> ProtocolName:
    for known in PROTOCOLS:
        if protocol == known:
            return known
    if protocol == "veil-v2":
        raise ValueError("protocol veil-v2 was replaced by veil-v3 (the default): use veil-v3")
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")


def resolve_policy(policy: Policy | None, insecure_no_tee: bool) -> Policy:
    """``policy`` (default: the strict ``Policy()``), with ``allow_no_tee`` forced on if asked."""
    chosen = policy if policy is not None else Policy()
    if insecure_no_tee and not chosen.allow_no_tee:
        chosen = chosen.model_copy(update={"allow_no_tee": True})
    return chosen


def gateway_root(base_url: str) -> str:
    """``http://host:8080``, ``http://host:8080/`` and ``http://host:8080/v1`` -> the first."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class ClientArguments(TypedDict, total=False):
    """The keyword options of ``veil.Client``, its transports and ``openai_http_client``; their
    defaults and meaning are ``ClientOptions.resolve``'s."""

    timeout: float | httpx.Timeout
    max_attempts: int
    backoff: float
    protocol: ProtocolName
    policy: Policy | None
    insecure_no_tee: bool


@dataclass(frozen=True)
class ClientOptions:
    """Everything a confidential request depends on besides the request itself."""

    base_url: str  # the gateway's root, without /v1
    api_key: str | None
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    protocol: ProtocolName = DEFAULT_PROTOCOL
    policy: Policy = field(default_factory=Policy)

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        protocol: str = DEFAULT_PROTOCOL,
        policy: Policy | None = None,
        insecure_no_tee: bool = False,
    ) -> ClientOptions:
        """The options of ``veil.Client(...)``'s arguments (their defaults: ``veil.config``).

        ``protocol``: ``"veil-v3"`` (default: post-quantum, sealed to the node's ML-KEM-768 +
        X25519 key; a node without one is refused unless ``policy.allow_classical_kem``),
        or ``"atoma-v1"`` (the Atoma-compatible suite; the lock is attested all the
        same). ``policy``: what attestation evidence is acceptable (default ``Policy()``: a real
        TEE, TCB UpToDate, a post-quantum key). ``insecure_no_tee=True`` also accepts a
        node without any TEE (evidence "none"): **only for a local demo** - nothing then protects
        the node's keys or your plaintext on the node, and a hostile gateway can put itself in
        the node's place.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        return cls(
            base_url=gateway_root(base_url or os.environ.get("VEIL_BASE_URL") or DEFAULT_BASE_URL),
            api_key=api_key if api_key is not None else os.environ.get("VEIL_API_KEY"),
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            max_attempts=max_attempts,
            backoff=backoff,
            protocol=check_protocol(protocol),
            policy=resolve_policy(policy, insecure_no_tee),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return self.backoff * 2.0 ** (attempt - 2)

    def request(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        """A request to the gateway, authorised with ``api_key`` (default: the options' key)."""
        sent = {"content-type": "application/json", **(headers or {})}
        key = api_key or self.api_key
        if key:
            sent["authorization"] = f"Bearer {key}"
        extensions: dict[str, Any] = {"timeout": self.timeout.as_dict()}
        return httpx.Request(
            method, self.base_url + path, content=content, headers=sent, extensions=extensions
        )
