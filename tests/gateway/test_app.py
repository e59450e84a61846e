"""The gateway app as a whole, on loopback in front of a stand-in node: startup (state on
``app.state``, the admin key, the demo stacks), HTTP-level errors, health, and what every metered
route does alike (errors, metrics, authentication, rate-limit admission)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.gateway.node_stand_in import CHAT, EMBED
from tests.gateway.served import serve_gateway
from veil.gateway.service import Gateway


def test_startup_puts_the_gateway_on_app_state_and_prints_the_admin_key_once(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path, bootstrap_units=500) as gw:
        gateway = gw.app.state.gateway
        assert isinstance(gateway, Gateway)
        assert [n.url for n in gateway.registry.nodes] == [gw.node_url]
        assert len(gw.printed) == 1 and gw.admin_key.startswith("veil_")
        # First start of a demo: the admin has a stack per served model.
        stacks = gw.admin("GET", "/v1/stacks").json()["stacks"]
        assert sorted((s["model"], s["total_units"]) for s in stacks) == [
            (CHAT, 500),
            (EMBED, 500),
        ]
    with serve_gateway(tmp_path) as again:  # same ledger: the admin key exists already
        assert again.printed == []


def test_unknown_routes_and_methods_are_404_in_the_error_shape(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        for method, path in (("GET", "/nope"), ("DELETE", "/v1/nodes/lock"), ("PUT", "/health")):
            response = gw.call(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json() == {"error": {"code": "NOT_FOUND", "message": "no such route"}}


def test_a_bad_path_parameter_is_400_naming_it_and_is_counted(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        for stack_id in (str(2**63), "-1", "x"):
            response = gw.admin("GET", f"/admin/stacks/{stack_id}")
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "INVALID_BODY"
            assert error["message"] == "invalid path or query parameter: stack_id"
            assert stack_id not in error["message"] or stack_id == "x"
        counted = gw.metric(
            "veil_gateway_requests_total", route="admin_show_stack", code="INVALID_BODY"
        )
        assert counted == 3


def test_health_is_503_degraded_with_the_reason_while_no_node_is_routed_to(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path, node={"require_tickets": False}) as gw:
        response = gw.call("GET", "/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded"
        (node,) = body["nodes"]
        assert node["healthy"] is False and "without a gateway ticket" in node["reason"]
        assert gw.call("GET", "/v1/models").json()["data"] == []
    with serve_gateway(tmp_path / "2") as gw:
        response = gw.call("GET", "/health")
        assert response.status_code == 200
        assert response.json()["nodes"][0] == {
            "node_small_id": 1,
            "url": gw.node_url,
            "healthy": True,
            "reason": None,
        }


def test_every_metered_route_counts_its_answers_by_route_and_code(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        key, _ = gw.new_user("alice")
        assert gw.lock(key).status_code == 200
        assert gw.lock("veil_wrong").status_code == 401
        assert gw.call("GET", "/health").status_code == 200
        assert gw.metric("veil_gateway_requests_total", route="lock", code="OK") == 1
        assert gw.metric("veil_gateway_requests_total", route="lock", code="AUTH_ERROR") == 1
        assert gw.metric("veil_gateway_requests_total", route="admin_create_user", code="OK") == 1
        metrics = gw.call("GET", "/metrics").text
        assert 'veil_gateway_request_seconds_count{route="lock"} 2.0' in metrics
        assert 'route="health"' not in metrics  # monitoring is not metered


def test_a_caller_is_authenticated_before_its_body_is_read(tmp_path: Path) -> None:
    big = b"x" * (5 * 2**20)  # over the 4 MiB limit
    with serve_gateway(tmp_path) as gw:
        key, _ = gw.new_user("alice")
        for path in ("/v1/nodes/lock", "/v1/confidential/chat/completions", "/admin/users"):
            anonymous = gw.call("POST", path, content=big)
            assert anonymous.status_code == 401, (path, anonymous.text)
            assert anonymous.json()["error"]["message"] == "missing bearer API key"
        assert gw.call("POST", "/v1/nodes/lock", key, content=big).status_code == 413
        refused = gw.call("POST", "/admin/users", key, content=big)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "this route needs an admin API key"
        for header in ("Basic abc", "Bearer", "Token veil_x"):
            response = gw.call("GET", "/v1/stacks", headers={"authorization": header})
            assert response.status_code == 401, header


def test_the_requests_per_minute_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        key, _ = gw.new_user("alice", requests_per_minute=2)
        assert [gw.call("GET", "/v1/stacks", key).status_code for _ in range(2)] == [200, 200]
        limited = gw.call("GET", "/v1/stacks", key)
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert (error["code"], error["limit"]) == ("TOO_MANY_REQUESTS", "requests_per_minute")
        assert int(limited.headers["retry-after"]) == error["retry_after_seconds"] >= 1
        # Admin keys are not limited.
        assert all(gw.admin("GET", "/v1/stacks").status_code == 200 for _ in range(5))


def test_a_streams_concurrency_slot_is_held_until_its_last_byte(tmp_path: Path) -> None:
    gate = threading.Event()
    with serve_gateway(tmp_path, node={"answer": "stream", "chunks": 2, "gate": gate}) as gw:
        key, stack_id = gw.new_user("alice", concurrency=1)
        body = {
            "model": CHAT,
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        auth = {"authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", f"{gw.url}/v1/chat/completions", json=body, headers=auth, timeout=30
        ) as streaming:
            assert streaming.status_code == 200
            busy = gw.call("GET", "/v1/stacks", key)  # while the stream is open
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["limit"] == "concurrency"
            gate.set()
            lines = list(streaming.iter_lines())
        assert "data: [DONE]" in lines
        assert gw.call("GET", "/v1/stacks", key).status_code == 200  # the slot came back
        assert gw.stack(stack_id)["used_units"] == 2 * gw.node.units


def test_a_node_refusal_weighs_more_in_the_callers_minute(tmp_path: Path) -> None:
    with serve_gateway(
        tmp_path, failed_request_weight=4, node={"answer": "error", "units": 0}
    ) as gw:
        key, _ = gw.new_user("alice", requests_per_minute=5)
        body = {"model": CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        refused = gw.call("POST", "/v1/chat/completions", key, json=body)
        assert refused.status_code == 400 and "the node refuses this" in refused.text
        # 1 request + 3 more for the refusal: one more fits in 5, then the limit.
        assert gw.call("GET", "/v1/stacks", key).status_code == 200
        assert gw.call("GET", "/v1/stacks", key).status_code == 429
    with serve_gateway(tmp_path / "2", failed_request_weight=4) as gw:
        key, _ = gw.new_user("bob", requests_per_minute=5)
        assert gw.lock(key, model="no-such-model").status_code == 404  # ours, not the node's
        assert [gw.call("GET", "/v1/stacks", key).status_code for _ in range(4)] == [200] * 4
