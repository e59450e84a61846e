"""``veil gateway``, ``veil users``, ``veil stacks`` and ``veil nodes``: run the gateway and manage
its ledger.

Account commands talk to the ledger database directly (``--data-dir`` or ``--database-url``), so
they work with or without a running gateway; the admin HTTP API offers the same operations.
Node commands talk to a running gateway's admin API (``--base-url``, admin ``--api-key``): adding a
node means the gateway checks it (keys, tickets, attestation under its policy) before listing it in
the ledger, where every gateway on the database picks the change up within seconds.

The ``veil nodes`` group lives in ``nodes_cli``; ``cli_output`` holds how the commands print.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer

from veil.config import GatewaySettings
from veil.gateway.app import stack_json
from veil.gateway.cli_output import AsJson, emit, err, json_or_none
from veil.gateway.nodes_cli import admin_call, nodes_app
from veil.wire.errors import VeilError, error_from_body

__all__ = [
    "admin_call",
    "gateway_settings",
    "nodes_app",
    "run_gateway",
    "stacks_app",
    "users_app",
    "with_ledger",
]

T = TypeVar("T")

users_app = typer.Typer(help="Users and their API keys.", no_args_is_help=True)
stacks_app = typer.Typer(
    help="Stacks: prepaid compute units per user and model.", no_args_is_help=True
)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the SQLite ledger lives [env: VEIL_DATA_DIR]."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://... [env: VEIL_DATABASE_URL]",
    ),
]


def gateway_settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})


def with_ledger(
    data_dir: Path | None, database_url: str | None, work: Callable[[Any], Awaitable[T]]
) -> T:
    from veil.gateway.ledger import Ledger

    settings = gateway_settings(data_dir=data_dir, database_url=database_url)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> T:
        ledger = await Ledger.open(settings.resolved_database_url)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    try:
        return asyncio.run(run())
    except VeilError as exc:
        err.print(f"[bold red]error:[/] {exc.code}: {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot open the ledger: {exc}", highlight=False)
        raise typer.Exit(1) from None


RequestsPerMinute = Annotated[
    int | None,
    typer.Option(
        "--requests-per-minute",
        min=0,
        max=2**31 - 1,
        help="Requests per sliding minute for this user (0: the gateway default).",
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        min=0,
        max=2**31 - 1,
        help="Requests in flight at once for this user (0: the gateway default).",
    ),
]


def limits_data(user: Any) -> dict[str, Any]:
    """A user's own limits (None: the default) and the limits in force with this configuration
    (the defaults come from the same settings the gateway reads: VEIL_DEFAULT_...)."""
    settings = gateway_settings()
    return {
        "requests_per_minute": user.requests_per_minute,
        "concurrency": user.concurrency,
        "effective": {
            "requests_per_minute": user.requests_per_minute or settings.default_requests_per_minute,
            "concurrency": user.concurrency or settings.default_concurrency,
        },
    }


def _limits_line(data: dict[str, Any]) -> str:
    effective = data["effective"]
    own = {k: "" if data[k] else " (default)" for k in ("requests_per_minute", "concurrency")}
    return (
        f"requests per minute {effective['requests_per_minute']}{own['requests_per_minute']}, "
        f"concurrency {effective['concurrency']}{own['concurrency']}"
    )


@users_app.command("create")
def users_create(
    name: str,
    admin: Annotated[bool, typer.Option(help="Allow the admin HTTP API.")] = False,
    requests_per_minute: RequestsPerMinute = None,
    concurrency: Concurrency = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create a user and print its API key (shown once; only its hash is stored)."""
    user, key = with_ledger(
        data_dir,
        database_url,
        lambda ledger: ledger.create_user(
            name,
            admin=admin,
            requests_per_minute=requests_per_minute or None,
            concurrency=concurrency or None,
        ),
    )
    data = {"user": user.name, "api_key": key, **limits_data(user)}
    emit(data, as_json, f"user {user.name}\napi key {key}\n{_limits_line(data)}")


