"""The shared harness (``tests/harness.py``) holds up on its own: tickets a node would accept,
requests sealed to a node and opened by the client's own openers, refusals of what was altered,
and the benchmark report that renders from its JSON. No model and no server is needed here."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from benchmarks.report import Report, headline_text, render_text
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.harness import NodeKeys, seal_to, sign_ticket
from veil.client import errors
from veil.client.errors import IntegrityError, UsageMismatch
from veil.hazmat import v1, v3
from veil.wire.envelopes import ConfidentialComputeRequest
from veil.wire.keyid import key_id
from veil.wire.tickets import SignatureInvalid, Ticket, envelope_digest, verify_token

BODY = {"model": "all-minilm-l6-v2", "input": "a short private sentence"}
ANSWER = {"object": "list", "data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}}
USAGE = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}


def test_a_signed_ticket_binds_exactly_its_envelope_and_verifies_under_the_key() -> None:
    key = Ed25519PrivateKey.generate()
    token = sign_ticket(key, b"envelope bytes", units=7, stack_small_id=3, node_small_id=2)
    ticket = verify_token(token, Ticket, [key.public_key()])
    assert (ticket.units, ticket.stack_small_id, ticket.node_small_id) == (7, 3, 2)
    assert ticket.envelope_sha256 == envelope_digest(b"envelope bytes")
    assert ticket.envelope_sha256 != envelope_digest(b"other bytes")
    with pytest.raises(SignatureInvalid):
        verify_token(token, Ticket, [Ed25519PrivateKey.generate().public_key()])


def node() -> tuple[X25519PrivateKey, Ed25519PrivateKey, v3.NodeKemKey, NodeKeys]:
    private, signer = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hybrid = v3.NodeKemKey.generate()
    public = private.public_key().public_bytes_raw()
    lock = {
        "public_key": base64.b64encode(public).decode(),
        "key_id": key_id(public),
        "node_signing_public_key": base64.b64encode(
            signer.public_key().public_bytes_raw()
        ).decode(),
        "kem": hybrid.kem.value,
        "kem_public_key": base64.b64encode(hybrid.public_key).decode(),
        "kem_key_id": hybrid.key_id,
    }
    return private, signer, hybrid, NodeKeys.from_lock(lock)


def answer_v3(
    kem_key: v3.NodeKemKey,
    signer: Ed25519PrivateKey,
    content: bytes,
    *,
    allowed: frozenset[v3.Kem] = frozenset({v3.Kem.HYBRID}),
    usage: dict[str, int] = USAGE,
) -> bytes:
    """The node's side: open the request with its key, answer in one signed final chunk."""
    envelope = ConfidentialComputeRequest.model_validate_json(content)
    plaintext, session = v3.open_request(
        envelope,
        lambda kid: kem_key if kid == kem_key.key_id else None,
        endpoint="/v1/confidential/embeddings",
        allowed_kems=allowed,
        reservation_id=envelope.reservation_id,
    )
    assert json.loads(plaintext) == BODY
    sealed = session.seal(json.dumps(ANSWER).encode(), final=True, sign=signer.sign, usage=usage)
    return sealed.model_dump_json().encode()


def test_a_veil_v3_request_is_sealed_to_the_post_quantum_key_and_checked_by_the_opener() -> None:
    _, signer, hybrid, keys = node()
    assert keys.kem_public_key == hybrid.public_key and keys.kem_key_id == hybrid.key_id
    sealed = seal_to(
        keys, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=128,
        reservation_id="ab" * 16,
    )  # fmt: skip
    envelope = ConfidentialComputeRequest.model_validate_json(sealed.content)
    assert (envelope.protocol, envelope.kem, envelope.key_id) == (
        "veil-v3",
        "mlkem768-x25519",
        hybrid.key_id,
    )
    assert envelope.reservation_id == "ab" * 16 and envelope.num_compute_units == 128
    assert sealed.open(answer_v3(hybrid, signer, sealed.content)) == ANSWER
    assert sealed.usage is not None and sealed.usage.total_tokens == 5
    assert sealed.opener.receipt.messages_verified == 1
    assert sealed.opener.receipt.kem == "mlkem768-x25519"


def test_a_veil_v3_request_seals_to_the_x25519_key_only_when_asked() -> None:
    private, signer, _, keys = node()
    classical = v3.NodeKemKey.from_seed(v3.Kem.X25519, private.private_bytes_raw())
    sealed = seal_to(
        keys, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=9,
        classical_kem=True,
    )  # fmt: skip
    answer = answer_v3(classical, signer, sealed.content, allowed=frozenset({v3.Kem.X25519}))
    assert sealed.open(answer) == ANSWER
    without = NodeKeys(keys.public_key, keys.key_id, keys.signing_key)
    with pytest.raises(ValueError, match="post-quantum"):
        seal_to(without, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=9)


