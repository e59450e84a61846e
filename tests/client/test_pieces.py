"""The client's pure pieces, without servers: SSE framing, planning, error mapping, locks and
their attestation, and the v1 / v2 openers against a node simulated with the protocol module."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from veil.attestation import NoTeeProvider, Policy, build_evidence
from veil.client import cli, errors, options
from veil.client import lock as locks
from veil.client import plan as plans
from veil.client.opening import ResponseOpener, V2ResponseOpener, open_single
from veil.client.receipt import Receipt
from veil.client.streaming import StreamChecker, event_data
from veil.hazmat import v1, v2
from veil.wire.envelopes import Usage


def events(lines: list[str]) -> list[str]:
    body = "".join(line + "\n" for line in lines).encode()
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return list(event_data(response))


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
        assert options.gateway_root(url) == "http://h:1"
    assert options.gateway_root("https://h/prefix/v1") == "https://h/prefix"


def test_cli_default_matches_the_sdk() -> None:
    assert cli.DEFAULT_BASE_URL == options.DEFAULT_BASE_URL


def test_plans_reserve_what_the_node_will_spend() -> None:
    chat = plans.plan_request("chat", {"model": "m", "messages": [], "max_tokens": 8})
    assert chat.units == 8 + len(chat.body) and not chat.stream
    default = plans.plan_request("chat", {"model": "m", "messages": [], "stream": True})
    assert default.units == options.DEFAULT_CHAT_MAX_TOKENS + len(default.body) and default.stream
    images = plans.plan_request("images", {"model": "i", "prompt": "p", "n": 3, "size": "16x8"})
    assert images.units == 3 * 16 * 8
    embeddings = plans.plan_request("embeddings", {"model": "e", "input": "x"})
    assert embeddings.units is None
    assert json.loads(chat.body) == {"model": "m", "messages": [], "max_tokens": 8}
    with pytest.raises(ValueError, match="model"):
        plans.plan_request("chat", {"messages": []})


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


NONCE = bytes(range(32))
DEV = Policy(allow_no_tee=True)  # these locks come from no TEE, like the test nodes


def lock_json(
    *,
    evidence_keys: tuple[bytes, bytes] | None = None,
    evidence_nonce: bytes = NONCE,
    **change: object,
) -> bytes:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    signing = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    if isinstance(change.get("public_key"), bytes):
        public = change.pop("public_key")  # type: ignore[assignment]
    x25519, ed25519 = evidence_keys or (public, signing)
    evidence = build_evidence(NoTeeProvider(), x25519, ed25519, evidence_nonce)
    lock: dict[str, object] = {
        "public_key": base64.b64encode(public).decode(), "node_small_id": 1,
        "stack_small_id": 2, "key_id": locks.node_key_id(public),
        "node_signing_public_key": base64.b64encode(signing).decode(), "reserved_units": 10,
        "evidence": evidence.model_dump(mode="json"),
    }  # fmt: skip
    lock.update(change)
    return json.dumps({k: v for k, v in lock.items() if v is not None}).encode()


def test_locks_are_checked() -> None:
    lock = locks.accept_lock(lock_json(), DEV, NONCE)
    assert lock.stack_small_id == 2
    assert lock.attestation.ok and lock.attestation.insecure and lock.attestation.format == "none"
    with pytest.raises(errors.UnverifiableNode, match="signing key"):
        locks.accept_lock(lock_json(node_signing_public_key=None), DEV, NONCE)
    with pytest.raises(errors.UnverifiableNode, match="key_id"):
        locks.accept_lock(lock_json(key_id="0" * 16), DEV, NONCE)
    with pytest.raises(errors.UnverifiableNode):
        locks.accept_lock(b"{}", DEV, NONCE)
    lock = locks.accept_lock(lock_json(public_key=bytes(32), key_id=None), DEV, NONCE)
    plan = plans.plan_request("embeddings", {"model": "e", "input": "x"})
    for protocol in options.PROTOCOLS:
        with pytest.raises(errors.UnverifiableNode, match="unusable"):
            plans.seal(plan, lock, 1, 0.0, protocol)


def failed_steps(raw: bytes, policy: Policy = DEV, nonce: bytes = NONCE) -> list[str]:
    with pytest.raises(errors.AttestationFailed) as caught:
        locks.accept_lock(raw, policy, nonce)
    report = caught.value.report
    return [] if report is None else [step.name for step in report.failures]


def test_attestation_is_checked_before_anything_is_sealed() -> None:
    # Strict by default: a node without a TEE is refused, with a hint for local demos.
    assert failed_steps(lock_json(), Policy()) == ["format"]
    with pytest.raises(errors.AttestationFailed, match="insecure-no-tee"):
        locks.accept_lock(lock_json(), Policy(), NONCE)
    # Evidence for someone else's nonce (replayed or stale).
    assert failed_steps(lock_json(evidence_nonce=bytes(32))) == ["nonce"]
    # Evidence that vouches for other keys than the ones the lock names (key substitution).
    other_x = X25519PrivateKey.generate().public_key().public_bytes_raw()
    other_ed = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert failed_steps(lock_json(evidence_keys=(other_x, other_ed))) == ["expected keys"]
    # No evidence, or evidence that is not an Evidence document.
    assert failed_steps(lock_json(evidence=None)) == []
    assert failed_steps(lock_json(evidence={"format": "tdx"})) == []
    # A forged report_data (the document lies about what it binds).
    document = json.loads(lock_json())
    document["evidence"]["report_data"] = base64.b64encode(bytes(64)).decode()
    assert failed_steps(json.dumps(document).encode()) == ["binding"]


def test_policy_options() -> None:
    assert options.resolve_policy(None, False) == Policy()
    assert options.resolve_policy(None, True).allow_no_tee
    pinned = Policy(allowed_tcb_statuses=("UpToDate", "OutOfDate"))
    loosened = options.resolve_policy(pinned, True)
    assert loosened.allowed_tcb_statuses == ("UpToDate", "OutOfDate") and loosened.allow_no_tee
    assert options.check_protocol("atoma-v1") == "atoma-v1"
    with pytest.raises(ValueError):
        options.check_protocol("v2")
    body = locks.lock_body(plans.plan_request("embeddings", {"model": "e", "input": "x"}), NONCE)
    assert base64.b64decode(body["attestation_nonce"]) == NONCE
    assert len(locks.new_attestation_nonce()) == 32 != locks.new_attestation_nonce()


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


# -- veil-v2 streams against a simulated node ------------------------------------------------
ENDPOINT = "/v1/confidential/chat/completions"
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
    {"id": "c", "choices": [], "usage": USAGE},
]


def v2_stream(
    signer: Ed25519PrivateKey | None = None,
) -> tuple[StreamChecker, list[str], Receipt]:
    """A checker for a fresh v2 request, and the node's genuine events answering it."""
    node = X25519PrivateKey.generate()
    public = node.public_key().public_bytes_raw()
    signer = signer or Ed25519PrivateKey.generate()
    envelope, session = v2.seal_request(
        public, v2.key_id_of(public), b"{}", endpoint=ENDPOINT, model_name="m",
        stack_small_id=1, stream=True,
    )  # fmt: skip
    _, server = v2.open_request(envelope, node, endpoint=ENDPOINT)
    events = []
    for i, chunk in enumerate(CHUNKS):
        final = i == len(CHUNKS) - 1
        sealed = server.seal(
            json.dumps(chunk).encode(), index=i, final=final, sign=signer.sign,
            usage=USAGE if final else None,
        )  # fmt: skip
        events.append(sealed.model_dump_json(exclude_none=True))
    receipt = Receipt("chat", "m", 0, "k", 0, None)
    checker = StreamChecker(V2ResponseOpener(session, signer.public_key(), receipt))
    return checker, events, receipt


