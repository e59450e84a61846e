"""The ``veil`` command.

Every command a client user runs (chat, embed, models, usage, attest, release) works in a plain
``pip install veil``; the server commands (serve, node, gateway, users, stacks, bench) import their
modules only when they run, after ``veil.extras`` has checked that their extra is installed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic_settings import BaseSettings
from rich.console import Console

from veil.config import NodeSettings
from veil.extras import SERVE_EXTRAS, VeilGroup, require_extras
from veil.logs import configure_logging

S = TypeVar("S", bound=BaseSettings)

err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


app = typer.Typer(
    cls=VeilGroup,
    help="Veil: confidential AI inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(
    help="Run a confidential node, or manage its keys.", invoke_without_command=True
)
app.add_typer(node_app, name="node")
config_app = typer.Typer(
    help="Settings: what a node or gateway would run with.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


def _mount_client_commands() -> None:
    from veil.client.cli import register

    register(app)


_mount_client_commands()

# `veil serve` is a local demo: on first start the admin gets this many units on every model.
DEMO_STACK_UNITS = 1_000_000
DEMO_QUESTION = "What is the capital of France? Answer in one word."

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Keys and prepared models live here [env: VEIL_DATA_DIR]."),
]


def _settings(config: Path | None = None, **overrides: object) -> NodeSettings:
    """Node settings: flags (``overrides`` not None) over ``VEIL_`` variables over ``config``."""
    return load_or_fail(NodeSettings, config, **overrides)


def load_or_fail(cls: type[S], config: Path | None, **overrides: object) -> S:
    """``veil.config.load_settings``, with a bad config file or value as one ``error:`` line."""
    from pydantic import ValidationError

    from veil.config import ConfigFileError, load_settings
    from veil.web import describe_validation_error

    try:
        return load_settings(cls, config, **overrides)
    except ConfigFileError as exc:
        raise fail(str(exc), 2) from None
    except ValidationError as exc:
        where = f" (from {config}, flags or VEIL_ variables)" if config else ""
        raise fail(f"invalid settings{where}: {describe_validation_error(exc)}", 2) from None


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file of settings (the names `veil config show` prints); flags and VEIL_ "
        "variables override it.",
    ),
]
LogFormatOption = Annotated[
    str | None, typer.Option(help="text, or json: one JSON object per line (never a body).")
]
DrainTimeout = Annotated[
    int | None,
    typer.Option(
        "--drain-timeout",
        help="On SIGTERM, seconds that requests and streams in flight get to finish [30].",
    ),
]


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"\0" * 4096)  # not empty: an empty file fits on a full disk
        probe.unlink()
    except OSError as exc:
        raise fail(f"data directory {path} is not writable ({exc.strerror})") from None


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
            help="Where v2 request ids are remembered: memory, or redis://HOST:PORT/DB "
            "shared by several node processes."
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

    settings = _settings(
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
        max_body_bytes=max_body_bytes,
        key_grace_seconds=key_grace_seconds,
        log_level=log_level,
        log_format=log_format,
        drain_timeout_seconds=drain_timeout,
    )
    configure_logging(settings.log_level, settings.log_format)
    _check_data_dir(settings.data_dir)
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

    settings = _settings(data_dir=data_dir)
    _check_data_dir(settings.data_dir)
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

    settings = _settings(data_dir=data_dir)
    _check_data_dir(settings.data_dir)
    typer.echo(
        json.dumps(Keyring(settings.data_dir, settings.key_grace_seconds).describe(), indent=2)
    )


@config_app.command("show")
def config_show(
    component: Annotated[str, typer.Argument(help="node or gateway")],
    config: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings (defaults, then CONFIG, then VEIL_ variables), secrets masked."""
    from veil.config import GatewaySettings, masked_settings

    classes: dict[str, type[BaseSettings]] = {"node": NodeSettings, "gateway": GatewaySettings}
    if component not in classes:
        raise fail(f"unknown component {component!r}: give node or gateway", 2)
    effective = masked_settings(load_or_fail(classes[component], config))
    if as_json:
        typer.echo(json.dumps(effective, indent=2, default=str))
        return
    for name, value in effective.items():
        typer.echo(f"{name} = {json.dumps(value, default=str)}")


@app.command("gateway")
def gateway(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="sqlite+aiosqlite:///PATH (default DATA_DIR/ledger.db) or "
            "postgresql+asyncpg://USER@HOST:PORT/DB"
        ),
    ] = None,
    node_url: Annotated[
        list[str] | None,
        typer.Option(
            "--node", help="URL of a node to route to (repeatable; or later: veil nodes add)."
        ),
    ] = None,
    node_policy: Annotated[
        Path | None,
        typer.Option(
            help="Attestation policy (JSON or TOML, as clients pin) nodes must pass to be routed to."
        ),
    ] = None,
    insecure_nodes_no_tee: Annotated[
        bool | None,
        typer.Option(
            "--insecure-nodes-no-tee",
            help="Route to nodes without a TEE (development only; clients still refuse them).",
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="redis://HOST:PORT/DB: rate limits shared by every gateway on it "
            "[env: VEIL_REDIS_URL]; none: per process."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info [default], warning, error")
    ] = None,
    log_format: LogFormatOption = None,
    drain_timeout: DrainTimeout = None,
    config: ConfigFile = None,
) -> None:
    """Run the gateway alone, in front of nodes started with `veil node`."""
    require_extras("gateway", "gateway")
    from veil.config import GatewaySettings
    from veil.gateway.cli import run_gateway

    settings = load_or_fail(
        GatewaySettings,
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        nodes=node_url or None,
        node_policy=node_policy,
        insecure_nodes_no_tee=insecure_nodes_no_tee,
        redis_url=redis_url,
        log_level=log_level,
        log_format=log_format,
        drain_timeout_seconds=drain_timeout,
    )
    configure_logging(settings.log_level, settings.log_format)
    _check_data_dir(settings.data_dir)
    _check_ledger(settings)
    err.print(
        f"Veil gateway on http://{settings.host}:{settings.port}  nodes: "
        f"{', '.join(settings.nodes) or 'none yet (veil nodes add URL)'}\n"
        f"Nodes must trust its ticket key: veil node --gateway-key {_gateway_public_key(settings)}",
        highlight=False,
    )
    run_gateway(settings)


