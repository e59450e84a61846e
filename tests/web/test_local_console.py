"""The console served on its own origin (``console_app``, as ``veil console`` serves it) against a
real ``veil serve`` on another: with the console's origin allowed (``VEIL_CONSOLE_ORIGINS``) the
page signs in and completes a sealed chat across origins; with it not allowed, the page says what
the operator must allow instead of failing silently."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from tests.harness import ServerThread, child_env, free_port, veil_process, wait_healthy
from tests.web.browser import Page
from tests.web.conftest import CHAT, Served, sign_in
from veil.console import bundle_sha256
from veil.console.serve import console_app
from veil.engines import EmbeddedModelPaths

QUESTION = "What is the capital of France? Answer in one word."
VERIFIED = "() => document.querySelector('[data-testid=answer]')?.dataset.verified ?? null"


@pytest.fixture(scope="module")
def console_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    embedded_models: EmbeddedModelPaths,
    console_port: int,
) -> Iterator[Served]:
    """A ``veil serve`` whose operator allows the console at 127.0.0.1:``console_port`` only."""
    tmp = tmp_path_factory.mktemp("web-cors")
    port, node_port = free_port(), free_port()
    log, data = tmp / "serve.log", tmp / "data"
    args = ["serve", "--port", str(port), "--node-port", str(node_port), "--data-dir", str(data)]
    env = {**child_env(), "VEIL_CONSOLE_ORIGINS": f"http://127.0.0.1:{console_port}"}
    with veil_process(args, log, env) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        found = re.search(r"export VEIL_API_KEY=(veil_[A-Za-z0-9_-]+)", log.read_text())
        assert found, log.read_text()[-2000:]
        yield Served(url, found.group(1), log, data)


def user(gateway: Served) -> str:
    return gateway.new_user(f"local-{secrets.token_hex(4)}", {CHAT: 100_000})


def test_the_gateway_prints_the_bundle_hash_and_the_allowed_origin(
    gateway: Served, console_port: int
) -> None:
    printed = gateway.log.read_text()
    assert f"Web console bundle sha256 {bundle_sha256()}" in printed
    assert f"Consoles elsewhere allowed (CORS): http://127.0.0.1:{console_port}" in printed


def test_a_local_console_chats_with_a_gateway_that_allows_it(
    page: Page, gateway: Served, console_port: int
) -> None:
    with ServerThread(console_app(gateway.url), port=console_port) as console:
        sign_in(page, console.url, user(gateway))
        page.check("allow-no-tee")
        page.fill("max-tokens", "24")
        page.fill("prompt", QUESTION)
        page.click("send")
        assert page.wait_for(VERIFIED, timeout=120) == "true"
        assert "Paris" in page.text("answer")
        requests = page.requests()
    api = [r["url"] for r in requests if "/v1/" in r["url"]]
    # Every API call went to the other origin; the page came from the console's.
    assert api and all(u.startswith(f"{gateway.url}/v1/") for u in api)
    assert any(u.endswith("/v1/confidential/chat/completions") for u in api)
    assert requests[0]["url"] == f"{console.url}/"
    assert page.errors() == []


def test_a_console_the_gateway_does_not_allow_says_what_to_allow(
    page: Page, gateway: Served
) -> None:
    with ServerThread(console_app(gateway.url)) as console:
        page.goto(console.url)
        page.fill("api-key", user(gateway))
        page.click("sign-in")
        message = page.wait("unreachable-error") or ""
    assert f"Unreachable: the gateway at {gateway.url} did not answer" in message
    assert "it may not allow this console's origin" in message
    assert f"veil gateway --console-origin {console.url}" in message
    assert page.count("prompt") == 0  # still on the sign-in form, with the error beside it
