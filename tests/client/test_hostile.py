"""A hostile gateway (the relay of conftest, between client and the real gateway) changes answers:
every change is caught by a specific exception and no data from the answer is returned, under
veil-v3 (the default) and atoma-v1 alike, except what only v3 can see (a chunk dropped from the
middle) and what v3's one signature per answer already covers (the usage sent in clear beside the
final chunk: a change is a wrong signature). Errors that mean "re-lock" are retried with a new lock, a new attestation and a new
encryption; 402 and 409 REPLAYED are not retried. The lock's evidence is checked every time."""

from __future__ import annotations

import asyncio

import pytest

import veil
from tests.client.conftest import CHAT, EMBED, HostileRelay
from tests.e2e.conftest import Deployment
from veil.attestation import Policy
from veil.client import errors

MESSAGES = [{"role": "user", "content": "Count to three"}]


@pytest.fixture(scope="module")
def key(client_deployment: Deployment) -> str:
    api_key, _ = client_deployment.new_user("hostile-user", {CHAT: 1_000_000, EMBED: 100_000})
    return api_key


def client_for(relay: HostileRelay, key: str, **kw: object) -> veil.Client:
    return veil.Client(relay.url, key, backoff=0, insecure_no_tee=True, **kw)  # type: ignore[arg-type]


PROTOCOLS = ["atoma-v1"]  # veil-v3 is below: one signature per answer
ANSWER_ATTACKS = [
    ("flip_ciphertext", errors.DecryptionError),
    ("swap_hash", errors.ResponseHashMismatch),
    ("swap_signature", errors.SignatureInvalid),
    ("usage_in_clear", errors.UsageMismatch),
]


def v3_sees(mode: str, exception: type[errors.IntegrityError]) -> type[errors.IntegrityError]:
    """What veil-v3 raises for an attack: its signature covers the usage sent in clear."""
    return errors.SignatureInvalid if mode == "usage_in_clear" else exception


@pytest.mark.parametrize(
    ("protocol", "mode", "exception"),
    [(protocol, mode, exc) for protocol in PROTOCOLS for mode, exc in ANSWER_ATTACKS]
    + [("veil-v3", mode, v3_sees(mode, exc)) for mode, exc in ANSWER_ATTACKS],
)
def test_tampered_answer_is_rejected(
    relay: HostileRelay,
    key: str,
    mode: str,
    exception: type[errors.IntegrityError],
    protocol: str,
) -> None:
    with client_for(relay, key, protocol=protocol) as client:
        relay.reset()
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)  # a signature
        relay.mode = mode
        with pytest.raises(exception):
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)


def test_tampered_embeddings_are_rejected(relay: HostileRelay, key: str) -> None:
    relay.reset("flip_ciphertext")
    with client_for(relay, key) as client, pytest.raises(errors.TagMismatch):
        client.embeddings.create(model=EMBED, input="hello")


STREAM_ATTACKS = [
    ("flip_ciphertext", errors.DecryptionError),
    ("swap_hash", errors.ResponseHashMismatch),
    ("swap_signature", errors.SignatureInvalid),
    ("usage_in_clear", errors.UsageMismatch),
    ("drop_final", errors.StreamTruncated),
    ("drop_middle_and_final", errors.StreamTruncated),
    ("done_early", errors.StreamTruncated),
    ("reorder", errors.StreamCorrupt),
    ("final_early", errors.StreamCorrupt),
    ("duplicate", errors.StreamCorrupt),
    ("garbage", errors.StreamCorrupt),
    ("after_done", errors.StreamCorrupt),
]


@pytest.mark.parametrize(
    ("protocol", "mode", "exception"),
    [("atoma-v1", mode, exc) for mode, exc in STREAM_ATTACKS]
    + [("veil-v3", mode, v3_sees(mode, exc)) for mode, exc in STREAM_ATTACKS]
    + [("veil-v3", "drop_middle", errors.StreamCorrupt)],  # atoma-v1 cannot see this one
)
def test_tampered_stream_is_rejected(
    relay: HostileRelay,
    key: str,
    protocol: str,
    mode: str,
    exception: type[errors.IntegrityError],
) -> None:
    relay.reset(mode)
    received = []
    with client_for(relay, key, protocol=protocol) as client, pytest.raises(exception):
        stream = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=6, stream=True
        )
        for chunk in stream:
            received.append(chunk)
    # Whatever was yielded before the fault had itself been verified; the fault yielded nothing.
    assert all(c.choices or c.usage for c in received)
    assert stream.veil.messages_verified >= len(received)


def test_tampered_async_stream_is_rejected(relay: HostileRelay, key: str) -> None:
    relay.reset("drop_final")

    async def main() -> None:
        async with veil.AsyncClient(relay.url, key, backoff=0, insecure_no_tee=True) as client:
            stream = await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=4, stream=True
            )
            async for _ in stream:
                pass

    with pytest.raises(errors.StreamTruncated):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "code"),
    [(409, "STALE_NODE_KEY"), (503, "SERVICE_UNAVAILABLE"), (425, "UNAVAILABLE_STACK")],
)
def test_relock_errors_are_retried_with_a_new_encryption(
    relay: HostileRelay, key: str, status: int, code: str
) -> None:
    relay.reset()
    relay.errors = [(status, code)]
    with client_for(relay, key) as client:
        answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert answer.veil.attempts == 2 and answer.veil.signature_verified
    first_lock, second_lock = relay.locks()  # locked again, attested again with a fresh nonce
    assert first_lock["attestation_nonce"] != second_lock["attestation_nonce"]
    first, second = relay.confidential_bodies()
    assert first["protocol"] == second["protocol"] == "veil-v3"  # the default
    assert first["kem"] == second["kem"] == "mlkem768-x25519"
    for field in ("ciphertext", "client_dh_public_key", "request_id", "plaintext_body_hash"):
        assert first[field] != second[field], field


