"""``veil serve``: the gateway and one embedded node in one process tree, the local demo."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from veil.commands.common import DataDir, check_data_dir, err, fail, load_or_fail
from veil.commands.gateway import check_ledger, gateway_public_key, print_console_lines
from veil.extras import SERVE_EXTRAS, require_extras

__all__ = ["DEMO_QUESTION", "DEMO_STACK_UNITS", "serve"]

# `veil serve` is a local demo: on first start the admin gets this many units on every model.
DEMO_STACK_UNITS = 1_000_000
DEMO_QUESTION = "What is the capital of France? Answer in one word."


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

    from veil.config import GatewaySettings
    from veil.gateway.cli import run_gateway

    # VEIL_ variables (e.g. VEIL_CONSOLE_ORIGINS) below these flags; a bad one is one error line.
    settings = load_or_fail(
        GatewaySettings,
        None,
        host=host,
        port=port,
        data_dir=data_dir,
        log_level=log_level,
        nodes=[f"http://127.0.0.1:{node_port}"],
        # The demo node has no TEE: this gateway routes to it, and to nothing else it was not
        # given (clients still refuse it unless told --insecure-no-tee).
        insecure_nodes_no_tee=True,
    )
    check_data_dir(settings.data_dir)
    check_ledger(settings)
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
        gateway_public_key(settings),
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
        print_console_lines(settings)
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
