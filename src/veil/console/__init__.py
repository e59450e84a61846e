"""The web console: a static bundle (built from ``web/`` by Vite, shipped in ``static/``) that
seals requests with veil-v3 and verifies the node's attestation in the browser.

``mount_console(app)`` serves ``index.html`` at ``/`` and the assets under ``/console/``, which
clashes with no API route (``/v1/...``, ``/admin/...``, ``/health``, ``/metrics``). The page is
served with a Content-Security-Policy that lets it load only its own scripts and talk only to its
own origin (or to the one gateway it is pointed at), so a script injected through an answer could
neither run nor send anything elsewhere. ``bundle_sha256()`` is what ``veil serve`` / ``veil
console`` print at start, to compare with the release manifest.

Nothing here can decrypt: the gateway imports it.
"""

from __future__ import annotations

import hashlib
import html
import logging
from functools import lru_cache
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "STATIC_DIR", "bundle_sha256", "csp", "mount_console"]

log = logging.getLogger("veil.console")

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
ASSETS_PATH: Final = "/console"
_GATEWAY_META = '<meta name="veil-gateway" content="{}" />'


def csp(gateway_url: str | None = None) -> str:
    """The page's Content-Security-Policy: its own scripts only, fetches to its gateway only."""
    connect = "'self'" if gateway_url is None else f"'self' {gateway_url}"
    return (
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
        f"img-src 'self' data: blob:; connect-src {connect}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@lru_cache(maxsize=1)
def bundle_sha256(root: Path = STATIC_DIR) -> str:
    """SHA-256 over the bundle: each file's relative path and bytes, length-prefixed, in order."""
    digest = hashlib.sha256(b"veil console bundle\x00")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _index(gateway_url: str | None) -> bytes:
    index = (STATIC_DIR / "index.html").read_bytes()
    if gateway_url is None:
        return index
    meta = _GATEWAY_META.format(html.escape(gateway_url, quote=True)).encode()
    return index.replace(b"<head>", b"<head>\n    " + meta, 1)


def mount_console(app: FastAPI, *, gateway_url: str | None = None) -> None:
    """Serve the console on ``app``: ``/`` and ``/console/...``. ``gateway_url``: the gateway the
    page talks to when it is not this server (``veil console --gateway URL``)."""
    if not (STATIC_DIR / "index.html").is_file():
        # A package built without its package data: the API still serves; say why / is absent.
        log.warning(
            "the web console is not installed (%s is missing): `make web` builds it", STATIC_DIR
        )
        return
    index = _index(gateway_url)
    headers = {
        "content-security-policy": csp(gateway_url),
        "cache-control": "no-cache",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }

    async def console_index() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=headers)

    app.add_api_route("/", console_index, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="console")
