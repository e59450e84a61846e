"""``veil nodes``: add, list, drain, undrain and remove nodes through a running gateway's admin API.

Adding a node means the gateway checks it (keys, tickets, attestation under its policy) before
listing it in the ledger, where every gateway on the database picks the change up within seconds.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from veil.gateway.cli_output import AsJson, emit, err, json_or_none
from veil.wire.errors import error_from_body

__all__ = ["admin_call", "nodes_app"]

nodes_app = typer.Typer(
    help="Nodes behind the gateways: add, list, drain, remove (through a gateway's admin API).",
    no_args_is_help=True,
)

BaseUrl = Annotated[
    str, typer.Option("--base-url", envvar="VEIL_BASE_URL", help="The gateway to talk to.")
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=["VEIL_ADMIN_KEY", "VEIL_API_KEY"],
        help="An admin API key [env: VEIL_ADMIN_KEY, else VEIL_API_KEY].",
        show_envvar=False,
    ),
]
NodeUrl = Annotated[str, typer.Argument(help="The node's URL, e.g. http://10.0.0.5:8081.")]
DEFAULT_GATEWAY = "http://127.0.0.1:8080"


def admin_call(
    base_url: str, api_key: str | None, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One admin API call; any failure is one ``error: CODE: message`` line and exit 1."""
    if not api_key:
        err.print(
            "[bold red]error:[/] AUTH_ERROR: give --api-key or set VEIL_ADMIN_KEY (an admin key)",
            highlight=False,
        )
        raise typer.Exit(1)
    try:
        response = httpx.request(
            method,
            f"{base_url.rstrip('/').removesuffix('/v1')}{path}",
            json=body,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=60,  # adding a node waits for its checks (evidence verification)
        )
    except httpx.HTTPError as exc:
        err.print(
            f"[bold red]error:[/] cannot reach {base_url}: {type(exc).__name__}", highlight=False
        )
        raise typer.Exit(1) from None
    if response.status_code not in (200, 201):
        failure = error_from_body(response.status_code, json_or_none(response))
        err.print(f"[bold red]error:[/] {failure.code}: {failure.message}", highlight=False)
        raise typer.Exit(1)
    document: dict[str, Any] = response.json()
    return document


def _node_line(node: dict[str, Any]) -> str:
    verdict = node.get("attestation") or {}
    if verdict:
        attested = f"{verdict.get('format') or '?'} {'pass' if verdict.get('ok') else 'FAIL'}"
    else:
        attested = "not checked"
    health = "healthy" if node["healthy"] else f"unhealthy ({node.get('reason') or '?'})"
    models = ",".join(node.get("models") or {}) or "-"
    return (
        f"{node['node_small_id']:>4}  {node['url']:<28} {node['state']:<9} {health}  "
        f"key {node.get('key_id') or '-'}  models {models}  attestation {attested}  "
        f"release {node.get('release') or '-'}  in flight {node.get('live_reservations', 0)}"
    )


@nodes_app.command("add")
def nodes_add(
    url: NodeUrl,
    base_url: BaseUrl = DEFAULT_GATEWAY,
    api_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Check a node (keys, tickets, attestation under the gateway's policy) and route to it."""
    node = admin_call(base_url, api_key, "POST", "/admin/nodes", {"url": url})
    emit(node, as_json, f"added\n{_node_line(node)}")


@nodes_app.command("list")
def nodes_list(
    base_url: BaseUrl = DEFAULT_GATEWAY, api_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """The nodes, with health, key id, models, the gateway's attestation verdict and release."""
    listed = admin_call(base_url, api_key, "GET", "/admin/nodes")
    nodes = listed["nodes"]
    emit(listed, as_json, "\n".join(_node_line(n) for n in nodes) or "no nodes")


@nodes_app.command("drain")
def nodes_drain(
    url: NodeUrl,
    base_url: BaseUrl = DEFAULT_GATEWAY,
    api_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """No new locks to URL; requests and streams in flight finish and settle."""
    node = admin_call(base_url, api_key, "POST", "/admin/nodes/drain", {"url": url})
    emit(node, as_json, f"draining\n{_node_line(node)}")


@nodes_app.command("undrain")
def nodes_undrain(
    url: NodeUrl,
    base_url: BaseUrl = DEFAULT_GATEWAY,
    api_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """New locks go to a drained URL again."""
    node = admin_call(base_url, api_key, "POST", "/admin/nodes/undrain", {"url": url})
    emit(node, as_json, f"active\n{_node_line(node)}")


@nodes_app.command("remove")
def nodes_remove(
    url: NodeUrl,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Remove even if not drained or still busy (held locks expire)."
        ),
    ] = False,
    base_url: BaseUrl = DEFAULT_GATEWAY,
    api_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Take a drained node with nothing in flight off every gateway."""
    node = admin_call(
        base_url, api_key, "POST", "/admin/nodes/remove", {"url": url, "force": force}
    )
    emit(node, as_json, f"removed {node['url']}")
