"""Usage a user can check: real traffic through a real gateway and node with the SDK, then
``veil usage --verify`` against the node keys the client recorded from attested locks. It passes
on the real books and fails once a receipt row, or a stack's used units, is altered in the
database behind the gateway's back."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.e2e.conftest import CHAT, EMBED, Deployment, deploy
from veil.cli import app as veil_app
from veil.client.known_nodes import KnownNodes
from veil.node.service import EngineRegistry


@dataclass
class Traffic:
    deployment: Deployment
    key: str
    home: Path
    database: Path
    stacks: dict[str, int]

    def usage(self, *args: str, key: str | None = None) -> Any:
        result = CliRunner().invoke(
            veil_app,
            ["usage", "--base-url", self.deployment.url, "--api-key", key or self.key, *args],
            env={"VEIL_HOME": str(self.home)},
        )
        return result


def wait_settled(url: str, key: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = httpx.get(f"{url}/v1/stacks", headers={"authorization": f"Bearer {key}"})
        if all(s["reserved_units"] == 0 for s in listed.json()["stacks"]):
            return
        time.sleep(0.1)
    raise AssertionError("streams did not settle within 30 s")


@pytest.fixture(scope="module")
def traffic(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[Traffic]:
    from veil.client.sdk import Client

    tmp = tmp_path_factory.mktemp("usage")
    home = tmp / "client-home"
    servers, deployed = deploy(tmp, [node_registry])
    with servers[0], servers[1]:
        deployment = deployed.started()
        key, stacks = deployment.new_user("payer", {CHAT: 100_000, EMBED: 100_000})
        saved = os.environ.get("VEIL_HOME")
        os.environ["VEIL_HOME"] = str(home)
        try:
            with Client(deployment.url, key, insecure_no_tee=True) as client:
                words = [{"role": "user", "content": "Say hello."}]
                client.chat.completions.create(model=CHAT, messages=words, max_tokens=4)
                with client.chat.completions.create(
                    model=CHAT, messages=words, max_tokens=6, stream=True
                ) as chunks:
                    for _ in chunks:
                        pass
                client.embeddings.create(model=EMBED, input=["a private note"])
        finally:
            if saved is None:
                os.environ.pop("VEIL_HOME", None)
            else:
                os.environ["VEIL_HOME"] = saved
        wait_settled(deployment.url, key)
        yield Traffic(deployment, key, home, tmp / "gateway" / "ledger.db", stacks)


def test_the_client_recorded_the_attested_node_key(traffic: Traffic) -> None:
    path = traffic.home / "known_nodes.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (node,) = KnownNodes(path).load().values()
    assert node.attestation_formats == ("none",) and not node.tee_attested
    assert node.node_small_id >= 1 and node.first_seen <= node.last_seen


def test_usage_lists_every_charge_with_its_signed_receipt(traffic: Traffic) -> None:
    listed = httpx.get(
        f"{traffic.deployment.url}/v1/usage",
        headers={"authorization": f"Bearer {traffic.key}"},
        params={"limit": 2},
    )
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert len(page["usage"]) == 2 and page["next_after"] == page["usage"][-1]["id"]
    rest = httpx.get(
        f"{traffic.deployment.url}/v1/usage",
        headers={"authorization": f"Bearer {traffic.key}"},
        params={"after": page["next_after"], "since": "1970-01-01T00:00:00Z"},
    ).json()
    rows = page["usage"] + rest["usage"]
    assert rest["next_after"] is None and len(rows) == 3
    assert sorted(r["model"] for r in rows) == sorted([CHAT, CHAT, EMBED])
    for row in rows:
        assert row["charged_units"] > 0 and row["receipt"].count(".") == 1
        assert row["node_signing_key_id"] and row["request_id"]
    future = httpx.get(
        f"{traffic.deployment.url}/v1/usage",
        headers={"authorization": f"Bearer {traffic.key}"},
        params={"since": str(time.time() + 3600)},
    ).json()
    assert future["usage"] == []
    bad = httpx.get(
        f"{traffic.deployment.url}/v1/usage",
        headers={"authorization": f"Bearer {traffic.key}"},
        params={"since": "yesterday"},
    )
    assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]


def test_usage_is_the_callers_own_unless_admin(traffic: Traffic) -> None:
    other, _ = traffic.deployment.new_user("other", {})
    mine = httpx.get(
        f"{traffic.deployment.url}/v1/usage", headers={"authorization": f"Bearer {other}"}
    )
    assert mine.json()["usage"] == []
    peek = httpx.get(
        f"{traffic.deployment.url}/v1/usage",
        headers={"authorization": f"Bearer {other}"},
        params={"user": "payer"},
    )
    assert peek.status_code == 401
    admin = traffic.usage("--user", "payer", "--json", key=traffic.deployment.admin_key)
    assert admin.exit_code == 0, admin.output
    assert len(json.loads(admin.stdout)["usage"]) == 3


def test_verify_passes_on_the_real_books(traffic: Traffic) -> None:
    result = traffic.usage("--verify", "--insecure-no-tee", "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["ok"] and len(verdict["usage"]) == 3
    assert all(row["verified"] for row in verdict["usage"])
    assert {s["stack_small_id"] for s in verdict["stacks"]} == set(traffic.stacks.values())
    assert all(s["ok"] and s["used_units"] == s["signed_units"] for s in verdict["stacks"])
    human = traffic.usage("--verify", "--insecure-no-tee")
    assert human.exit_code == 0 and "usage verified: 3 receipt(s)" in human.output


def test_verify_refuses_keys_only_seen_without_a_tee(traffic: Traffic) -> None:
    result = traffic.usage("--verify")
    assert result.exit_code == 1
    assert "only ever attested with 'none' evidence" in result.output


def test_verify_fails_without_the_recorded_keys(traffic: Traffic, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        veil_app,
        [
            "usage",
            "--verify",
            "--insecure-no-tee",
            "--base-url",
            traffic.deployment.url,
            "--api-key",
            traffic.key,
        ],
        env={"VEIL_HOME": str(tmp_path)},  # a client that never attested this node
    )
    assert result.exit_code == 1
    assert "does not verify under any node key seen in an attested lock" in result.output


def _edit(database: Path, statement: str, *params: Any) -> None:
    with sqlite3.connect(database) as db:
        db.execute(statement, params)


def test_verify_fails_after_a_receipt_row_is_altered(traffic: Traffic) -> None:
    with sqlite3.connect(traffic.database) as db:
        row_id, token = db.execute(
            "SELECT id, receipt FROM usage_receipts ORDER BY id LIMIT 1"
        ).fetchone()
    token = bytes(token).decode()
    payload, signature = token.split(".")
    claims = json.loads(base64.b64decode(payload))
    claims["compute_units"] += 100  # the operator bills more than the node signed
    forged = base64.b64encode(json.dumps(claims).encode()).decode() + "." + signature
    _edit(
        traffic.database,
        "UPDATE usage_receipts SET receipt = ? WHERE id = ?",
        forged.encode(),
        row_id,
    )
    try:
        result = traffic.usage("--verify", "--insecure-no-tee", "--json")
        assert result.exit_code == 1, result.output
        verdict = json.loads(result.stdout)
        failed = [r for r in verdict["usage"] if not r["verified"]]
        assert [r["id"] for r in failed] == [row_id]
        assert "does not verify" in failed[0]["problems"][0]
        # The stack it belongs to no longer adds up either.
        assert [s["ok"] for s in verdict["stacks"]].count(False) == 1
    finally:
        _edit(
            traffic.database,
            "UPDATE usage_receipts SET receipt = ? WHERE id = ?",
            token.encode(),
            row_id,
        )
    assert traffic.usage("--verify", "--insecure-no-tee").exit_code == 0


def test_verify_fails_after_a_stacks_used_units_are_altered(traffic: Traffic) -> None:
    stack_id = traffic.stacks[EMBED]
    _edit(traffic.database, "UPDATE stacks SET used_units = used_units + 7 WHERE id = ?", stack_id)
    try:
        result = traffic.usage("--verify", "--insecure-no-tee")
        assert result.exit_code == 1, result.output
        assert f"stack {stack_id}: used" in result.output
        assert "but its verified receipts add up to" in result.output
    finally:
        _edit(
            traffic.database, "UPDATE stacks SET used_units = used_units - 7 WHERE id = ?", stack_id
        )
    assert traffic.usage("--verify", "--insecure-no-tee").exit_code == 0


def _saved_page(traffic: Traffic, path: Path) -> Path:
    """The file the console's Usage page downloads: the gateway's rows and stacks as they are."""
    headers = {"authorization": f"Bearer {traffic.key}"}
    usage = httpx.get(f"{traffic.deployment.url}/v1/usage", headers=headers).json()
    stacks = httpx.get(f"{traffic.deployment.url}/v1/stacks", headers=headers).json()["stacks"]
    path.write_text(json.dumps({**usage, "stacks": stacks, "attested_nodes": []}))
    return path


def test_verify_reads_the_consoles_receipts_file(traffic: Traffic, tmp_path: Path) -> None:
    saved = _saved_page(traffic, tmp_path / "receipts.json")
    result = traffic.usage("--verify", "--insecure-no-tee", "--json", "--file", str(saved))
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["ok"] and len(verdict["usage"]) == 3
    assert all(s["ok"] for s in verdict["stacks"])
    listed = traffic.usage("--file", str(saved))
    assert listed.exit_code == 0 and listed.stdout.count(" units ") == 3


def test_verify_of_a_file_fails_once_a_charge_in_it_is_altered(
    traffic: Traffic, tmp_path: Path
) -> None:
    saved = _saved_page(traffic, tmp_path / "receipts.json")
    document = json.loads(saved.read_text())
    document["usage"][0]["charged_units"] += 1
    saved.write_text(json.dumps(document))
    result = traffic.usage("--verify", "--insecure-no-tee", "--json", "--file", str(saved))
    assert result.exit_code == 1, result.output
    failed = [r for r in json.loads(result.stdout)["usage"] if not r["verified"]]
    assert len(failed) == 1 and "the signed receipt says" in failed[0]["problems"][0]


def test_a_file_refuses_options_that_ask_the_gateway(traffic: Traffic, tmp_path: Path) -> None:
    saved = _saved_page(traffic, tmp_path / "receipts.json")
    result = traffic.usage("--verify", "--file", str(saved), "--since", "0")
    assert result.exit_code != 0 and "--since and --user ask the gateway" in result.output
    result = traffic.usage("--verify", "--trust-page-nodes")
    assert result.exit_code != 0 and "give --file FILE" in result.output
