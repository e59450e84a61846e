"""``veil gateway``: run the gateway alone, in front of nodes started with ``veil node``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from veil.commands.common import (
    ConfigFile,
    DataDir,
    DrainTimeout,
    LogFormatOption,
    check_data_dir,
    err,
    fail,
    load_or_fail,
)
from veil.extras import require_extras
from veil.logs import configure_logging

__all__ = ["check_ledger", "gateway", "gateway_public_key", "print_console_lines"]


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
    console_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--console-origin",
            help="Origin (scheme://host[:port]) of a console served elsewhere (veil console) whose "
            "page may call this API: CORS for it only (repeatable) [env: VEIL_CONSOLE_ORIGINS].",
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
        console_origins=console_origin or None,
        log_level=log_level,
        log_format=log_format,
        drain_timeout_seconds=drain_timeout,
    )
    configure_logging(settings.log_level, settings.log_format)
    check_data_dir(settings.data_dir)
    check_ledger(settings)
    err.print(
        f"Veil gateway on http://{settings.host}:{settings.port}  nodes: "
        f"{', '.join(settings.nodes) or 'none yet (veil nodes add URL)'}\n"
        f"Nodes must trust its ticket key: veil node --gateway-key {gateway_public_key(settings)}",
        highlight=False,
    )
    print_console_lines(settings)
    run_gateway(settings)


def print_console_lines(settings: Any) -> None:
    """The console bundle's SHA-256 (to compare with the release manifest) and the origins of
    consoles served elsewhere that this gateway answers (CORS)."""
    from veil.console.serve import bundle_line

    origins = (
        ", ".join(settings.console_origins) or "none (--console-origin or VEIL_CONSOLE_ORIGINS)"
    )
    err.print(f"{bundle_line()}\nConsoles elsewhere allowed (CORS): {origins}", highlight=False)


def gateway_public_key(settings: Any) -> str:
    from veil.gateway.identity import load_or_create_gateway_key, public_b64

    try:
        return public_b64(load_or_create_gateway_key(settings.data_dir))
    except OSError as exc:
        raise fail(f"cannot use data directory {settings.data_dir}: {exc.strerror}") from None


def check_ledger(settings: Any) -> None:
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
