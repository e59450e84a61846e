"""The console as the gateway and ``veil console`` serve it: paths, headers, the bundle hash."""

from __future__ import annotations

import httpx
import pytest

from tests.harness import ServerThread
from tests.web.conftest import Served
from veil.console import STATIC_DIR, bundle_sha256, csp
from veil.console.serve import console_app, gateway_origin


def test_the_console_is_served_at_root_with_a_strict_policy(console_url: str) -> None:
    index = httpx.get(f"{console_url}/", timeout=30)
    assert index.status_code == 200 and index.content == (STATIC_DIR / "index.html").read_bytes()
    assert index.headers["content-security-policy"] == csp()
    assert "connect-src 'self';" in csp() and "'unsafe-eval'" not in csp()
    assert index.headers["cache-control"] == "no-cache"
    script = httpx.get(f"{console_url}/console/assets/index.js", timeout=30)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    wasm = httpx.get(f"{console_url}/console/assets/dcap-qvl-web_bg.wasm", timeout=30)
    assert wasm.status_code == 200 and wasm.content[:4] == b"\0asm"
    assert httpx.get(f"{console_url}/console/assets/nothing.js", timeout=30).status_code == 404


def test_the_gateway_serves_the_console_beside_its_api(served: Served) -> None:
    url = served.url
    assert httpx.get(f"{url}/", timeout=30).headers["content-security-policy"] == csp()
    models = httpx.get(f"{url}/v1/models", timeout=30)
    assert models.status_code == 200 and models.json()["object"] == "list"


def test_bundle_hash_covers_every_file() -> None:
    assert bundle_sha256() == bundle_sha256.__wrapped__(STATIC_DIR)
    assert len(bundle_sha256()) == 64


def test_veil_console_points_the_page_at_its_gateway() -> None:
    with ServerThread(console_app("https://gw.example:8443/")) as server:
        index = httpx.get(f"{server.url}/", timeout=30)
    assert '<meta name="veil-gateway" content="https://gw.example:8443" />' in index.text
    assert "connect-src 'self' https://gw.example:8443;" in index.headers["content-security-policy"]
    for bad in ("ftp://x", "https://gw.example/path", "https://u@gw.example", "gw.example"):
        with pytest.raises(ValueError):
            gateway_origin(bad)
