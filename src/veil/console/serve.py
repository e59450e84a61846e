"""``veil console [--gateway URL]``: the same bundle, served locally from the installed package,
against a gateway elsewhere, so the page a user runs is the one they installed, not whatever a
gateway serves. The gateway must send CORS headers for this origin (its operator allows it).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI

from veil.console import bundle_sha256, mount_console

__all__ = ["console_app", "gateway_origin", "run_console"]


def gateway_origin(url: str) -> str:
    """``scheme://host[:port]`` of the gateway URL; anything else is refused."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--gateway: expected an http(s) URL such as https://gateway.example")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("--gateway: expected the gateway's origin only (no path, query or user)")
    return f"{parts.scheme}://{parts.netloc}"


def console_app(gateway_url: str) -> FastAPI:
    """The console alone, pointed at ``gateway_url`` (its CSP allows fetches there only)."""
    app = FastAPI(title="Veil console", docs_url=None, redoc_url=None, openapi_url=None)
    mount_console(app, gateway_url=gateway_origin(gateway_url))
    return app


def run_console(gateway_url: str, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve the console (blocking); prints the bundle's SHA-256 first."""
    import uvicorn

    app = console_app(gateway_url)
    print(f"Veil console bundle sha256 {bundle_sha256()}", flush=True)
    print(f"Console for {gateway_origin(gateway_url)}: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
