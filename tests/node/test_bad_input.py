"""Bad input: each case gets its own specific wire code, never a 500, never plaintext echoed."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.node.conftest import CHAT, EMBED, RunningNode
from veil.hazmat import v1

ROUTE = "/v1/confidential/chat/completions"
CANARY = "canary-7f3a9c-plaintext"


def body(**extra: object) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": CHAT,
        "messages": [{"role": "user", "content": CANARY}],
        "max_tokens": 2,
    }
    b.update(extra)
    return b


def sealed(node: RunningNode, **kw: Any) -> dict[str, Any]:
    envelope, _ = node.seal(body(), units=256, **kw)
    return json.loads(envelope.model_dump_json())


def flip(b64: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def raw_envelope(node: RunningNode, plaintext: bytes, model: str = CHAT) -> dict[str, Any]:
    envelope, _ = v1.seal_request(
        node.public_key, plaintext, model_name=model, stack_small_id=1, num_compute_units=256
    )
    return json.loads(envelope.model_dump_json())


Case = Callable[[RunningNode], Any]

CASES: dict[str, tuple[Case, int, str]] = {
    "malformed json": (lambda n: b'{"ciphertext": ', 400, "INVALID_BODY"),
    "not an object": (lambda n: b"[1, 2, 3]", 400, "INVALID_BODY"),
    "not utf-8": (lambda n: b"\xff\xfe\x00garbage", 400, "INVALID_BODY"),
    "missing field": (
        lambda n: {k: v for k, v in sealed(n).items() if k != "salt"},
        400,
        "INVALID_BODY",
    ),
    "bad base64": (lambda n: {**sealed(n), "nonce": "@@@not-base64@@@"}, 400, "INVALID_BODY"),
    "short salt": (
        lambda n: {**sealed(n), "salt": base64.b64encode(bytes(8)).decode()},
        400,
        "INVALID_BODY",
    ),
    "long client key": (
        lambda n: {**sealed(n), "client_dh_public_key": base64.b64encode(bytes(33)).decode()},
        400,
        "INVALID_BODY",
    ),
    "low-order client key": (
        lambda n: {**sealed(n), "client_dh_public_key": base64.b64encode(bytes(32)).decode()},
        400,
        "INVALID_BODY",
    ),
    "string stack id": (lambda n: {**sealed(n), "stack_small_id": "1"}, 400, "INVALID_BODY"),
    "unknown node key": (
        lambda n: {
            **sealed(n),
            "node_dh_public_key": base64.b64encode(
                X25519PrivateKey.generate().public_key().public_bytes_raw()
            ).decode(),
        },
        409,
        "STALE_NODE_KEY",
    ),
    "tampered ciphertext": (
        lambda n: {**(s := sealed(n)), "ciphertext": flip(s["ciphertext"])},
        422,
        "DECRYPTION_FAILED",
    ),
    "tampered tag": (
        lambda n: {**(s := sealed(n)), "ciphertext": flip(s["ciphertext"], -1)},
        422,
        "DECRYPTION_FAILED",
    ),
    "tampered nonce": (
        lambda n: {**(s := sealed(n)), "nonce": flip(s["nonce"])},
        422,
        "DECRYPTION_FAILED",
    ),
    "tampered salt": (
        lambda n: {**(s := sealed(n)), "salt": flip(s["salt"])},
        422,
        "DECRYPTION_FAILED",
    ),
    "hash mismatch": (
        lambda n: {**(s := sealed(n)), "plaintext_body_hash": flip(s["plaintext_body_hash"])},
        422,
        "DECRYPTION_FAILED",
    ),
    "unknown model": (lambda n: {**sealed(n), "model_name": "no-such-model"}, 404, "NOT_FOUND"),
    "plaintext not json": (
        lambda n: raw_envelope(n, b"not json " + CANARY.encode()),
        400,
        "INVALID_BODY",
    ),
    "plaintext is an embeddings body": (
        lambda n: raw_envelope(n, json.dumps({"model": CHAT, "input": CANARY}).encode()),
        400,
        "INVALID_BODY",
    ),
    "plaintext names another model": (
        lambda n: raw_envelope(n, json.dumps(body(model=EMBED)).encode()),
        400,
        "INVALID_BODY",
    ),
    "stream flag disagrees": (
        lambda n: {
            **json.loads(n.seal(body(stream=True), units=256, stream=False)[0].model_dump_json())
        },
        400,
        "INVALID_BODY",
    ),
    "negative max_tokens": (
        lambda n: raw_envelope(n, json.dumps(body(max_tokens=-5)).encode()),
        400,
        "INVALID_BODY",
    ),
    "body over the limit": (
        lambda n: b"{" + b" " * (5 * 1024 * 1024) + b"}",
        413,
        "PAYLOAD_TOO_LARGE",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gets_its_code(
    node: RunningNode, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, status, code = CASES[case]
    caplog.set_level(logging.DEBUG)
    response = node.post(ROUTE, make(node))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert CANARY not in response.text
    assert CANARY not in caplog.text
    for form in (CANARY.encode().hex(), base64.b64encode(CANARY.encode()).decode()):
        assert form not in response.text and form not in caplog.text


def test_validation_errors_name_the_field_but_not_its_value(node: RunningNode) -> None:
    secret_looking = "c2VjcmV0LXZhbHVlLW5vdC1iYXNlNjQ=="  # invalid padding
    response = node.post(ROUTE, {**sealed(node), "salt": secret_looking})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "salt" in message and secret_looking not in message


@pytest.mark.parametrize(
    "route",
    [
        "/v1/confidential/embeddings",
        "/v1/confidential/images/generations",
        "/v1/chat/completions",
        "/v1/embeddings",
    ],
)
def test_other_routes_refuse_malformed_json_too(node: RunningNode, route: str) -> None:
    response = node.post(route, b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_BODY"


def test_unknown_route_and_wrong_method_use_the_error_shape(node: RunningNode) -> None:
    import httpx

    for response in (httpx.get(f"{node.url}/v1/nope"), httpx.get(f"{node.url}{ROUTE}")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