def feed(checker: StreamChecker, events: list[str]) -> None:
    for event in events:
        checker.event(event)
    checker.end()


def edited(event: str, **change: object) -> str:
    document = json.loads(event)
    document.update(change)
    return json.dumps(document)


def test_a_v2_stream_in_order_ends_with_its_final_chunk_then_done() -> None:
    checker, events, receipt = v2_stream()
    for event in events:
        assert checker.event(event) is not None
    checker.end()
    assert checker.event("[DONE]") is None
    assert receipt.usage == Usage(**USAGE) and receipt.messages_verified == 3
    assert receipt.protocol == "veil-v2" and receipt.signature_verified
    with pytest.raises(errors.StreamCorrupt):
        checker.event(events[1])
    with pytest.raises(errors.StreamCorrupt):
        checker.event("[DONE]")


def test_v2_order_errors_map_to_the_client_errors() -> None:
    def refused(reorder: Callable[[list[str]], list[str]]) -> type[Exception]:
        checker, events, _ = v2_stream()
        with pytest.raises(errors.IntegrityError) as caught:
            feed(checker, reorder(events))
        return type(caught.value)

    assert refused(lambda e: [e[0], e[2]]) is errors.StreamCorrupt  # dropped
    assert refused(lambda e: [e[1], e[0], e[2]]) is errors.StreamCorrupt  # reordered
    assert refused(lambda e: [e[0], e[0], e[1], e[2]]) is errors.StreamCorrupt  # duplicated
    assert refused(lambda e: [e[0], e[1]]) is errors.StreamTruncated  # truncated
    assert refused(lambda e: []) is errors.StreamTruncated  # nothing at all
    assert refused(lambda e: [e[0], "[DONE]"]) is errors.StreamTruncated  # ended early
    _, foreign, _ = v2_stream()
    assert refused(lambda e: [e[0], foreign[1], e[2]]) is errors.StreamCorrupt  # other answer
    assert refused(lambda e: [foreign[0], *e[1:]]) is errors.DecryptionError  # other request


