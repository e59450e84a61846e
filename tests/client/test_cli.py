"""``veil chat``, ``veil embed`` and ``veil models`` as a person runs them: a subprocess.

The node here has no TEE, so ``run`` opts in with ``VEIL_INSECURE_NO_TEE=1``, as a user of
``veil serve`` must; the tests that clear it show the strict default refusing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.client.conftest import CHAT, EMBED, IMAGES
from tests.e2e.conftest import Deployment

VEIL = Path(sys.executable).with_name("veil")
# Until ``register(app)`` is wired into ``veil.cli``, the commands are run from their own app.
STANDALONE = (
    "import typer; from veil.client.cli import register; app = typer.Typer(); register(app); app()"
)


@cache
def veil_command() -> list[str]:
    if VEIL.exists():
        probe = subprocess.run([str(VEIL), "chat", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [str(VEIL)]
    return [sys.executable, "-c", STANDALONE]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``env`` entries override; an empty value removes the variable."""
    environment = {
        **os.environ,
        "VEIL_BASE_URL": "",
        "VEIL_API_KEY": "",
        "VEIL_INSECURE_NO_TEE": "1",  # the opt-in: these nodes have no TEE
        **(env or {}),
    }
    environment = {k: v for k, v in environment.items() if v}
    return subprocess.run(
        [*veil_command(), *args], capture_output=True, text=True, timeout=300, env=environment
    )


@pytest.fixture(scope="module")
def key(client_deployment: Deployment) -> str:
    api_key, _ = client_deployment.new_user("cli-user", {CHAT: 1_000_000, EMBED: 100_000})
    return api_key


def test_chat_streams_and_prints_a_receipt(client_deployment: Deployment, key: str) -> None:
    result = run(
        "chat",
        "Say hello",
        "--max-tokens",
        "6",
        "--base-url",
        client_deployment.url,
        "--api-key",
        key,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    receipt = result.stderr.strip().splitlines()[-1]
    assert "signature verified" in receipt
    assert client_deployment.nodes[0].keyring.current.key_id in receipt
    assert "prompt" in receipt and "completion" in receipt and "units charged" in receipt
    assert "veil-v3 mlkem768-x25519" in receipt and "NO TEE" in receipt  # the default


def test_chat_without_streaming_from_the_environment(
    client_deployment: Deployment, key: str
) -> None:
    result = run(
        "chat",
        "Say hello",
        "--no-stream",
        "--max-tokens",
        "4",
        env={"VEIL_BASE_URL": client_deployment.url, "VEIL_API_KEY": key},
    )
    assert result.returncode == 0, result.stderr
    assert "signature verified" in result.stderr


def test_show_wire_shows_the_gateway_gets_no_plaintext(
    client_deployment: Deployment, key: str
) -> None:
    prompt = "my secret word is marmalade"
    result = run(
        "chat",
        prompt,
        "--max-tokens",
        "4",
        "--show-wire",
        "--base-url",
        client_deployment.url,
        "--api-key",
        key,
    )
    assert result.returncode == 0, result.stderr
    sent, _, wire = result.stderr.partition("--- the gateway saw")
    assert "marmalade" in sent  # what the user sent, shown to the user
    assert "marmalade" not in wire  # what the gateway saw
    assert "/v1/nodes/lock" in wire and "/v1/confidential/chat/completions" in wire
    assert "ciphertext" in wire and "base64 chars)" in wire
    assert "client_dh_public_key" in wire


def test_embed(client_deployment: Deployment, key: str) -> None:
    base = ["--base-url", client_deployment.url, "--api-key", key]
    result = run("embed", "first text", "second text", *base)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("0: 384 dims [") and "..." in lines[0]
    assert "signature verified" in result.stderr
    as_json = run("embed", "first text", "--json", *base)
    assert as_json.returncode == 0, as_json.stderr
    assert len(json.loads(as_json.stdout)["data"][0]["embedding"]) == 384


def test_models(client_deployment: Deployment) -> None:
    result = run("models", "--base-url", client_deployment.url)
    assert result.returncode == 0, result.stderr
    listed = {line.split("\t")[0] for line in result.stdout.splitlines()}
    assert {CHAT, EMBED, IMAGES} <= listed


def test_errors_are_one_line_and_fail(client_deployment: Deployment) -> None:
    result = run("chat", "hi", "--base-url", client_deployment.url, "--api-key", "veil_wrong")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: AUTH_ERROR: ")
    no_key = run("chat", "hi", "--base-url", client_deployment.url)
    assert no_key.returncode != 0 and no_key.stderr.startswith("error: AUTH_ERROR: no API key")


def test_balance_error_names_what_is_left(client_deployment: Deployment) -> None:
    poor, _ = client_deployment.new_user("cli-poor", {CHAT: 30})
    result = run(
        "chat", "hi", "--max-tokens", "8", "--base-url", client_deployment.url, "--api-key", poor
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: BALANCE_ERROR: ")
    assert "30 units left for smollm2-135m-instruct" in result.stderr


STRICT = {"VEIL_INSECURE_NO_TEE": ""}


def test_a_node_without_a_tee_is_refused_unless_opted_in(
    client_deployment: Deployment, key: str
) -> None:
    base = ["--base-url", client_deployment.url, "--api-key", key, "--max-tokens", "2"]
    refused = run("chat", "hi", *base, env=STRICT)
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("error: ATTESTATION_FAILED: ")
    assert "--insecure-no-tee" in refused.stderr and "VEIL_INSECURE_NO_TEE=1" in refused.stderr
    embed_refused = run(
        "embed", "x", "--base-url", client_deployment.url, "--api-key", key, env=STRICT
    )
    assert embed_refused.stderr.startswith("error: ATTESTATION_FAILED: ")
    flagged = run("chat", "hi", "--insecure-no-tee", "--no-stream", *base, env=STRICT)
    assert flagged.returncode == 0, flagged.stderr
    assert "NO TEE" in flagged.stderr


def test_protocol_and_policy_options(
    client_deployment: Deployment, key: str, tmp_path: Path
) -> None:
    base = ["--base-url", client_deployment.url, "--api-key", key]
    v1 = run("embed", "x", "--protocol", "atoma-v1", *base)
    assert v1.returncode == 0, v1.stderr
    assert "atoma-v1" in v1.stderr.strip().splitlines()[-1]
    v3 = run("embed", "x", "--protocol", "veil-v3", *base)
    assert v3.returncode == 0, v3.stderr
    assert "veil-v3" in v3.stderr.strip().splitlines()[-1]
    # veil-v2 is retired: refused, in words that name what is accepted instead.
    retired = run("embed", "x", "--protocol", "veil-v2", *base)
    assert retired.returncode != 0 and retired.stdout == ""
    said = " ".join(retired.stderr.replace("\u2502", " ").split())  # unwrapped from its box
    assert "veil-v2" in said and "veil-v3" in said and "Traceback" not in said
    chat_retired = run("chat", "hi", "--protocol", "veil-v2", *base)
    assert chat_retired.returncode != 0 and chat_retired.stdout == ""
    policy = tmp_path / "dev-policy.toml"
    policy.write_text("allow_no_tee = true\n")
    allowed = run("embed", "x", "--policy", str(policy), *base, env=STRICT)
    assert allowed.returncode == 0, allowed.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('allowed_tcb_statuses = ["Revoked"]\n')
    refused = run("embed", "x", "--policy", str(bad), *base)
    assert refused.returncode != 0 and refused.stderr.startswith("error: INVALID_POLICY: ")
    unknown = run("embed", "x", "--protocol", "veil-v9", *base)
    assert unknown.returncode != 0
