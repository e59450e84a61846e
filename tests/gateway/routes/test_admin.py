"""Admin router: users and their limits, stacks and top-ups (admin API keys only)."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.node_stand_in import CHAT
from tests.gateway.served import serve_gateway


def test_users_are_created_with_a_key_shown_once_and_their_limits(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, default_requests_per_minute=600) as gw:
        made = gw.admin("POST", "/admin/users", json={"name": "alice", "concurrency": 2})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["user"] == "alice" and body["api_key"].startswith("veil_")
        assert (body["requests_per_minute"], body["concurrency"]) == (None, 2)
        assert body["effective"] == {"requests_per_minute": 600, "concurrency": 2}
        assert gw.call("GET", "/v1/stacks", body["api_key"]).status_code == 200
        again = gw.admin("POST", "/admin/users", json={"name": "alice"})
        assert again.status_code == 400 and "already exists" in again.text
        extra = gw.admin("POST", "/admin/users", json={"name": "bob", "admin": True})
        assert extra.status_code == 400  # unknown fields are refused


def test_limits_are_set_by_post_or_patch_and_zero_means_the_default(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, default_concurrency=32) as gw:
        gw.new_user("alice", concurrency=2)
        patched = gw.admin("PATCH", "/admin/users/alice/limits", json={"requests_per_minute": 9})
        assert patched.status_code == 200, patched.text
        assert patched.json()["effective"] == {"requests_per_minute": 9, "concurrency": 2}
        posted = gw.admin("POST", "/admin/users/alice/limits", json={"concurrency": 0})
        assert posted.json()["concurrency"] is None
        assert posted.json()["effective"]["concurrency"] == 32
        assert gw.admin("PATCH", "/admin/users/nobody/limits", json={}).status_code == 404
        long_name = "n" * 129
        assert gw.admin("POST", f"/admin/users/{long_name}/limits", json={}).status_code == 400


def test_stacks_are_created_listed_shown_and_topped_up(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        gw.new_user("alice", units=5)
        made = gw.admin(
            "POST",
            "/admin/stacks",
            json={"user": "alice", "model": CHAT, "units": 100, "price_per_million": 7},
        )
        assert made.status_code == 201, made.text
        stack = made.json()
        assert (stack["total_units"], stack["price_per_million"], stack["state"]) == (
            100,
            7,
            "active",
        )
        listed = gw.admin("GET", "/admin/stacks?user=alice").json()["stacks"]
        assert sorted(s["total_units"] for s in listed) == [5, 100]
        assert gw.admin("GET", "/admin/stacks?user=nobody").status_code == 404
        topped = gw.admin(
            "POST", f"/admin/stacks/{stack['stack_small_id']}/top-up", json={"units": 50}
        )
        assert topped.json()["total_units"] == 150
        assert gw.stack(stack["stack_small_id"])["free_units"] == 150
        assert gw.admin("GET", "/admin/stacks/999").status_code == 404
        assert gw.admin("POST", "/admin/stacks/1/top-up", json={"units": 0}).status_code == 400


def test_a_user_key_is_refused_on_every_admin_route(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        for method, path in (
            ("POST", "/admin/users"),
            ("PATCH", "/admin/users/alice/limits"),
            ("POST", "/admin/stacks"),
            ("GET", "/admin/stacks"),
            ("GET", f"/admin/stacks/{stack_id}"),
            ("POST", f"/admin/stacks/{stack_id}/top-up"),
        ):
            response = gw.call(method, path, key, json={"units": 1})
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["message"] == "this route needs an admin API key"
        assert gw.stack(stack_id)["total_units"] == 10_000
