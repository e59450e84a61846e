"""``veil console [--gateway URL]``: the same bundle, served locally from the installed package,
against a gateway elsewhere, so the page a user runs is the one they installed, not whatever a
gateway serves. The gateway must send CORS headers for this origin (its operator allows it:
``veil gateway --console-origin ORIGIN``, ``VEIL_CONSOLE_ORIGINS``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI

import veil.console
from veil.console import bundle_sha256, mount_console

__all__ = [
    "bundle_line",
    "console_app",
    "console_installed",
    "gateway_origin",
    "local_origin",
    "run_console",
]


def gateway_origin(url: str) -> str:
    """``scheme://host[:port]`` of the gateway URL (a trailing ``/v1``, as the client's base URL
    may have, is dropped); anything else is refused."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--gateway: expected an http(s) URL such as https://gateway.example")
    if (
        parts.path not in ("", "/", "/v1", "/v1/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError("--gateway: expected the gateway's origin only (no path, query or user)")
    return f"{parts.scheme}://{parts.netloc}"


def local_origin(host: str, port: int) -> str:
    """The origin a browser on this machine gives the console served on ``host:port``."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def console_installed() -> bool:
    return (veil.console.STATIC_DIR / "index.html").is_file()


def bundle_line() -> str:
    """What ``veil serve``, ``veil gateway`` and ``veil console`` print at start."""
    if not console_installed():
        return "Web console: not installed in this package (`make web` builds it)"
    return f"Web console bundle sha256 {bundle_sha256()}"


def console_app(gateway_url: str) -> FastAPI:
    """The console alone, pointed at ``gateway_url`` (its CSP allows fetches there only)."""
    app = FastAPI(title="Veil console", docs_url=None, redoc_url=None, openapi_url=None)
    mount_console(app, gateway_url=gateway_origin(gateway_url))
    return app


def run_console(gateway_url: str, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve the console (blocking) until SIGTERM or Ctrl-C."""
    from veil.serving import serve

    serve(console_app(gateway_url), host=host, port=port, log_level="warning", drain_timeout=1)
