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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Keyring]]:
    data_dir = tmp_path_factory.mktemp("node")
    settings = NodeSettings(data_dir=data_dir, embedded=False)
    keyring = Keyring(data_dir)
    with ServerThread(create_app(settings, EngineRegistry(), keyring, manage_engines=False)) as srv:
        yield srv.url, keyring


TINFOIL_MR_TD = (
    "7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a2"
    "19786afe2cd478f684b52c61837e1114"
)


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


def pinned_policy(tmp_path: Path) -> Path:
    policy = tmp_path / "pinned.toml"
    policy.write_text(f'mr_td = "{SAMPLE_MR_TD}"\n')
    return policy


def test_strict_default_refuses_the_genuine_sample_because_nothing_is_pinned() -> None:
    """The finding of issue 11: Policy() used to print PASS with measurements skipped."""
    done = attest("--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "UpToDate" in done.stdout and "nothing pinned" in done.stdout
    assert "FAIL: measurements" in done.stdout
    assert "skipped" not in done.stdout
    as_json = attest("--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--json")
    step = {s["name"]: s for s in json.loads(as_json.stdout)["steps"]}["measurements"]
    assert step["outcome"] == "FAIL" and f'mr_td = "{SAMPLE_MR_TD}"' in step["detail"]


def test_sample_quote_verifies_with_its_mr_td_pinned(tmp_path: Path) -> None:
    done = attest(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT,
        "--policy", pinned_policy(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UpToDate" in done.stdout
    for step in ("collateral", "quote", "TD attributes", "TCB status", "measurements"):
        assert step in done.stdout
    assert "not checked" in done.stdout  # the binding of a bare quote given without keys
    assert "PASS" in done.stdout


def test_raw_pcs_replies_are_accepted_as_collateral(tmp_path: Path) -> None:
    tinfoil = QUOTE.parent / "tdx" / "teep_tinfoil_tdx_quote.bin"
    replies = QUOTE.parent / "tdx" / "collateral_20260629"
    policy = tmp_path / "tinfoil.toml"
    policy.write_text(f'mr_td = "{TINFOIL_MR_TD}"\n')
    done = attest("--quote", tinfoil, "--collateral", replies, "--at", "2026-06-29T02:08:14Z",
                  "--policy", policy, "--json")  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout
    steps = {s["name"]: s["outcome"] for s in report["steps"]}
    assert steps["collateral"] == "pass" and steps["quote"] == "pass"
    assert report["tcb_status"] == "UpToDate"
    assert report["facts"]["mr_td"].startswith("7357a10d")
    today = attest("--quote", tinfoil, "--collateral", replies, "--json")
    steps = {s["name"]: s for s in json.loads(today.stdout)["steps"]}
    assert today.returncode == 1 and steps["collateral"]["outcome"] == "FAIL"
    assert "2026-07-29" in steps["collateral"]["detail"]  # the TCB info's nextUpdate


def test_today_the_collateral_has_expired() -> None:
    done = attest("--quote", QUOTE, "--collateral", COLLATERAL)
    assert done.returncode == 1
    assert "expired" in done.stdout and "2025-07-19" in done.stdout
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


def test_missing_collateral_offline_fails_with_the_reason() -> None:
    code, stdout, _ = invoke("--quote", QUOTE, "--at", GOOD_AT, "--offline")
    assert code == 1
    assert "no collateral source is configured" in stdout


def test_collateral_is_fetched_from_the_pccs_the_user_names(tmp_path: Path) -> None:
    from tests.attestation.pcs_kds_standin import PcsKdsStandIn

    tinfoil = QUOTE.parent / "tdx" / "teep_tinfoil_tdx_quote.bin"
    with PcsKdsStandIn() as standin:
        code, stdout, _ = invoke(
            "--quote", tinfoil, "--pccs-url", standin.url, "--at", "2026-06-29T02:08:14Z",
            "--json",
        )  # fmt: skip
        assert standin.requests, "the collateral was not fetched from the named PCCS"
    assert code == 1  # nothing pinned: strict refuses even a fresh, genuine quote
    steps = {s["name"]: s for s in json.loads(stdout)["steps"]}
    assert steps["collateral"]["outcome"] == "pass"
    assert standin_name(steps["collateral"]["detail"])
    assert steps["quote"]["outcome"] == "pass"


def standin_name(detail: str) -> bool:
    return "fetched from http://127.0.0.1" in detail


def test_policy_pinning_another_mr_td_fails(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'mr_td = "{"ab" * 48}"\n')
    code, stdout, _ = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--policy", policy
    )
    assert code == 1
    assert SAMPLE_MR_TD in stdout and "measurements" in stdout


def test_json_output(tmp_path: Path) -> None:
    code, stdout, _ = invoke(
        "--quote", QUOTE, "--collateral", COLLATERAL, "--at", GOOD_AT, "--json",
        "--policy", pinned_policy(tmp_path),
    )  # fmt: skip
    assert code == 0
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["tcb_status"] == "UpToDate"
    assert report["facts"]["mr_td"] == SAMPLE_MR_TD
    assert [s["name"] for s in report["steps"]][:4] == [
        "collateral", "quote", "TD attributes", "TCB status",
    ]  # fmt: skip


def test_outdated_quote_needs_a_policy_that_allows_its_status(tmp_path: Path) -> None:
    args = (
        "--quote",
        OUTDATED_QUOTE,
        "--collateral",
        OUTDATED_COLLATERAL,
        "--at",
        "2026-03-01T00:00:00Z",
    )
    from veil.attestation.abi_tdx import parse_tdx_quote

    mr_td = parse_tdx_quote(OUTDATED_QUOTE.read_bytes()).mr_td.hex()
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps({"mr_td": mr_td}))
    code, stdout, _ = invoke(*args, "--policy", pinned)
    assert code == 1 and "NoMatchingTcbLevel" in stdout
    lenient = tmp_path / "lenient.json"
    lenient.write_text(
        json.dumps({"mr_td": mr_td, "allowed_tcb_statuses": ["UpToDate", "NoMatchingTcbLevel"]})
    )
    code, stdout, _ = invoke(*args, "--policy", lenient)
    assert code == 0, stdout


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


def test_a_v3_bundle_must_bind_the_post_quantum_key_the_node_lists(
    node: tuple[str, Keyring], tmp_path: Path
) -> None:
    url, keyring = node
    dev_policy = tmp_path / "dev.json"
    dev_policy.write_text(json.dumps({"allow_no_tee": True}))
    hybrid = keyring.current.hybrid
    assert hybrid is not None
    for kem_key, code_wanted in ((hybrid.public_key, 0), (os.urandom(1216), 1)):
        document = tmp_path / "v3.json"
        evidence = build_evidence(
            NoTeeProvider(), keyring.current.public_key, keyring.signing_public_key, NONCE,
            kem_public_key=kem_key,
        )  # fmt: skip
        document.write_text(evidence.to_json())
        code, stdout, _ = invoke(
            "--evidence", document, "--expect-keys", url, "--policy", dev_policy,
        )  # fmt: skip
        assert code == code_wanted, stdout
    assert "post-quantum key differ" in stdout


SAMPLES_DIR = QUOTE.parent


GENOA = SAMPLES_DIR / "sev-snp"


NV = SAMPLES_DIR / "nvidia"


GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)


