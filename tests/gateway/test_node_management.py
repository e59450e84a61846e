"""Nodes managed while the gateway runs (``/admin/nodes``, ``veil nodes``), against stand-in nodes
on loopback: a gateway started with no node, the checks an add makes (attestation under the
operator's policy among them), drain and remove with their refusals, and a node whose evidence
stops verifying leaving rotation."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from tests.gateway.node_stand_in import CHAT, serve_stand_in
from tests.gateway.served import Served
from tests.servers import ServerThread, free_port, wait_until
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.cli import nodes_app


@contextlib.contextmanager
def bare_gateway(data_dir: Path, key: Ed25519PrivateKey, **settings: Any) -> Iterator[Served]:
    """A gateway started with no node at all."""
    config = GatewaySettings(data_dir=data_dir, nodes=[], expire_interval_seconds=0.1, **settings)
    printed: list[str] = []
    app = create_gateway_app(config, key, on_admin_key=printed.append)
    with ServerThread(app) as server:
        yield Served(server.url, app, None, "", printed[0], printed)  # type: ignore[arg-type]


def cli(served: Served, *args: str) -> Any:
    return CliRunner().invoke(
        nodes_app, [*args, "--base-url", served.url, "--api-key", served.admin_key]
    )


def listed(served: Served) -> list[dict[str, Any]]:
    response = served.admin("GET", "/admin/nodes")
    assert response.status_code == 200, response.text
    nodes: list[dict[str, Any]] = response.json()["nodes"]
    return nodes


def user_with_stack(served: Served, name: str) -> str:
    made = served.admin("POST", "/admin/users", json={"name": name})
    assert made.status_code == 201, made.text
    stack = served.admin("POST", "/admin/stacks", json={"user": name, "model": CHAT, "units": 5000})
    assert stack.status_code == 201, stack.text
    key: str = made.json()["api_key"]
    return key


def test_a_gateway_with_no_node_gets_one_added_and_locks_on_it(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key) as (stand_in, node_url), bare_gateway(tmp_path, key) as gw:
        user = user_with_stack(gw, "alice")
        assert gw.lock(user).status_code == 404  # nobody serves the model yet
        assert listed(gw) == []
        added = cli(gw, "add", node_url + "/")
        assert added.exit_code == 0, added.output
        (node,) = listed(gw)
        assert node["url"] == node_url and node["state"] == "active"
        assert (node["healthy"], node["routed"]) == (True, True)
        assert node["key_id"] == stand_in.key_id
        assert node["models"] == {CHAT: "chat", "stand-in-embed": "embeddings"}
        assert node["attestation"]["ok"] is True and node["attestation"]["format"] == "none"
        assert node["release"] is None  # the stand-in shows no release
        locked = gw.lock(user)
        assert locked.status_code == 200, locked.text
        assert base64.b64decode(locked.json()["public_key"]) == stand_in.public_key
        shown = cli(gw, "list")
        assert shown.exit_code == 0 and node_url in shown.output and "none pass" in shown.output


def test_node_errors_have_their_own_codes(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key) as (_, node_url), bare_gateway(tmp_path, key) as gw:
        assert gw.admin("POST", "/admin/nodes", json={"url": node_url}).status_code == 201
        duplicate = gw.admin("POST", "/admin/nodes", json={"url": node_url + "/"})
        assert (duplicate.status_code, duplicate.json()["error"]["code"]) == (409, "CONFLICT")
        for path in ("/admin/nodes/drain", "/admin/nodes/remove", "/admin/nodes/undrain"):
            unknown = gw.admin("POST", path, json={"url": "http://127.0.0.1:9"})
            assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "NOT_FOUND")
        for bad in ("not a url", "ftp://127.0.0.1:1", "http://127.0.0.1:99999"):
            malformed = gw.admin("POST", "/admin/nodes", json={"url": bad})
            assert malformed.status_code == 400, bad
            assert malformed.json()["error"]["code"] == "INVALID_BODY"
        down = gw.admin("POST", "/admin/nodes", json={"url": f"http://127.0.0.1:{free_port()}"})
        assert (down.status_code, down.json()["error"]["code"]) == (503, "SERVICE_UNAVAILABLE")
        busy = gw.admin("POST", "/admin/nodes/remove", json={"url": node_url})
        assert (busy.status_code, busy.json()["error"]["code"]) == (409, "CONFLICT")
        assert "drain it first" in busy.json()["error"]["message"]
        user = user_with_stack(gw, "bob")
        assert gw.call("GET", "/admin/nodes", user).status_code == 401  # admin keys only
        assert len(listed(gw)) == 1
        refused = cli(gw, "add", node_url)
        assert refused.exit_code == 1 and "CONFLICT" in refused.output


def test_the_strict_default_refuses_a_node_without_a_tee(tmp_path: Path) -> None:
    assert GatewaySettings.model_fields["insecure_nodes_no_tee"].default is False
    key = Ed25519PrivateKey.generate()
    with (
        serve_stand_in(key) as (_, node_url),
        bare_gateway(tmp_path, key, insecure_nodes_no_tee=False) as gw,
    ):
        refused = gw.admin("POST", "/admin/nodes", json={"url": node_url})
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert "attestation did not verify" in message and "no TEE" in message
        assert listed(gw) == []


def test_a_node_whose_evidence_stops_verifying_leaves_rotation(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with (
        serve_stand_in(key) as (stand_in, node_url),
        bare_gateway(tmp_path, key, health_interval_seconds=0.2) as gw,
    ):
        user = user_with_stack(gw, "carol")
        assert gw.admin("POST", "/admin/nodes", json={"url": node_url}).status_code == 201
        assert gw.lock(user).status_code == 200
        stand_in.evidence_key = os.urandom(32)  # its evidence now vouches for another key
        wait_until(lambda: not listed(gw)[0]["healthy"], 10, "the failed attestation check")
        (node,) = listed(gw)
        assert node["attestation"]["ok"] is False
        assert "expected keys" in node["reason"] and node["routed"] is False
        refused = gw.lock(user)
        assert refused.status_code == 503, refused.text
        stand_in.evidence_key = None  # verifies again: back in rotation
        wait_until(lambda: listed(gw)[0]["healthy"], 10, "the next attestation check")
        assert gw.lock(user).status_code == 200


def test_drain_stops_new_locks_and_remove_waits_for_the_last_lock(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key) as (_, node_url), bare_gateway(tmp_path, key) as gw:
        user = user_with_stack(gw, "dave")
        assert gw.admin("POST", "/admin/nodes", json={"url": node_url}).status_code == 201
        held = gw.lock(user, max_num_tokens=100, timeout=2)
        assert held.status_code == 200
        drained = cli(gw, "drain", node_url)
        assert drained.exit_code == 0, drained.output
        (node,) = listed(gw)
        assert (node["state"], node["routed"], node["live_reservations"]) == ("draining", False, 1)
        refused = gw.lock(user)
        assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]
        assert gw.call("GET", "/v1/models").json()["data"] == []
        busy = gw.admin("POST", "/admin/nodes/remove", json={"url": node_url})
        assert busy.status_code == 409 and "1 lock" in busy.json()["error"]["message"]
        # The held lock expires (2 s); then the drained, idle node may go.
        wait_until(lambda: listed(gw)[0]["live_reservations"] == 0, 15, "the lock's expiry")
        removed = cli(gw, "remove", node_url)
        assert removed.exit_code == 0, removed.output
        assert listed(gw) == []
        assert gw.lock(user).status_code == 404
        # Back again, with the same node id.
        again = gw.admin("POST", "/admin/nodes", json={"url": node_url})
        assert again.status_code == 201 and again.json()["node_small_id"] == node["node_small_id"]


def test_force_removes_a_busy_node_and_the_cli_needs_an_admin_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key) as (_, node_url), bare_gateway(tmp_path, key) as gw:
        user = user_with_stack(gw, "erin")
        assert gw.admin("POST", "/admin/nodes", json={"url": node_url}).status_code == 201
        assert gw.lock(user).status_code == 200
        removed = cli(gw, "remove", node_url, "--force")
        assert removed.exit_code == 0, removed.output
        assert listed(gw) == []
        keyless = CliRunner().invoke(
            nodes_app,
            ["list", "--base-url", gw.url],
            env={"VEIL_ADMIN_KEY": "", "VEIL_API_KEY": ""},
        )
        assert keyless.exit_code == 1 and "AUTH_ERROR" in keyless.output


@pytest.mark.parametrize("state", ["draining", "removed"])
def test_a_node_flag_does_not_undo_an_operators_move(tmp_path: Path, state: str) -> None:
    key = Ed25519PrivateKey.generate()
    with serve_stand_in(key) as (_, node_url):
        with bare_gateway(tmp_path, key) as gw:
            assert gw.admin("POST", "/admin/nodes", json={"url": node_url}).status_code == 201
            assert gw.admin("POST", "/admin/nodes/drain", json={"url": node_url}).status_code == 200
            if state == "removed":
                done = gw.admin("POST", "/admin/nodes/remove", json={"url": node_url})
                assert done.status_code == 200
        config = GatewaySettings(data_dir=tmp_path, nodes=[node_url], expire_interval_seconds=0.1)
        app = create_gateway_app(config, key)
        with ServerThread(app) as server:
            gw = Served(server.url, app, None, "", gw.admin_key)  # type: ignore[arg-type]
            shown = [n["state"] for n in listed(gw)]
            assert shown == ([] if state == "removed" else ["draining"])
