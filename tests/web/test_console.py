"""The console in Chromium against a real ``veil serve`` on loopback: sign in, a streamed chat
sealed and opened in the page, embeddings, the attestation gate, errors a user can act on, usage
and admin. Each test signs in as a user of its own (fresh tab, fresh sessionStorage)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness import ServerThread
from tests.web.browser import Page
from tests.web.conftest import CHAT, EMBED, Served, sign_in
from tests.web.tamper import TamperingProxy
from veil.cli import app as veil_app

QUESTION = "What is the capital of France? Answer in one word."
VERIFIED = "() => document.querySelector('[data-testid=answer]')?.dataset.verified ?? null"


def ask(page: Page, prompt: str, *, max_tokens: int = 24) -> str:
    """Send ``prompt``; returns the answer's verified flag ("true" / "false") once it settled."""
    page.fill("max-tokens", str(max_tokens))
    page.fill("prompt", prompt)
    page.click("send")
    return str(page.wait_for(VERIFIED, timeout=120))


def user(served: Served, **limits: int) -> str:
    return served.new_user(f"web-{secrets.token_hex(4)}", {CHAT: 100_000, EMBED: 100_000}, **limits)


def test_streamed_chat_round_trip(page: Page, served: Served) -> None:
    key = user(served)
    page.goto(served.url)
    page.wait("api-key")
    page.screenshot("sign-in")
    sign_in(page, served.url, key)
    page.check("allow-no-tee")
    assert page.attr("model", "data-testid") == "model"
    assert ask(page, QUESTION) == "true"
    assert "Paris" in page.text("answer")
    page.click("show-receipt")
    receipt = json.loads(page.text("receipt"))
    assert receipt["protocol"] == "veil-v3" and receipt["kem"] == "mlkem768-x25519"
    assert receipt["signature_verified"] is True and receipt["chunks_verified"] >= 2
    assert receipt["usage"]["completion_tokens"] > 0
    assert receipt["attestation"] == {
        "format": "none",
        "ok": True,
        "insecure": True,
        "steps": receipt["attestation"]["steps"],
    }
    assert [s["name"] for s in receipt["attestation"]["steps"]] == [
        "format", "binding", "expected keys", "nonce"
    ]  # fmt: skip
    page.screenshot("chat")
    # A follow-up in the same conversation: the history is sent (sealed) with it.
    assert ask(page, "And of Italy? One word.") == "true"
    page.click("nav-attestation")
    assert page.text("attestation-verdict").startswith("NO TEE: development node")
    assert page.count("step-binding") == 1
    page.screenshot("attestation")
    assert page.errors() == []


def test_embeddings_try_out(page: Page, served: Served) -> None:
    sign_in(page, served.url, user(served))
    page.check("allow-no-tee")
    page.click("nav-embeddings")
    page.fill("embed-input", "a private sentence")
    page.click("embed-send")
    page.wait("embed-result")
    assert page.attr("embed-result", "data-dimensions") == "384"
    page.screenshot("embeddings")


def test_a_canary_prompt_never_leaves_the_page_in_clear(page: Page, served: Served) -> None:
    key = user(served)
    canary = f"canary-{secrets.token_hex(8)}"
    sign_in(page, served.url, key)
    page.check("allow-no-tee")
    assert ask(page, f"Repeat this word: {canary}", max_tokens=8) == "true"
    requests = page.requests()
    sealed = [r for r in requests if r["url"].endswith("/v1/confidential/chat/completions")]
    assert len(sealed) == 1 and json.loads(sealed[0]["body"])["protocol"] == "veil-v3"
    for r in requests:
        assert canary not in r["url"] and canary not in r["body"]
        assert canary not in json.dumps(r["headers"])
        # The API key leaves the page only as the bearer header.
        assert key not in r["url"] and key not in r["body"]
        assert key not in json.dumps(
            {k: v for k, v in r["headers"].items() if k != "authorization"}
        )
    assert canary not in served.log.read_text(errors="replace")
    for path in served.data_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert canary not in metrics


