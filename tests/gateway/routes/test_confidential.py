"""Confidential router: a sealed envelope is moved to the node it was sealed to, byte for byte,
and charged to the caller's lock."""

from __future__ import annotations

import os
from pathlib import Path

from tests.gateway.served import b64, serve_gateway
from veil.wire.envelopes import RESERVATION_HEADER
from veil.wire.routes import ROUTES


def test_an_envelope_goes_to_its_node_untouched_and_is_charged_to_the_lock(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        lock = gw.lock(key, max_num_tokens=50).json()
        envelope = gw.envelope(stack_id)
        response = gw.call(
            "POST",
            ROUTES["chat"].confidential,
            key,
            content=envelope,
            headers={RESERVATION_HEADER: lock["reservation_id"]},
        )
        assert response.status_code == 200, response.text
        (seen,) = gw.node.seen
        assert (seen.path, seen.body) == (ROUTES["chat"].confidential, envelope)
        assert (seen.ticket.stack_small_id, seen.ticket.units) == (stack_id, 50)
        assert gw.stack(stack_id)["used_units"] == gw.node.units
        again = gw.call("POST", ROUTES["chat"].confidential, key, content=gw.envelope(stack_id))
        assert again.status_code == 425  # that lock was used; no other is held
        assert again.json()["error"]["code"] == "UNAVAILABLE_STACK"


def test_each_confidential_route_forwards_to_the_same_path_on_the_node(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        for route in ROUTES.values():
            assert gw.lock(key).status_code == 200
            response = gw.call("POST", route.confidential, key, content=gw.envelope(stack_id))
            assert response.status_code == 200, (route, response.text)
        assert [s.path for s in gw.node.seen] == [r.confidential for r in ROUTES.values()]


def test_an_envelope_that_cannot_be_routed_is_refused_and_charges_nothing(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path) as gw:
        key, stack_id = gw.new_user("alice")
        assert gw.lock(key).status_code == 200
        path = ROUTES["chat"].confidential
        cases = {
            "a stale node key": (
                gw.envelope(stack_id, node_dh_public_key=b64(os.urandom(32))),
                {},
                409,
            ),
            "a model the node lacks": (gw.envelope(stack_id, model_name="other"), {}, 404),
            "a bad reservation handle": (gw.envelope(stack_id), {RESERVATION_HEADER: "x"}, 400),
            "no envelope at all": (b'{"model": "x"}', {}, 400),
        }
        for what, (body, headers, status) in cases.items():
            response = gw.call("POST", path, key, content=body, headers=headers)
            assert response.status_code == status, (what, response.text)
        assert gw.node.seen == []
        stack = gw.stack(stack_id)
        assert stack["used_units"] == 0 and stack["reserved_units"] > 0  # the lock still holds
