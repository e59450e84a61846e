"""The client's pure pieces, without servers: SSE framing, planning, error mapping, locks."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from veil.client import cli, errors, sdk
from veil.client.streaming import Receipt, ResponseOpener, SSEParser, StreamChecker
from veil.protocol import v1
from veil.protocol.envelopes import Usage


def events(lines: list[str]) -> list[str]:
    parser = SSEParser()
    return [d for line in lines if (d := parser.feed(line)) is not None]


def test_sse_keeps_data_and_drops_comments_and_other_fields() -> None:
    lines = [
        ": veil-receipt abc",
        "",
        'data: {"a":1}',
        "",
        "event: x",
        "id: 7",
        'data:{"b":2}',
        "",
        ": keep-alive",
        "",
        "data: tail-without-blank-line",
    ]
    assert events(lines) == ['{"a":1}', '{"b":2}']


@given(
    st.lists(
        st.lists(
            st.text(alphabet=st.characters(exclude_characters="\r\n")), min_size=1, max_size=3
        ),
        max_size=5,
    )
)
def test_sse_multi_line_data_round_trips(payloads: list[list[str]]) -> None:
    lines = []
    for parts in payloads:
        lines += [f"data: {p}" for p in parts] + [""]
    assert events(lines) == ["\n".join(parts) for parts in payloads]


def test_gateway_root() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert sdk.gateway_root(url) == "http://h:1"
    assert sdk.gateway_root("https://h/prefix/v1") == "https://h/prefix"


def test_cli_default_matches_the_sdk() -> None:
    assert cli.DEFAULT_BASE_URL == sdk.DEFAULT_BASE_URL


def test_plans_reserve_what_the_node_will_spend() -> None:
    chat = sdk.plan_request("chat", {"model": "m", "messages": [], "max_tokens": 8})
    assert chat.units == 8 + len(chat.body) and not chat.stream
    default = sdk.plan_request("chat", {"model": "m", "messages": [], "stream": True})
    assert default.units == sdk.DEFAULT_CHAT_MAX_TOKENS + len(default.body) and default.stream
    images = sdk.plan_request("images", {"model": "i", "prompt": "p", "n": 3, "size": "16x8"})
    assert images.units == 3 * 16 * 8
    embeddings = sdk.plan_request("embeddings", {"model": "e", "input": "x"})
    assert embeddings.units is None
    assert json.loads(chat.body) == {"model": "m", "messages": [], "max_tokens": 8}
    with pytest.raises(ValueError, match="model"):
        sdk.plan_request("chat", {"messages": []})


def test_server_errors_map_to_their_classes() -> None:
    body = {"error": {"code": "STALE_NODE_KEY", "message": "re-lock"}}
    stale = errors.api_error(409, body)
    assert isinstance(stale, errors.StaleNodeKeyError) and stale.retryable
    assert (stale.status, stale.code, stale.message) == (409, "STALE_NODE_KEY", "re-lock")
    unknown = errors.api_error(418, None)
    assert type(unknown) is errors.InternalServerError and unknown.status == 418
    assert not errors.api_error(402, {"error": {"code": "BALANCE_ERROR"}}).retryable
    retryable = {cls.code for cls in errors.API_ERRORS if cls.retryable}
    assert retryable == {"STALE_NODE_KEY", "UNAVAILABLE_STACK", "SERVICE_UNAVAILABLE"}


def lock_json(**change: object) -> bytes:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    signing = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    lock: dict[str, object] = {
        "public_key": base64.b64encode(public).decode(), "node_small_id": 1,
        "stack_small_id": 2, "key_id": sdk.node_key_id(public),
        "node_signing_public_key": base64.b64encode(signing).decode(), "reserved_units": 10,
    }  # fmt: skip
    lock.update(change)
    return json.dumps({k: v for k, v in lock.items() if v is not None}).encode()


def test_locks_are_checked() -> None:
    assert sdk.accept_lock(lock_json()).stack_small_id == 2
    with pytest.raises(errors.UnverifiableNode, match="signing key"):
        sdk.accept_lock(lock_json(node_signing_public_key=None))
    with pytest.raises(errors.UnverifiableNode, match="key_id"):
        sdk.accept_lock(lock_json(key_id="0" * 16))
    with pytest.raises(errors.UnverifiableNode):
        sdk.accept_lock(b"{}")
    low_order = base64.b64encode(bytes(32)).decode()
    lock = sdk.accept_lock(lock_json(public_key=low_order, key_id=None))
    plan = sdk.plan_request("embeddings", {"model": "e", "input": "x"})
    with pytest.raises(errors.UnverifiableNode, match="unusable"):
        sdk.seal(plan, lock, 1, 0.0)


def test_a_stream_without_a_final_chunk_is_truncated() -> None:
    session = v1.Session(bytes(32))
    signer = Ed25519PrivateKey.generate()
    receipt = Receipt("chat", "m", 0, "k", 0, None)
    checker = StreamChecker(ResponseOpener(session, signer.public_key(), receipt))

    def event(chunk: dict[str, object], usage: dict[str, int] | None = None) -> str:
        plaintext = json.dumps(chunk).encode()
        digest = v1.body_hash(plaintext)
        nonce, ciphertext = session.seal(plaintext)
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        sealed = {
            "ciphertext": b64(ciphertext),
            "nonce": b64(nonce),
            "response_hash": b64(digest),
            "signature": b64(signer.sign(digest)),
        }
        return json.dumps({**sealed, **({"usage": usage} if usage else {})})

    opening = {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    checker.event(event(opening))
    with pytest.raises(errors.StreamTruncated):
        checker.end()
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    checker.event(event({"id": "c", "choices": [], "usage": usage}, usage))
    checker.end()
    assert receipt.usage == Usage(**usage) and receipt.signature_verified
    assert "signature verified" in receipt.summary() and "units charged 2" in receipt.summary()
    with pytest.raises(errors.StreamCorrupt, match="after the stream's final chunk"):
        checker.event(event(opening))


def test_every_error_class_has_a_code_and_is_a_client_error() -> None:
    classes = [errors.APIError, *errors.API_ERRORS, errors.IntegrityError, errors.UnverifiableNode,
               errors.MalformedResponse, errors.DecryptionError, errors.ResponseHashMismatch,
               errors.SignatureInvalid, errors.UsageMismatch, errors.StreamTruncated,
               errors.StreamCorrupt, errors.PlaintextRefused, errors.TransportError]  # fmt: skip
    codes = [cls.code for cls in classes]
    assert all(issubclass(cls, errors.VeilClientError) for cls in classes)
    assert len(set(codes)) == len(codes)
    assert errors.TagMismatch is errors.DecryptionError