@users_app.command("set-limits")
def users_set_limits(
    name: str,
    requests_per_minute: RequestsPerMinute = None,
    concurrency: Concurrency = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Set a user's rate limits (a limit not given is left as it is); every gateway applies them
    from the user's next request."""
    if requests_per_minute is None and concurrency is None:
        err.print(
            "[bold red]error:[/] INVALID_BODY: give --requests-per-minute and/or --concurrency",
            highlight=False,
        )
        raise typer.Exit(1)
    user = with_ledger(
        data_dir,
        database_url,
        lambda ledger: ledger.set_limits(
            name, requests_per_minute=requests_per_minute, concurrency=concurrency
        ),
    )
    data = {"user": user.name, **limits_data(user)}
    emit(data, as_json, f"user {user.name}: {_limits_line(data)}")


@users_app.command("revoke")
def users_revoke(
    key_or_prefix: Annotated[str, typer.Argument(help="The API key, or its 12-character prefix.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Revoke an API key: it stops working at once."""
    revoked = with_ledger(
        data_dir, database_url, lambda ledger: ledger.revoke_api_key(key_or_prefix)
    )
    if not revoked:
        err.print("[bold red]error:[/] NOT_FOUND: no such API key", highlight=False)
        raise typer.Exit(1)
    emit({"revoked": True}, as_json, "revoked")


@stacks_app.command("create")
def stacks_create(
    user: Annotated[str, typer.Option(help="Owner of the stack.")],
    model: Annotated[str, typer.Option(help="Model the units pay for.")],
    units: Annotated[int, typer.Option(help="Compute units in the stack.", min=1)],
    price_per_million: Annotated[int, typer.Option(help="Price per million units.", min=0)] = 0,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create a stack of UNITS compute units for USER on MODEL."""
    stack = with_ledger(
        data_dir,
        database_url,
        lambda ledger: ledger.create_stack(user, model, units, price_per_million=price_per_million),
    )
    data = stack_json(stack)
    emit(data, as_json, f"stack {stack.id}: {stack.total_units} units of {model} for {user}")


def _stack_line(data: dict[str, Any]) -> str:
    return (
        f"{data['stack_small_id']:>6}  {data['user']:<16} {data['model']:<24} "
        f"total {data['total_units']:>12}  reserved {data['reserved_units']:>10}  "
        f"used {data['used_units']:>12}  free {data['free_units']:>12}  {data['state']}"
    )


@stacks_app.command("list")
def stacks_list(
    user: Annotated[str | None, typer.Option(help="Only this user's stacks.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """List stacks with their units total / reserved / used / free."""
    stacks = [
        stack_json(s)
        for s in with_ledger(data_dir, database_url, lambda ledger: ledger.list_stacks(user))
    ]
    emit({"stacks": stacks}, as_json, "\n".join(_stack_line(s) for s in stacks) or "no stacks")


@stacks_app.command("show")
def stacks_show(
    stack_id: Annotated[
        int | None, typer.Argument(help="A stack id (ledger); omit for your own stacks (gateway).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    base_url: Annotated[
        str, typer.Option(envvar="VEIL_BASE_URL", help="Gateway, for your own stacks.")
    ] = "http://127.0.0.1:8080",
    api_key: Annotated[
        str | None, typer.Option(envvar="VEIL_API_KEY", help="Your API key, for your own stacks.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """One stack from the ledger (by ID), or, without ID, the caller's own stacks and units left."""
    if stack_id is not None:
        data = stack_json(
            with_ledger(data_dir, database_url, lambda ledger: ledger.get_stack(stack_id))
        )
        emit(data, as_json, _stack_line(data))
        return
    if not api_key:
        err.print(
            "[bold red]error:[/] AUTH_ERROR: give --api-key or set VEIL_API_KEY", highlight=False
        )
        raise typer.Exit(1)
    try:
        response = httpx.get(
            f"{base_url.rstrip('/').removesuffix('/v1')}/v1/stacks",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        err.print(
            f"[bold red]error:[/] cannot reach {base_url}: {type(exc).__name__}", highlight=False
        )
        raise typer.Exit(1) from None
    if response.status_code != 200:
        failure = error_from_body(response.status_code, json_or_none(response))
        err.print(f"[bold red]error:[/] {failure.code}: {failure.message}", highlight=False)
        raise typer.Exit(1)
    stacks = response.json()["stacks"]
    emit({"stacks": stacks}, as_json, "\n".join(_stack_line(s) for s in stacks) or "no stacks")


@stacks_app.command("top-up")
def stacks_top_up(
    stack_id: int,
    units: Annotated[int, typer.Option(help="Units to add.", min=1)],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: AsJson = False,
) -> None:
    """Add UNITS to a stack."""
    data = stack_json(
        with_ledger(data_dir, database_url, lambda ledger: ledger.top_up(stack_id, units))
    )
    emit(data, as_json, _stack_line(data))


def print_admin_key(key: str) -> None:
    err.print(
        f"\n[bold]Admin API key[/] (shown once, only its hash is stored):\n  {key}\n",
        highlight=False,
    )


def run_gateway(
    settings: GatewaySettings,
    bootstrap_units: int = 0,
    on_admin_key: Callable[[str], None] = print_admin_key,
) -> None:
    from veil.gateway.app import create_gateway_app
    from veil.gateway.identity import load_or_create_gateway_key
    from veil.serving import serve  # it configures logging (settings.log_format) before serving

    key = load_or_create_gateway_key(settings.data_dir)
    app = create_gateway_app(
        settings, key, on_admin_key=on_admin_key, bootstrap_units=bootstrap_units
    )
    serve(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_format=settings.log_format,
        drain_timeout=settings.drain_timeout_seconds,
    )
