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


def v3_fields(kem_key: bytes, reservation_id: str | None) -> dict[str, object]:
    """What a veil-v3 envelope adds to the v1 shape (its node_dh_public_key: the kem key's
    X25519 part)."""
    return {
        "node_dh_public_key": b64(kem_key[-32:]),
        "protocol": "veil-v3",
        "kem": "mlkem768-x25519",
        "key_id": "0123456789abcdef",
        "request_id": b64(os.urandom(16)),
        "timestamp": 1_700_000_000,
        "reservation_id": reservation_id,
    }


def test_a_v3_envelope_reaches_the_node_of_its_kem_key_with_the_locks_reservation(
    tmp_path: Path,
) -> None:
    kem_key = os.urandom(1216)
    with serve_gateway(tmp_path, node={"kem_public_key": kem_key}) as gw:
        key, stack_id = gw.new_user("alice")
        path = ROUTES["chat"].confidential
        first = gw.lock(key, max_num_tokens=40).json()
        envelope = gw.envelope(stack_id, **v3_fields(kem_key, first["reservation_id"]))
        sent = gw.call(
            "POST", path, key, content=envelope,
            headers={RESERVATION_HEADER: first["reservation_id"]},
        )  # fmt: skip
        assert sent.status_code == 200, sent.text
        # Without the header the oldest held lock is claimed (as for atoma-sdk) and the ticket
        # names it: the node compares it with the reservation the envelope is sealed to.
        older = gw.lock(key, max_num_tokens=30).json()
        gw.lock(key, max_num_tokens=20)
        bound = gw.envelope(stack_id, **v3_fields(kem_key, "ef" * 16))
        assert gw.call("POST", path, key, content=bound).status_code == 200
        tickets = [seen.ticket for seen in gw.node.seen]
        assert [t.reservation_id for t in tickets] == [
            first["reservation_id"],
            older["reservation_id"],
        ]
        assert [t.units for t in tickets] == [40, 30]
        assert [seen.body for seen in gw.node.seen] == [envelope, bound]