def test_snp_report_verifies_against_its_chain_and_pin(tmp_path: Path) -> None:
    policy = tmp_path / "snp.toml"
    policy.write_text(f'snp_measurement = "{GENOA_MEASUREMENT}"\n')
    args = (
        "--snp-report", GENOA / "teep_tinfoil_genoa_report.bin",
        "--vcek", GENOA / "teep_genoa_vcek.der",
        "--at", "2026-06-29T03:00:00Z", "--json",
    )  # fmt: skip
    code, stdout, _ = invoke(*args, "--cert-chain", GENOA / "ask_ark_genoa.pem", "--policy", policy)
    assert code == 0, stdout
    steps = {s["name"]: s["outcome"] for s in json.loads(stdout)["steps"]}
    assert steps["SNP certificate chain"] == "pass" and steps["measurements"] == "pass"
    assert steps["binding"] == "not checked"
    code, stdout, _ = invoke(*args, "--cert-chain", GENOA / "ask_ark_milan.pem", "--policy", policy)
    assert code == 1  # the Genoa report fails against the Milan chain
    code, stdout, _ = invoke(*args, "--cert-chain", GENOA / "ask_ark_genoa.pem")
    assert code == 1 and "pin snp_measurement" in stdout


def test_gpu_report_verifies_with_its_rims_at_its_time_and_not_today() -> None:
    args = (
        "--gpu-report", NV / "nvtrust_hopperAttestationReport.txt",
        "--gpu-cert-chain", NV / "nvtrust_hopperCertChain.txt",
        "--rim", NV / "NV_GPU_DRIVER_GH100_550.90.07.swidtag",
        "--rim", NV / "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag",
        "--json",
    )  # fmt: skip
    code, stdout, _ = invoke(*args, "--at", "2025-10-24T12:00:00Z")
    assert code == 0, stdout
    report = json.loads(stdout)
    assert report["facts"]["gpu_measurements_matched"] == 33
    code, stdout, _ = invoke(*args)
    assert code == 1 and "expired" in stdout


def test_a_bundle_file_is_verified_whole(tmp_path: Path) -> None:
    raw = (GENOA / "teep_tinfoil_genoa_report.bin").read_bytes()
    bundle = {
        "format": "sev-snp",
        "report_data": base64.b64encode(raw[0x50:0x90]).decode(),
        "nonce": base64.b64encode(NONCE).decode(),
        "x25519_public_key": base64.b64encode(bytes(32)).decode(),
        "ed25519_public_key": base64.b64encode(bytes(range(32))).decode(),
        "quote": base64.b64encode(raw).decode(),
        "vcek": base64.b64encode((GENOA / "teep_genoa_vcek.der").read_bytes()).decode(),
        "cert_chain": (GENOA / "ask_ark_genoa.pem").read_text(),
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    policy = tmp_path / "snp.toml"
    policy.write_text(f'snp_measurement = "{GENOA_MEASUREMENT}"\n')
    code, stdout, _ = invoke("--bundle", path, "--policy", policy, "--json")
    assert code == 1
    steps = {s["name"]: s["outcome"] for s in json.loads(stdout)["steps"]}
    assert steps["measurements"] == "pass" and steps["binding"] == "FAIL"


def test_url_fetches_a_fresh_bundle_and_checks_its_nonce(
    node: tuple[str, Keyring], tmp_path: Path
) -> None:
    url, _ = node
    code, stdout, _ = invoke("--url", url, "--json")
    assert code == 1  # strict: the node has no TEE
    dev_policy = tmp_path / "dev.json"
    dev_policy.write_text(json.dumps({"allow_no_tee": True}))
    code, stdout, _ = invoke("--url", url, "--policy", dev_policy, "--json")
    steps = {s["name"]: s["outcome"] for s in json.loads(stdout)["steps"]}
    assert code == 0 and steps["nonce"] == "pass" and steps["binding"] == "pass"
