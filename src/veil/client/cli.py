"""``veil chat``, ``veil embed`` and ``veil models``: the SDK from a shell.

``register(app)`` adds the commands to the ``veil`` Typer app. Every command takes ``--base-url``
(env ``VEIL_BASE_URL``, default ``http://127.0.0.1:8080``) and ``--api-key`` (env ``VEIL_API_KEY``).
``chat`` and ``embed`` also take ``--protocol`` (``veil-v3``, the default and post-quantum, or
``atoma-v1``),
``--policy FILE`` (the attestation policy, JSON or TOML), ``--allow-classical-kem`` (env
``VEIL_ALLOW_CLASSICAL_KEM=1``: the policy's ``allow_classical_kem``) and ``--insecure-no-tee`` (env
``VEIL_INSECURE_NO_TEE=1``): accept a node without a TEE, for a local demo such as ``veil serve``
only. Without it a node whose evidence says "no TEE" is refused before anything is encrypted.
Answers go to stdout; the receipt line, ``--show-wire`` and errors go to stderr. An error is one
line, ``error: CODE: message``, and a non-zero exit status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.text import Text

from veil import config
from veil.client.errors import APIError, VeilClientError

if TYPE_CHECKING:
    from veil.client.sdk import Client

# The SDK (and with it ``openai``) is imported when a command runs, not when ``veil`` starts.
DEFAULT_BASE_URL = config.CLIENT_BASE_URL
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
SHOWN_CIPHERTEXT = 24  # base64 characters of ciphertext --show-wire prints

# No markup: JSON and server messages are printed as they are; soft wrap: an error is one line.
err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)

BaseUrl = Annotated[
    str, typer.Option("--base-url", envvar="VEIL_BASE_URL", help="The Veil gateway.")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="VEIL_API_KEY", help="Your API key.")
]


class WireProtocol(StrEnum):
    v3 = "veil-v3"
    v1 = "atoma-v1"


ProtocolOption = Annotated[
    WireProtocol,
    typer.Option(
        "--protocol",
        help="The suite to seal with (veil-v3: post-quantum; atoma-v1: Atoma-compatible).",
    ),
]
PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        metavar="FILE",
        help="Attestation policy (JSON or TOML): TCB statuses, pinned measurements.",
    ),
]
InsecureNoTee = Annotated[
    bool,
    typer.Option(
        "--insecure-no-tee",
        envvar="VEIL_INSECURE_NO_TEE",
        help="INSECURE: accept a node with no TEE (evidence 'none'). Local demos only "
        "(veil serve): nothing then protects your prompt on the node.",
    ),
]
AllowClassicalKem = Annotated[
    bool,
    typer.Option(
        "--allow-classical-kem",
        envvar="VEIL_ALLOW_CLASSICAL_KEM",
        help="Seal with X25519 alone to a node that names no post-quantum key (veil-v3 otherwise "
        "refuses it). A recording of such a request can be opened by a future quantum computer.",
    ),
]


def fail(code: str, message: str) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), f" {code}: {message}"))
    raise typer.Exit(1)


def _describe(exc: VeilClientError) -> tuple[str, str]:
    if isinstance(exc, APIError):
        code, _, message = str(exc).partition(": ")
        return code, message
    return exc.code, exc.message


@contextmanager
def _reported() -> Iterator[None]:
    """Turn the client's exceptions into the one-line error and exit status."""
    try:
        yield
    except VeilClientError as exc:
        fail(*_describe(exc))
    except ValueError as exc:
        from veil.attestation.policy import PolicyError  # loaded already if it is one

        fail("INVALID_POLICY" if isinstance(exc, PolicyError) else "INVALID_REQUEST", str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def require_key(api_key: str | None) -> str:
    if not api_key:
        fail("AUTH_ERROR", "no API key: pass --api-key or set VEIL_API_KEY")
    return api_key


def _wire_view(body: bytes) -> str:
    """The JSON a request carried, ciphertext shortened (it is long, and opaque anyway)."""
    try:
        document = json.loads(body)
    except ValueError:
        return f"<{len(body)} bytes>"
    if isinstance(document, dict) and isinstance(document.get("ciphertext"), str):
        text = document["ciphertext"]
        if len(text) > SHOWN_CIPHERTEXT:
            document["ciphertext"] = f"{text[:SHOWN_CIPHERTEXT]}... ({len(text)} base64 chars)"
    return json.dumps(document, indent=2)


class _ShowWire(httpx.BaseTransport):
    """The network, printing each request as the gateway will see it (--show-wire)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        err.print(f"--- the gateway saw: {request.method} {request.url.path}")
        if request.method != "GET":
            err.print(_wire_view(request.read()))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@contextmanager
def _client(
    base_url: str,
    api_key: str | None,
    show_wire: bool = False,
    protocol: WireProtocol = WireProtocol.v3,
    policy_file: Path | None = None,
    insecure_no_tee: bool = False,
    allow_classical_kem: bool = False,
) -> Iterator[Client]:
    from veil.attestation.policy import Policy
    from veil.client.options import check_protocol
    from veil.client.sdk import Client

    policy = Policy.load(policy_file) if policy_file is not None else None
    if allow_classical_kem:
        policy = (policy or Policy()).model_copy(update={"allow_classical_kem": True})
    with Client(
        base_url,
        api_key,
        transport=_ShowWire() if show_wire else None,
        protocol=check_protocol(protocol.value),
        policy=policy,
        insecure_no_tee=insecure_no_tee,
    ) as client:
        yield client


def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Chat model.")] = DEFAULT_CHAT_MODEL,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print as it comes.")] = True,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    show_wire: Annotated[
        bool, typer.Option("--show-wire", help="Show what the gateway sees next to what you sent.")
    ] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    protocol: ProtocolOption = WireProtocol.v3,
    policy: PolicyOption = None,
    insecure_no_tee: InsecureNoTee = False,
    allow_classical_kem: AllowClassicalKem = False,
) -> None:
    """Ask a chat model, end-to-end encrypted; prints a verified receipt to stderr."""
    from veil.client.plan import chat_body

    key = require_key(api_key)
    body = chat_body(model, [{"role": "user", "content": prompt}], stream, max_tokens, {})
    if show_wire:
        err.print("--- you sent (plaintext; encrypted on this machine before sending)")
        err.print(json.dumps(body, indent=2, ensure_ascii=False))
    with (
        _reported(),
        _client(
            base_url, key, show_wire, protocol, policy, insecure_no_tee, allow_classical_kem
        ) as client,
    ):
        messages = body["messages"]
        if stream:
            chunks = client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, stream=True
            )
            with chunks:
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        sys.stdout.write(chunk.choices[0].delta.content)
                        sys.stdout.flush()
            receipt = chunks.veil
        else:
            answer = client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens
            )
            sys.stdout.write(answer.choices[0].message.content or "")
            receipt = answer.veil
        sys.stdout.write("\n")
        sys.stdout.flush()
        err.print(receipt.summary())


def _abbreviated(vector: list[float], keep: int = 3) -> str:
    if len(vector) <= 2 * keep:
        return "[" + ", ".join(f"{v:.4f}" for v in vector) + "]"
    head = ", ".join(f"{v:.4f}" for v in vector[:keep])
    tail = ", ".join(f"{v:.4f}" for v in vector[-keep:])
    return f"[{head}, ..., {tail}]"


def embed(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to embed.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Embeddings model.")
    ] = DEFAULT_EMBED_MODEL,
    as_json: Annotated[bool, typer.Option("--json", help="The full response as JSON.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    protocol: ProtocolOption = WireProtocol.v3,
    policy: PolicyOption = None,
    insecure_no_tee: InsecureNoTee = False,
    allow_classical_kem: AllowClassicalKem = False,
) -> None:
    """Embed texts, end-to-end encrypted; vectors on stdout (abbreviated unless --json)."""
    key = require_key(api_key)
    with (
        _reported(),
        _client(
            base_url, key, False, protocol, policy, insecure_no_tee, allow_classical_kem
        ) as client,
    ):
        result = client.embeddings.create(model=model, input=list(texts))
        if as_json:
            sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        else:
            for item in result.data:
                sys.stdout.write(
                    f"{item.index}: {len(item.embedding)} dims {_abbreviated(item.embedding)}\n"
                )
        sys.stdout.flush()
        err.print(result.veil.summary())


def models(base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """List the models the gateway serves."""
    with _reported(), _client(base_url, api_key) as client:
        for model in client.models.list():
            kind = getattr(model, "kind", None)
            sys.stdout.write(f"{model.id}\t{kind}\n" if kind else f"{model.id}\n")


def register(app: typer.Typer) -> None:
    """Add ``chat``, ``embed``, ``models`` and ``usage`` to the ``veil`` command."""
    app.command("chat")(chat)
    app.command("embed")(embed)
    app.command("models")(models)
    from veil.client.cli_usage import usage

    app.command("usage")(usage)