def _gateway_public_key(settings: Any) -> str:
    from veil.gateway.identity import load_or_create_gateway_key, public_b64

    try:
        return public_b64(load_or_create_gateway_key(settings.data_dir))
    except OSError as exc:
        raise fail(f"cannot use data directory {settings.data_dir}: {exc.strerror}") from None


def _check_ledger(settings: Any) -> None:
    """Open (and migrate) the ledger once before serving: a database that cannot be used (disk
    full, server unreachable) is one error line here, not a traceback from the server's startup."""
    import asyncio

    from sqlalchemy.engine import make_url

    from veil.gateway.ledger import Ledger

    async def probe() -> None:
        await (await Ledger.open(settings.resolved_database_url)).close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        where = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()
        detail = reason[0] if reason else type(exc).__name__
        raise fail(f"cannot open the ledger database {where}: {detail}") from None


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    node_port: Annotated[int, typer.Option(help="Port of the embedded node (loopback).")] = 8081,
    data_dir: DataDir = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Gateway + one embedded node on the embedded models: Veil with no configuration."""
    require_extras("serve", *SERVE_EXTRAS)
    import subprocess

    from veil.gateway.cli import gateway_settings, run_gateway

    settings = gateway_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        log_level=log_level,
        nodes=[f"http://127.0.0.1:{node_port}"],
        # The demo node has no TEE: this gateway routes to it, and to nothing else it was not
        # given (clients still refuse it unless told --insecure-no-tee).
        insecure_nodes_no_tee=True,
    )
    _check_data_dir(settings.data_dir)
    _check_ledger(settings)
    node_dir = settings.data_dir / "node"
    command = [
        sys.executable,
        "-m",
        "veil.cli",
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        str(node_port),
        "--data-dir",
        str(node_dir),
        "--gateway-key",
        _gateway_public_key(settings),
        "--log-level",
        log_level,
    ]
    # A SIGTERM (uvicorn re-raises it after its shutdown) must run the `finally` below, and the
    # node must not outlive us even if we are killed outright: no orphan holding the node port.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    child = subprocess.Popen(command, preexec_fn=_die_with_parent())  # noqa: S603
    try:
        if not _wait_for(f"http://127.0.0.1:{node_port}/health", child):
            raise fail("the embedded node did not start; see its output above")
        err.print(
            "[bold yellow]Local demo:[/] this machine has no TEE, so the node's attestation "
            "says 'none'. Veil clients refuse that unless you opt in: pass --insecure-no-tee "
            "(or set VEIL_INSECURE_NO_TEE=1).",
            highlight=False,
        )
        run_gateway(
            settings,
            bootstrap_units=DEMO_STACK_UNITS,
            on_admin_key=lambda key: _print_demo_key(key, host, port),
        )
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


@app.command("bench")
def bench(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="The Markdown report (default: docs/BENCHMARKS.md in the checkout)."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer iterations and a short load run (minutes).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run just this benchmark (repeatable), e.g. crypto."),
    ] = None,
) -> None:
    """Run every benchmark in the checkout's benchmarks/ and write the report (docs/BENCHMARKS.md)."""
    require_extras("bench", *SERVE_EXTRAS)
    from veil.bench import run_all

    raise typer.Exit(run_all(out, quick, only or []))


def _demo_shell_lines(key: str, host: str, port: int) -> list[str]:
    """What a user of ``veil serve`` pastes into the client's shell: the key, the one opt-out this
    TEE-less demo needs, and the gateway's URL when it is not the client's default."""
    lines = [f"export VEIL_API_KEY={key}"]
    if (host, port) != ("127.0.0.1", 8080):
        reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in reachable:
            reachable = f"[{reachable}]"
        lines.append(f"export VEIL_BASE_URL=http://{reachable}:{port}")
    lines.append(
        "export VEIL_INSECURE_NO_TEE=1   # this demo node has no TEE: accept it for this gateway only"
    )
    return lines


def _print_demo_key(key: str, host: str, port: int) -> None:
    """The admin key, once, inside the lines to paste (markup off: they are copied verbatim)."""
    err.print(
        "\n[bold]Admin API key[/] (shown once, only its hash is stored). "
        "Paste these lines into the shell you run the client in:",
        highlight=False,
    )
    for line in _demo_shell_lines(key, host, port):
        err.print(f"  {line}", markup=False, highlight=False)
    err.print("Then ask:", highlight=False)
    # "in one word": a 135M model answers a bare question less reliably (see CHAT_MODEL_SAMPLING).
    err.print(f"  veil chat {shlex.quote(DEMO_QUESTION)}\n", markup=False, highlight=False)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> Callable[[], None] | None:
    """For a child process on Linux: have the kernel SIGTERM it when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:  # runs in the child, between fork and exec
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _wait_for(url: str, child: Any) -> bool:
    """Wait for the node to answer; bounded by the child process being alive (model load)."""
    import time

    import httpx

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


if __name__ == "__main__":  # pragma: no cover
    app()
