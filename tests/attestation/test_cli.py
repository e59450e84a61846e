"""``veil attest verify``: exit codes, printed steps and TCB status, and --expect-keys against a
real node on loopback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.attestation import (
    COLLATERAL,
    OUTDATED_COLLATERAL,
    OUTDATED_QUOTE,
    QUOTE,
    SAMPLE_MR_TD,
)
from tests.servers import ServerThread
from veil.attestation.cli import attest_app
from veil.attestation.providers import NoTeeProvider, build_evidence
from veil.config import NodeSettings
from veil.node.app import create_app
from veil.node.keyring import Keyring
from veil.node.service import EngineRegistry

GOOD_AT = "2025-07-01T00:00:00Z"
runner = CliRunner()
NONCE = bytes(range(16, 48))


def attest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in its own process."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "veil.attestation.cli", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(
        attest_app, ["verify", *map(str, args)], env={"COLUMNS": "200"}, catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


def test_sample_quote_verifies_and_prints_its_tcb_status() -> None:
    done = attest("--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UpToDate" in done.stdout
    for step in ("quote", "TD attributes", "TCB status", "measurements", "binding"):
        assert step in done.stdout
    assert "PASS" in done.stdout


def test_today_the_collateral_has_expired() -> None:
    done = attest("--quote", QUOTE, "--collateral", COLLATERAL)
    assert done.returncode == 1
    assert "collateral expired" in done.stdout
    assert "FAIL" in done.stdout


def test_unreadable_file_is_one_clear_error_line() -> None:
    done = attest("--quote", "/nonexistent/quote.bin", "--collateral", COLLATERAL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: cannot read quote /nonexistent/quote.bin: No such file or directory"
    ]
    assert "Traceback" not in done.stderr


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "collateral.json"
    broken.write_text("{not json")
    assert invoke("--quote", QUOTE, "--collateral", broken)[0] == 2
    assert invoke("--quote", QUOTE, "--collateral", COLLATERAL, "--at", "yesterday")[0] == 2
    code, _, stderr = invoke("--collateral", COLLATERAL)
    assert code == 2 and "exactly one of --quote" in stderr


def test_missing_collateral_fails_with_the_reason() -> None:
    code, stdout, _ = invoke("--quote", QUOTE, "--at", GOOD_AT)
    assert code == 1
    assert "collateral is required" in stdout


def test_policy_pinning_another_mr_td_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'mr_td = "{"ab" * 48}"\n')
    code, stdout, _ = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--policy", policy
    )
    assert code == 1
    assert SAMPLE_MR_TD in stdout and "measurements" in stdout


def test_json_output() -> None:
    code, stdout, _ = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--json"
    )
    assert code == 0
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["tcb_status"] == "UpToDate"
    assert report["facts"]["mr_td"] == SAMPLE_MR_TD
    assert [s["name"] for s in report["steps"]][:3] == ["quote", "TD attributes", "TCB status"]


def test_outdated_quote_needs_a_policy_that_allows_its_status(tmp_path: Path) -> None:
    args = (
        "--quote",
        OUTDATED_QUOTE,
        "--collateral",
        OUTDATED_COLLATERAL,
        "--at",
        "2026-03-01T00:00:00Z",
    )
    code, stdout, _ = invoke(*args)
    assert code == 1 and "NoMatchingTcbLevel" in stdout
    lenient = tmp_path / "lenient.json"
    lenient.write_text(json.dumps({"allowed_tcb_statuses": ["UpToDate", "NoMatchingTcbLevel"]}))
    code, stdout, _ = invoke(*args, "--policy", lenient)
    assert code == 0, stdout


# -- --expect-keys against a real node (keys only; no engines needed) ---------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Keyring]]:
    data_dir = tmp_path_factory.mktemp("node")
    settings = NodeSettings(data_dir=data_dir, embedded=False)
    keyring = Keyring(data_dir)
    with ServerThread(create_app(settings, EngineRegistry(), keyring, manage_engines=False)) as srv:
        yield srv.url, keyring


def test_expect_keys_without_a_nonce_says_why_binding_cannot_pass(
    node: tuple[str, Keyring],
) -> None:
    url, _ = node
    code, stdout, _ = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--expect-keys", url
    )
    assert code == 1
    assert "does not carry the nonce" in stdout


def test_expect_keys_with_a_nonce_refuses_a_quote_bound_to_other_keys(
    node: tuple[str, Keyring],
) -> None:
    url, _ = node
    code, stdout, _ = invoke(
        "--quote",
        QUOTE,
        "--collateral",
        COLLATERAL,
        "--at",
        GOOD_AT,
        "--expect-keys",
        url,
        "--nonce",
        base64.b64encode(NONCE).decode(),
    )
    assert code == 1
    assert "does not commit to the node's keys" in stdout
    assert "UpToDate" in stdout


def test_expect_keys_at_an_unreachable_node_is_one_error_line() -> None:
    code, _, stderr = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--expect-keys", "http://127.0.0.1:9"
    )
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "cannot fetch" in stderr


def test_no_tee_evidence_of_the_node_passes_only_with_allow_no_tee(
    node: tuple[str, Keyring], tmp_path: Path
) -> None:
    url, keyring = node
    evidence = build_evidence(
        NoTeeProvider(), keyring.current.public_key, keyring.signing_public_key, NONCE
    )
    document = tmp_path / "evidence.json"
    document.write_text(evidence.to_json())
    dev_policy = tmp_path / "dev.json"
    dev_policy.write_text(json.dumps({"allow_no_tee": True}))
    args = (
        "--evidence",
        document,
        "--expect-keys",
        url,
        "--nonce",
        base64.b64encode(NONCE).decode(),
    )

    code, stdout, _ = invoke(*args)
    assert code == 1 and "no TEE: development only" in stdout

    code, stdout, _ = invoke(*args, "--policy", dev_policy)
    assert code == 0, stdout
    assert "expected keys" in stdout and "PASS" in stdout

    stranger = tmp_path / "stranger.json"
    stranger.write_text(build_evidence(NoTeeProvider(), bytes(32), bytes(32), NONCE).to_json())
    code, stdout, _ = invoke("--evidence", stranger, "--expect-keys", url, "--policy", dev_policy)
    assert code == 1 and "differ from the expected" in stdout