def test_none_evidence_without_the_acknowledgement_sends_no_envelope(
    page: Page, served: Served
) -> None:
    sign_in(page, served.url, user(served))
    assert ask(page, QUESTION) == "false"
    refused = page.text("attestation-error")
    assert "no TEE" in refused and "nothing was encrypted or sent" in refused
    assert page.text("answer") == ""
    urls = [r["url"] for r in page.requests()]
    assert any(u.endswith("/v1/nodes/lock") for u in urls)
    assert not any("/v1/confidential/" in u for u in urls)
    page.screenshot("attestation-refused")
    page.click("nav-attestation")
    assert page.text("attestation-verdict").startswith("REFUSED: none evidence failed format")


@pytest.fixture(scope="module")
def proxy(served: Served) -> Iterator[tuple[TamperingProxy, str]]:
    tampering = TamperingProxy(served.url, swap_model=EMBED)
    with ServerThread(tampering.app) as server:
        yield tampering, server.url


@pytest.mark.parametrize(
    ("mode", "check"),
    [("flip", "decryption"), ("drop", "stream-order"), ("truncate", "truncated"),
     ("model", "model")],
)  # fmt: skip
def test_a_tampered_answer_shows_the_integrity_error_and_no_text(
    page: Page, served: Served, proxy: tuple[TamperingProxy, str], mode: str, check: str
) -> None:
    tampering, url = proxy
    sign_in(page, url, user(served))
    page.check("allow-no-tee")
    tampering.mode, tampering.tampered = "pass", 0
    assert ask(page, QUESTION) == "true"  # through the proxy, untouched: it works
    tampering.mode = mode  # type: ignore[assignment]
    try:
        assert ask(page, QUESTION) == "false"
    finally:
        tampering.mode = "pass"
    assert tampering.tampered == 1
    if mode == "model":  # caught before anything was sealed
        sent = [r for r in page.requests() if "/v1/confidential/" in r["url"]]
        assert len(sent) == 1  # the untouched first question only
    error = page.text("integrity-error")
    assert f"Integrity check failed ({check})" in error
    assert page.text("answer") == ""
    if mode == "flip":
        page.screenshot("integrity-error")


def test_a_lock_whose_key_the_evidence_does_not_bind_sends_no_envelope(
    page: Page, served: Served, proxy: tuple[TamperingProxy, str]
) -> None:
    tampering, url = proxy
    sign_in(page, url, user(served))
    page.check("allow-no-tee")  # even a development node must bind the key the page seals to
    tampering.mode, tampering.tampered = "swap-key", 0
    try:
        assert ask(page, QUESTION) == "false"
    finally:
        tampering.mode = "pass"
    assert tampering.tampered == 1
    assert "binding:" in page.text("attestation-error")
    assert not any("/v1/confidential/" in r["url"] for r in page.requests())
    page.click("nav-attestation")
    assert page.text("attestation-verdict").startswith("REFUSED: none evidence failed binding")


def test_rate_limited_says_when_to_retry(page: Page, served: Served) -> None:
    sign_in(page, served.url, user(served, requests_per_minute=1))
    page.check("allow-no-tee")
    # signing in (GET /v1/stacks) used this minute's one request
    assert ask(page, QUESTION) == "false"
    message = page.text("rate-limit-error")
    assert "Rate limited" in message and "Retry in" in message


def test_an_exhausted_stack_says_how_many_units_are_left(page: Page, served: Served) -> None:
    key = served.new_user(f"web-{secrets.token_hex(4)}", {CHAT: 40})
    sign_in(page, served.url, key)
    page.check("allow-no-tee")
    assert ask(page, QUESTION) == "false"
    assert "Stack exhausted" in page.text("balance-error")


