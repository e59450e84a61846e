"""A hostile gateway (the relay of conftest, between client and the real gateway) changes answers:
every change is caught by a specific exception and no data from the answer is returned.
Errors that mean "re-lock" are retried with a new lock and a new encryption; 402 is not retried."""

from __future__ import annotations

import asyncio

import pytest

import veil
from tests.client.conftest import CHAT, EMBED, HostileRelay
from tests.e2e.conftest import Deployment
from veil.client import errors

MESSAGES = [{"role": "user", "content": "Count to three"}]


@pytest.fixture(scope="module")
def key(client_deployment: Deployment) -> str:
    api_key, _ = client_deployment.new_user("hostile-user", {CHAT: 1_000_000, EMBED: 100_000})
    return api_key


def client_for(relay: HostileRelay, key: str, **kw: object) -> veil.Client:
    return veil.Client(relay.url, key, backoff=0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "exception"),
    [
        ("flip_ciphertext", errors.DecryptionError),
        ("swap_hash", errors.ResponseHashMismatch),
        ("swap_signature", errors.SignatureInvalid),
        ("usage_in_clear", errors.UsageMismatch),
    ],
)
def test_tampered_answer_is_rejected(
    relay: HostileRelay, key: str, mode: str, exception: type[errors.IntegrityError]
) -> None:
    with client_for(relay, key) as client:
        relay.reset()
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)  # a signature
        relay.mode = mode
        with pytest.raises(exception):
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)


def test_tampered_embeddings_are_rejected(relay: HostileRelay, key: str) -> None:
    relay.reset("flip_ciphertext")
    with client_for(relay, key) as client, pytest.raises(errors.TagMismatch):
        client.embeddings.create(model=EMBED, input="hello")


@pytest.mark.parametrize(
    ("mode", "exception"),
    [
        ("flip_ciphertext", errors.DecryptionError),
        ("swap_hash", errors.ResponseHashMismatch),
        ("swap_signature", errors.SignatureInvalid),
        ("usage_in_clear", errors.UsageMismatch),
        ("drop_final", errors.StreamTruncated),
        ("drop_middle_and_final", errors.StreamTruncated),
        ("reorder", errors.StreamCorrupt),
        ("final_early", errors.StreamCorrupt),
        ("duplicate", errors.StreamCorrupt),
        ("garbage", errors.StreamCorrupt),
    ],
)
def test_tampered_stream_is_rejected(
    relay: HostileRelay, key: str, mode: str, exception: type[errors.IntegrityError]
) -> None:
    relay.reset(mode)
    received = []
    with client_for(relay, key) as client, pytest.raises(exception):
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
        async with veil.AsyncClient(relay.url, key, backoff=0) as client:
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
    assert len(relay.locks()) == 2  # locked again
    first, second = relay.confidential_bodies()
    for field in ("ciphertext", "client_dh_public_key", "salt", "nonce"):
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


def test_other_errors_are_not_retried(relay: HostileRelay, key: str) -> None:
    relay.reset()
    relay.errors = [(409, "REPLAYED")]
    with client_for(relay, key) as client, pytest.raises(errors.ReplayedError):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert len(relay.confidential_bodies()) == 1


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