def test_retries_are_bounded(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(503, "SERVICE_UNAVAILABLE")] * 5
    with (
        client_for(relay, key, max_attempts=3) as client,
        pytest.raises(errors.ServiceUnavailableError) as caught,
    ):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert caught.value.status == 503 and caught.value.code == "SERVICE_UNAVAILABLE"
    bodies = relay.confidential_bodies()
    assert len(bodies) == 3
    assert len({b["client_dh_public_key"] for b in bodies}) == 3


def test_streams_are_retried_too(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(409, "STALE_NODE_KEY")]
    with client_for(relay, key) as client:
        stream = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=4, stream=True
        )
        chunks = list(stream)
    assert chunks[-1].usage is not None and stream.veil.attempts == 2
    first, second = relay.confidential_bodies()
    assert first["ciphertext"] != second["ciphertext"]
    assert first["request_id"] != second["request_id"]


def test_v1_retries_re_encrypt_too(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(425, "UNAVAILABLE_STACK")]
    with client_for(relay, key, protocol="atoma-v1") as client:
        answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert answer.veil.attempts == 2 and answer.veil.protocol == "atoma-v1"
    first, second = relay.confidential_bodies()
    assert "protocol" not in first and "request_id" not in first
    for field in ("ciphertext", "client_dh_public_key", "salt", "nonce"):
        assert first[field] != second[field], field


def test_replayed_is_not_retried(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(409, "REPLAYED")]
    with client_for(relay, key) as client, pytest.raises(errors.ReplayedError):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert len(relay.confidential_bodies()) == 1


@pytest.mark.parametrize("mode", ["strip_evidence", "stale_evidence"])
def test_a_lock_without_fresh_evidence_is_refused_before_encrypting(
    relay: HostileRelay, key: str, mode: str
) -> None:
    with client_for(relay, key) as client:
        relay.reset()
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
        relay.reset(mode)  # the relay keeps the evidence the last lock carried
        with pytest.raises(errors.AttestationFailed) as caught:
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    assert len(relay.locks()) == 1 and relay.confidential_bodies() == []
    if mode == "strip_evidence":
        assert caught.value.report is None and "no attestation evidence" in caught.value.message
    else:  # genuine evidence, but made for the previous lock's nonce
        report = caught.value.report
        assert report is not None and [s.name for s in report.failures] == ["nonce"]


def test_a_lock_stripped_of_its_post_quantum_key_is_refused_unless_classical_is_allowed(
    relay: HostileRelay, key: str
) -> None:
    relay.reset("strip_kem")
    with client_for(relay, key) as client, pytest.raises(errors.NoPostQuantumKey) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    assert "post-quantum" in caught.value.message and caught.value.code == "NO_POST_QUANTUM_KEY"
    assert len(relay.locks()) == 1 and relay.confidential_bodies() == []
    # The policy's consent: veil-v3 with X25519 to the node's attested X25519 key. A node accepts
    # that only if configured to (VEIL_KEMS); this one is not, and refuses it unopened.
    classical = Policy(allow_no_tee=True, allow_classical_kem=True)
    with (
        veil.Client(relay.url, key, policy=classical) as client,
        pytest.raises(errors.InvalidRequestError, match="x25519"),
    ):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    (body,) = relay.confidential_bodies()
    assert body["protocol"] == "veil-v3" and body["kem"] == "x25519"


def test_a_lock_with_another_post_quantum_key_fails_attestation(
    relay: HostileRelay, key: str
) -> None:
    relay.reset("swap_kem")
    with client_for(relay, key) as client, pytest.raises(errors.AttestationFailed) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    report = caught.value.report
    assert report is not None and [s.name for s in report.failures] == ["expected keys"]
    assert relay.confidential_bodies() == []


def test_balance_error_is_raised_at_once_with_what_is_left(
    relay: HostileRelay, client_deployment: Deployment
) -> None:
    poor, _ = client_deployment.new_user("poor-user", {CHAT: 40})
    relay.reset()
    with client_for(relay, poor) as client, pytest.raises(errors.BalanceError) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=12)
    assert caught.value.code == "BALANCE_ERROR" and caught.value.status == 402
    assert caught.value.remaining_units == 40 and caught.value.model == CHAT
    assert "40 units left" in str(caught.value)
    assert len(relay.locks()) == 1 and relay.confidential_bodies() == []


def test_balance_error_from_the_confidential_post(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(402, "BALANCE_ERROR")]
    with client_for(relay, key) as client, pytest.raises(errors.BalanceError) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert caught.value.remaining_units is not None and caught.value.remaining_units > 0
    assert len(relay.confidential_bodies()) == 1


def test_bad_api_key(relay: HostileRelay) -> None:
    relay.reset()
    with (
        client_for(relay, "veil_wrong") as client,
        pytest.raises(errors.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert caught.value.status == 401


def test_unreachable_gateway_is_a_transport_error() -> None:
    from tests.servers import free_port

    with (
        veil.Client(f"http://127.0.0.1:{free_port()}", "k") as client,
        pytest.raises(errors.TransportError),
    ):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