def test_v2_tampering_maps_to_the_client_errors() -> None:
    def refused(change: Callable[[dict[str, Any]], None]) -> type[Exception]:
        checker, events, _ = v2_stream()
        document = json.loads(events[0])
        change(document)
        with pytest.raises(errors.IntegrityError) as caught:
            checker.event(json.dumps(document))
        return type(caught.value)

    def flip(document: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(document["ciphertext"]))
        raw[-1] ^= 1
        document["ciphertext"] = base64.b64encode(bytes(raw)).decode()

    def put(field: str, value: object) -> Callable[[dict[str, Any]], None]:
        return lambda document: document.__setitem__(field, value)

    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    assert refused(flip) is errors.DecryptionError
    assert refused(put("final", True)) is errors.DecryptionError  # the flag is in the AAD
    assert refused(put("nonce", b64(bytes(12)))) is errors.DecryptionError
    assert refused(put("response_hash", b64(bytes(32)))) is errors.ResponseHashMismatch
    assert refused(lambda d: d.pop("response_hash")) is errors.ResponseHashMismatch
    assert refused(put("signature", b64(bytes(64)))) is errors.SignatureInvalid
    assert refused(lambda d: d.pop("signature")) is errors.SignatureInvalid
    assert refused(lambda d: d.pop("index")) is errors.StreamCorrupt  # not a v2 chunk
    assert refused(put("index", 1)) is errors.StreamCorrupt


def test_v2_answers_signed_by_another_node_key_are_refused() -> None:
    checker, events, _ = v2_stream()
    other_node = Ed25519PrivateKey.generate()
    document = json.loads(events[0])
    document["signature"] = base64.b64encode(
        other_node.sign(base64.b64decode(document["response_hash"]))
    ).decode()
    with pytest.raises(errors.SignatureInvalid):
        checker.event(json.dumps(document))


def test_a_whole_v2_answer_must_be_final() -> None:
    checker, events, _ = v2_stream()
    with pytest.raises(errors.MalformedResponse, match="final"):
        open_single(checker.opener, events[0].encode())
