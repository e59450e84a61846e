"""The client's pure pieces, without servers: SSE framing, planning, error mapping, locks and
their attestation, and the atoma-v1 opener against a node simulated with the protocol module.
(The veil-v3 opener, against a node simulated with ``veil.hazmat.v3``: test_v3.py.)"""

from __future__ import annotations

import base64
import json

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
from veil.client.opening import ResponseOpener
from veil.client.receipt import Receipt
from veil.client.streaming import StreamChecker, event_data
from veil.hazmat import v1
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
    assert options.check_protocol("veil-v3") == "veil-v3"
    with pytest.raises(ValueError):
        options.check_protocol("v2")
    # veil-v2 is retired: refused like any unknown protocol, with the way on.
    with pytest.raises(ValueError, match="veil-v3"):
        options.check_protocol("veil-v2")
    with pytest.raises(ValueError, match="veil-v3"):
        options.ClientOptions.resolve("http://gw", "k", protocol="veil-v2")
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