def test_usage_chart_shows_the_units_the_chat_used(
    page: Page, served: Served, tmp_path: Path
) -> None:
    key = user(served)
    sign_in(page, served.url, key)
    page.check("allow-no-tee")
    assert ask(page, QUESTION) == "true"
    charged = httpx.get(
        f"{served.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=30
    ).json()["usage"]
    assert len(charged) == 1 and charged[0]["charged_units"] > 0
    page.click("nav-usage")
    page.wait("usage-chart")
    bars = page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=usage-chart] rect')]"
        ".map((r) => Number(r.dataset.units))"
    )
    assert bars == [charged[0]["charged_units"]]
    page.screenshot("usage")
    name, text = page.download("download-receipts")
    receipts = json.loads(text)
    assert name.endswith(".json") and receipts["usage"] == charged
    assert receipts["usage"][0]["receipt"]  # the node's signed token, for `veil usage --verify`
    [node] = receipts["attested_nodes"]
    assert node["node_signing_key"] == charged[0]["node_signing_key"] and node["insecure"] is True
    # The download is what `veil usage --verify --file` reads, in a client that never attested
    # the node itself: only the page's record of the key (trusted on request) lets it verify.
    saved = tmp_path / name
    saved.write_text(text)
    home = {"VEIL_HOME": str(tmp_path / "home")}
    command = ["usage", "--verify", "--file", str(saved), "--insecure-no-tee"]
    alone = CliRunner().invoke(veil_app, command, env=home)
    assert alone.exit_code == 1, alone.output
    assert "the page attested 1 node key(s) this client never saw" in alone.output
    trusted = CliRunner().invoke(veil_app, [*command, "--trust-page-nodes"], env=home)
    assert trusted.exit_code == 0, trusted.output
    assert "usage verified: 1 receipt(s)" in trusted.output
    # Without --insecure-no-tee, a key the page accepted only on the no-TEE acknowledgement is
    # not trusted either.
    strict = CliRunner().invoke(veil_app, [*command[:-1], "--trust-page-nodes"], env=home)
    assert strict.exit_code == 1 and "only ever attested with 'none' evidence" in strict.output


def test_admin_creates_a_user_and_a_stack(page: Page, served: Served) -> None:
    name = f"made-{secrets.token_hex(4)}"
    sign_in(page, served.url, served.admin_key)
    page.click("nav-admin")
    page.fill("create-user-name", name)
    page.click("create-user-submit")
    made = page.wait("create-user-result") or ""
    assert f"created {name}" in made
    page.fill("create-stack-user", name)
    page.fill("create-stack-model", CHAT)
    page.fill("create-stack-units", "5000")
    page.click("create-stack-submit")
    assert "5000 units" in (page.wait("create-stack-result") or "")
    stacks = served.admin("GET", f"/admin/stacks?user={name}").json()["stacks"]
    assert [(s["model"], s["total_units"]) for s in stacks] == [(CHAT, 5000)]
    page.wait_for(  # the table shows the new stack
        "(name) => document.querySelector('[data-testid=admin-stacks]').innerText.includes(name)",
        name,
    )
    page.wait("admin-nodes")
    page.screenshot("admin")


def test_stop_ends_the_stream_and_says_the_partial_answer_is_unsigned(
    page: Page, served: Served
) -> None:
    sign_in(page, served.url, user(served))
    page.check("allow-no-tee")
    page.fill("max-tokens", "400")
    page.fill("prompt", "Write a long story about a dragon who learns to cook.")
    page.click("send")
    page.wait_for(
        "() => (document.querySelector('[data-testid=answer]')?.innerText ?? '').length > 20",
        timeout=120,
    )
    page.click("stop")
    assert page.wait_for(VERIFIED, timeout=60) == "false"
    assert page.text("stopped") == "Stopped."
    assert "never signed by the node" in page.text("answer")


def test_an_unreachable_gateway_is_said_so(page: Page, served: Served) -> None:
    relay = ServerThread(TamperingProxy(served.url, swap_model=EMBED).app)
    with relay:
        sign_in(page, relay.url, user(served))
        page.check("allow-no-tee")
    # The relay is gone: the page's next request finds nobody listening.
    assert ask(page, QUESTION) == "false"
    assert "Unreachable: the gateway at" in page.text("unreachable-error")
