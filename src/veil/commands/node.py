"""``veil node``: run a confidential node; ``veil node rotate-key`` and ``veil node keys``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from veil.commands.common import (
    ConfigFile,
    DataDir,
    DrainTimeout,
    LogFormatOption,
    check_data_dir,
    err,
    fail,
    node_settings,
)
from veil.extras import require_extras
from veil.logs import configure_logging

node_app = typer.Typer(
    help="Run a confidential node, or manage its keys.", invoke_without_command=True
)


@node_app.callback()
def node(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="Prepared embedded models (default DATA_DIR/models; may be shared)."),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve MODEL from an OpenAI-compatible server: [chat:|embeddings:|images:]MODEL=URL"
            " (repeatable; plain MODEL=URL is chat).",
        ),
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded/--no-embedded", help="Serve the embedded models.")
    ] = True,
    gateway_key: Annotated[
        list[str] | None,
        typer.Option(
            help="Base64 Ed25519 key of a gateway whose tickets to honour (repeatable); paid "
            "requests without a valid ticket are refused.",
        ),
    ] = None,
    insecure_no_gateway: Annotated[
        bool | None,
        typer.Option(
            "--insecure-no-gateway",
            help="Serve paid routes to anyone, without gateway tickets (development only).",
        ),
    ] = None,
    attestation: Annotated[
        str | None,
        typer.Option(help="CPU TEE evidence: auto, tdx, sev-snp or none (development)."),
    ] = None,
    gpu_attestation: Annotated[
        str | None,
        typer.Option(help="GPU evidence in the same bundle: auto, nvidia (required) or off."),
    ] = None,
    release_manifest: Annotated[
        Path | None,
        typer.Option(help="The release manifest this node runs, served with its evidence."),
    ] = None,
    release_signature: Annotated[
        Path | None,
        typer.Option(help="The manifest's Ed25519 signature document (veil release sign)."),
    ] = None,
    release_bundle: Annotated[
        Path | None, typer.Option(help="The manifest's Sigstore bundle (keyless CI signing).")
    ] = None,
    event_log: Annotated[
        Path | None,
        typer.Option(help="Runtime event log (dstack JSON) whose replay gives the RTMRs."),
    ] = None,
    replay_cache: Annotated[
        str | None,
        typer.Option(
            help="Where v3 request ids are remembered: memory, or redis://HOST:PORT/DB "
            "shared by several node processes."
        ),
    ] = None,
    kem: Annotated[
        list[str] | None,
        typer.Option(
            "--kem",
            help="A KEM veil-v3 requests may be sealed with, repeatable: mlkem768-x25519 "
            "(post-quantum, the default) and/or x25519 (classical) [env: VEIL_KEMS, a JSON list].",
        ),
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Largest accepted body.")] = None,
    key_grace_seconds: Annotated[
        float | None, typer.Option(help="How long the previous key stays valid after rotation.")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info [default], warning, error")
    ] = None,
    log_format: LogFormatOption = None,
    drain_timeout: DrainTimeout = None,
    config: ConfigFile = None,
) -> None:
    """Start a node (confidential + plain OpenAI routes) on the embedded models and/or upstreams."""
    require_extras("node", "node")
    if ctx.invoked_subcommand is not None:
        return
    from veil.node.boot import BootError, build_engines
    from veil.node.keyring import Keyring
    from veil.serving import serve as serve_app

    settings = node_settings(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        models_dir=models_dir,
        upstreams=upstream or None,
        embedded=embedded,
        gateway_keys=gateway_key or None,
        insecure_no_gateway=insecure_no_gateway,
        attestation=attestation,
        gpu_attestation=gpu_attestation,
        release_manifest=release_manifest,
        release_signature=release_signature,
        release_bundle=release_bundle,
        event_log=event_log,
        replay_cache=replay_cache,
        kems=kem or None,
        max_body_bytes=max_body_bytes,
        key_grace_seconds=key_grace_seconds,
        log_level=log_level,
        log_format=log_format,
        drain_timeout_seconds=drain_timeout,
    )
    configure_logging(settings.log_level, settings.log_format)
    check_data_dir(settings.data_dir)
    if not settings.gateway_keys and not settings.insecure_no_gateway:
        raise fail(
            "a node serves paid routes only with gateway tickets: give --gateway-key KEY (the "
            "key `veil gateway` prints), or --insecure-no-gateway to serve anyone without tickets"
        )
    from veil.attestation.evidence import AttestationError
    from veil.node.app import create_app

    try:
        engines = build_engines(settings, progress=True)
        keyring = Keyring(settings.data_dir, settings.key_grace_seconds)
        node_app_ = create_app(settings, engines, keyring)
    except (BootError, AttestationError) as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:  # an unknown --attestation or --replay-cache
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot use data directory {settings.data_dir}: {exc.strerror}") from None

    err.print(
        f"Veil node on http://{settings.host}:{settings.port}  key {keyring.current.key_id}  "
        f"models: {', '.join(engines.model_ids()) or 'none'}",
        highlight=False,
    )
    serve_app(
        node_app_,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_format=settings.log_format,
        drain_timeout=settings.drain_timeout_seconds,
    )


@node_app.command("rotate-key")
def rotate_key(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a new current X25519 key; the old one stays accepted for the grace window."""
    from veil.node.keyring import Keyring

    settings = node_settings(data_dir=data_dir)
    check_data_dir(settings.data_dir)
    keyring = Keyring(settings.data_dir, settings.key_grace_seconds)
    old = keyring.current.key_id
    new = keyring.rotate()
    result = {"previous_key_id": old, "current_key_id": new.key_id}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"rotated: {old} -> {new.key_id} (a running node picks this up at once)")


@node_app.command("keys")
def show_keys(data_dir: DataDir = None) -> None:
    """Print the node's public keys and key ids as JSON."""
    from veil.node.keyring import Keyring

    settings = node_settings(data_dir=data_dir)
    check_data_dir(settings.data_dir)
    typer.echo(
        json.dumps(Keyring(settings.data_dir, settings.key_grace_seconds).describe(), indent=2)
    )