def test_an_answer_whose_clear_usage_was_changed_is_refused() -> None:
    _, signer, hybrid, keys = node()
    sealed = seal_to(keys, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=9)
    answer = json.loads(answer_v3(hybrid, signer, sealed.content))
    answer["usage"]["prompt_tokens"] = 1
    answer["usage"]["total_tokens"] = 1
    # veil-v3 signs the usage with the answer: changed in clear, the signature no longer holds.
    with pytest.raises(errors.SignatureInvalid):
        sealed.open(json.dumps(answer).encode())


def test_an_answer_whose_signed_usage_is_not_its_own_is_refused() -> None:
    _, signer, hybrid, keys = node()
    sealed = seal_to(keys, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=9)
    lower = {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}
    with pytest.raises(UsageMismatch):
        sealed.open(answer_v3(hybrid, signer, sealed.content, usage=lower))


def test_an_answer_signed_by_another_key_is_refused() -> None:
    _, _, hybrid, keys = node()
    sealed = seal_to(keys, BODY, suite="veil-v3", endpoint="embeddings", stack_small_id=1, units=9)
    forged = answer_v3(hybrid, Ed25519PrivateKey.generate(), sealed.content)
    with pytest.raises(IntegrityError):
        sealed.open(forged)


def test_an_atoma_v1_answer_signed_by_another_key_is_refused() -> None:
    private, _, _, keys = node()
    sealed = seal_to(
        keys, BODY, suite="atoma-v1", endpoint="embeddings", stack_small_id=1, units=None
    )
    envelope = ConfidentialComputeRequest.model_validate_json(sealed.content)
    session = v1.Session.from_exchange(private, envelope.client_dh_public_key, envelope.salt)
    plaintext = json.dumps(ANSWER).encode()
    digest = v1.body_hash(plaintext)
    nonce, ciphertext = session.seal(plaintext)
    forged = {
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "response_hash": base64.b64encode(digest).decode(),
        "signature": base64.b64encode(Ed25519PrivateKey.generate().sign(digest)).decode(),
        "usage": USAGE,
    }
    with pytest.raises(IntegrityError):
        sealed.open(json.dumps(forged).encode())


def test_keys_whose_key_id_is_not_their_own_are_refused() -> None:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    entry: dict[str, Any] = {
        "status": "current", "public_key": base64.b64encode(public).decode(), "key_id": "00" * 8,
    }  # fmt: skip
    document = {"keys": [entry], "signing_public_key": base64.b64encode(bytes(32)).decode()}
    with pytest.raises(ValueError, match="key_id"):
        NodeKeys.from_keys_document(document)
    # Nor a post-quantum key under another's id.
    real = key_id(public)
    entry.update(
        key_id=real,
        kem_public_key=base64.b64encode(v3.NodeKemKey.generate().public_key).decode(),
        kem_key_id=real,
    )
    with pytest.raises(ValueError, match="kem_key_id"):
        NodeKeys.from_keys_document(document)


def test_a_verdict_is_decided_on_the_figure_as_shown() -> None:
    report = Report("t", "T", "what", ["--json", "x.json", "--quick"])
    baseline = report.baseline("b", "the same thing, measured in the same run")
    # 1.504 shows as 1.50: within a <= 1.5 target, as the reader sees it.
    shown = report.ratio("close", 1.504, 1.0, baseline=baseline, target=("<=", 1.5))
    over = report.ratio("over", 1.51, 1.0, baseline=baseline, target=("<=", 1.5))
    missing = report.ratio("missing", None, 1.0, baseline=baseline, target=(">=", 1.0))
    assert (shown["verdict"], over["verdict"]) == ("met", "NOT MET")
    # No figure: "not measured", never met (fail closed: a comparison that did not run is no pass).
    assert missing["verdict"] == "not measured" and missing["met"] is None
    assert headline_text(over) == "over: 1.51x (target <= 1.5x: NOT MET)"
    with pytest.raises(ValueError, match="unknown baseline"):
        report.ratio("stray", 1.0, 1.0, baseline="nowhere")
    document = report.document(ok=True)
    assert document["arguments"] == ["--quick"]
    assert json.loads(json.dumps(document)) == document


def test_the_text_report_is_rendered_from_the_json_document() -> None:
    report = Report("t", "Title", "What it measures.", [])
    table = report.table("Rows", [("name", ""), ("ms", ".1f")])
    table.row("one", 1.25)
    table.row("none", None)
    with pytest.raises(ValueError):
        table.row("too", 1.0, 2.0)
    report.fail("a request: TIMEOUT", 2)
    document = json.loads(json.dumps(report.document(ok=True)))
    assert document["ok"] is False  # a failure counted makes the run a failed one
    text = render_text(document)
    assert "one   1.2" in text or "one   1.3" in text
    assert "none    -" in text and "a request: TIMEOUT x2" in text
