"""Plain router: OpenAI's own routes, reserved, claimed and forwarded in one request."""

from __future__ import annotations

import json
from pathlib import Path

from tests.gateway.node_stand_in import CHAT, EMBED
from tests.gateway.served import serve_gateway
from veil.wire.routes import ROUTES


def test_models_lists_what_the_healthy_nodes_serve(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        listed = gw.call("GET", "/v1/models").json()
        assert listed["object"] == "list"
        assert [(m["id"], m["kind"]) for m in listed["data"]] == [
            (CHAT, "chat"),
            (EMBED, "embeddings"),
        ]


def test_a_chat_request_holds_its_budget_plus_its_size_and_is_charged_the_receipt(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        raw = json.dumps(
            {"model": CHAT, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        response = gw.call(
            "POST",
            ROUTES["chat"].plain,
            key,
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        (seen,) = gw.node.seen
        assert seen.path == ROUTES["chat"].plain and seen.body == raw
        # Bytes bound a byte-level tokenizer's prompt tokens from above.
        assert seen.ticket.units == 20 + len(raw)
        stack = gw.stack(stack_id)
        assert (stack["reserved_units"], stack["used_units"]) == (0, gw.node.units)


def test_embeddings_hold_the_default_units(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, default_embedding_units=77) as gw:
        key, _ = gw.new_user("alice")
        gw.admin("POST", "/admin/stacks", json={"user": "alice", "model": EMBED, "units": 500})
        response = gw.call(
            "POST", ROUTES["embeddings"].plain, key, json={"model": EMBED, "input": "x"}
        )
        assert response.status_code == 200, response.text
        assert gw.node.seen[0].ticket.units == 77


def test_a_plain_request_without_a_usable_model_is_400_and_reaches_no_node(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        bodies: list[dict[str, object]] = [{"messages": []}, {"model": ""}, {"model": 5}]
        for body in bodies:
            response = gw.call("POST", ROUTES["chat"].plain, key, json=body)
            assert response.status_code == 400, body
            assert "model" in response.json()["error"]["message"]
        unknown = gw.call("POST", ROUTES["chat"].plain, key, json={"model": "nope", "messages": []})
        assert unknown.status_code == 400  # not a valid chat request: refused before routing
        assert gw.node.seen == []
        assert gw.stack(stack_id)["reserved_units"] == 0
