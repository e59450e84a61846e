"""The SDK against a real gateway and node: every call attested and verified, nothing plain on the
wire. The node has no TEE (evidence "none"): clients opt in with ``insecure_no_tee=True``, and the
strict default is shown refusing it before anything is encrypted."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from openai.types import CreateEmbeddingResponse, ImagesResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import veil
from tests.client.conftest import CHAT, EMBED, IMAGES, HostileRelay
from tests.e2e.conftest import Deployment
from veil.attestation import Policy
from veil.client import errors

PROMPT = "Name a colour of the rainbow"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def user(client_deployment: Deployment) -> tuple[str, dict[str, int]]:
    return client_deployment.new_user(
        "sdk-user", {CHAT: 100_000, EMBED: 100_000, IMAGES: 1_000_000}
    )


def test_chat_round_trip(client_deployment: Deployment, user: tuple[str, dict[str, int]]) -> None:
    key, stacks = user
    before = client_deployment.stack(stacks[CHAT])["used_units"]
    with veil.Client(client_deployment.url, key, insecure_no_tee=True) as client:
        answer = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=6, temperature=0
        )
    assert isinstance(answer, ChatCompletion)
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 6
    receipt = answer.veil
    assert receipt.signature_verified and receipt.messages_verified == 1
    assert receipt.node_key_id == client_deployment.nodes[0].keyring.current.key_id
    assert receipt.usage is not None and receipt.usage.total_tokens == answer.usage.total_tokens
    assert receipt.units_charged == answer.usage.total_tokens
    assert receipt.stack_small_id == stacks[CHAT]
    assert receipt.reserved_units is not None and receipt.reserved_units >= 6
    after = client_deployment.stack(stacks[CHAT])
    assert after["used_units"] - before == receipt.units_charged
    assert after["reserved_units"] == 0
    assert receipt.protocol == "veil-v3" and receipt.kem == "mlkem768-x25519"  # the default
    hybrid = client_deployment.nodes[0].keyring.current.hybrid
    assert hybrid is not None and receipt.kem_key_id == hybrid.key_id
    verdict = receipt.attestation
    assert verdict is not None and verdict.ok and verdict.format == "none" and verdict.insecure
    steps = {step.name: step for step in verdict.steps}
    assert {"format", "binding", "expected keys", "nonce"} <= set(steps)
    assert all(step.ok for step in steps.values())
    assert "NO TEE" in receipt.summary() and "veil-v3 mlkem768-x25519" in receipt.summary()


def test_chat_stream_round_trip(
    client_deployment: Deployment, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user
    with veil.Client(client_deployment.url, key, insecure_no_tee=True) as client:
        stream = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=6, temperature=0, stream=True
        )
        with stream:
            chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert stream.veil.usage is not None
    assert stream.veil.usage.total_tokens == final.usage.total_tokens
    assert stream.veil.signature_verified
    assert stream.veil.messages_verified == len(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)


def test_embeddings_round_trip(
    client_deployment: Deployment, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user
    with veil.Client(client_deployment.url, key, insecure_no_tee=True) as client:
        result = client.embeddings.create(model=EMBED, input=["a private sentence", "another"])
    assert isinstance(result, CreateEmbeddingResponse)
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.veil.signature_verified
    assert result.veil.units_charged == result.usage.total_tokens > 0


def test_images_round_trip(client_deployment: Deployment, user: tuple[str, dict[str, int]]) -> None:
    key, stacks = user
    before = client_deployment.stack(stacks[IMAGES])["used_units"]
    with veil.Client(client_deployment.url, key, insecure_no_tee=True) as client:
        result = client.images.generate(
            model=IMAGES,
            prompt="a lighthouse at dusk",
            n=2,
            size="16x8",
            response_format="b64_json",
        )
    assert isinstance(result, ImagesResponse)
    assert result.data is not None and len(result.data) == 2
    png = base64.b64decode(result.data[0].b64_json or "")
    assert png.startswith(b"\x89PNG") and png[16:24] == (16).to_bytes(4, "big") + (8).to_bytes(
        4, "big"
    )
    assert result.veil.signature_verified
    assert result.veil.units_charged == result.veil.reserved_units == 2 * 16 * 8
    assert client_deployment.stack(stacks[IMAGES])["used_units"] - before == 2 * 16 * 8


def test_async_client_chat_and_stream(
    client_deployment: Deployment, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user

    async def main() -> tuple[ChatCompletion, list[ChatCompletionChunk], veil.client.Receipt]:
        async with veil.AsyncClient(client_deployment.url, key, insecure_no_tee=True) as client:
            answer = await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=4, temperature=0
            )
            stream = await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=4, temperature=0, stream=True
            )
            async with stream:
                chunks = [chunk async for chunk in stream]
            return answer, chunks, stream.veil

    answer, chunks, receipt = asyncio.run(main())
    assert answer.veil.signature_verified
    assert chunks[-1].usage is not None and receipt.usage is not None
    assert receipt.usage.total_tokens == chunks[-1].usage.total_tokens


def test_nothing_plain_goes_over_the_wire(
    relay: HostileRelay, user: tuple[str, dict[str, int]], client_deployment: Deployment
) -> None:
    key, _ = user
    relay.reset()
    secret = "my confidential prompt about project nightingale"
    with veil.Client(relay.url, key, insecure_no_tee=True) as client:
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": secret}], max_tokens=4
        )
        list(
            client.chat.completions.create(
                model=CHAT,
                messages=[{"role": "user", "content": secret}],
                max_tokens=4,
                stream=True,
            )
        )
        client.embeddings.create(model=EMBED, input=secret)
    assert [s.path for s in relay.seen] == [
        "/v1/nodes/lock",
        "/v1/confidential/chat/completions",
        "/v1/nodes/lock",
        "/v1/confidential/chat/completions",
        "/v1/nodes/lock",
        "/v1/confidential/embeddings",
    ]
    for seen in relay.seen:
        assert b"nightingale" not in seen.body
        assert b"confidential prompt" not in seen.body
    bodies = relay.confidential_bodies()
    assert len({b["client_dh_public_key"] for b in bodies}) == 3  # a fresh key per request
    assert len({b["request_id"] for b in bodies}) == 3
    hybrid = client_deployment.nodes[0].keyring.current.hybrid
    assert hybrid is not None
    for body in bodies:  # the default: veil-v3, sealed to the node's post-quantum key
        assert body["protocol"] == "veil-v3" and body["key_id"] == hybrid.key_id
        assert body["kem"] == "mlkem768-x25519"
        assert abs(body["timestamp"] - time.time()) < 60
    nonces = [base64.b64decode(lock["attestation_nonce"]) for lock in relay.locks()]
    assert len(set(nonces)) == 3 and all(len(n) == 32 for n in nonces)


def test_model_list(client_deployment: Deployment) -> None:
    with veil.Client(client_deployment.url, "unused") as client:
        ids = {m.id for m in client.models.list()}
    assert {CHAT, EMBED, IMAGES} <= ids


@pytest.mark.parametrize("mode", ["strip_signing_key", "swap_key_id"])
def test_a_lock_that_cannot_be_verified_is_refused_before_encrypting(
    relay: HostileRelay, user: tuple[str, dict[str, int]], mode: str
) -> None:
    key, _ = user
    relay.reset(mode)
    with (
        veil.Client(relay.url, key, insecure_no_tee=True) as client,
        pytest.raises(errors.UnverifiableNode),
    ):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert len(relay.locks()) == 1
    assert relay.confidential_bodies() == []  # nothing was encrypted, nothing was sent


def test_the_default_client_refuses_a_node_without_a_tee_before_encrypting(
    relay: HostileRelay, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user
    relay.reset()
    with veil.Client(relay.url, key) as client, pytest.raises(errors.AttestationFailed) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    # One lock, carrying a fresh 32-byte nonce; no envelope was ever built or sent.
    (lock,) = relay.locks()
    assert len(base64.b64decode(lock["attestation_nonce"])) == 32
    assert relay.confidential_bodies() == []
    assert [s.path for s in relay.seen] == ["/v1/nodes/lock"]
    report = caught.value.report
    assert report is not None and not report.ok
    assert [step.name for step in report.failures] == ["format"]  # the rest of it checks out
    assert "no TEE" in report.step("format").detail
    assert caught.value.code == "ATTESTATION_FAILED"
    assert "--insecure-no-tee" in caught.value.message and "nothing was" in caught.value.message
    assert isinstance(caught.value, errors.IntegrityError)


def test_the_default_async_client_refuses_it_too(
    relay: HostileRelay, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user
    relay.reset()

    async def main() -> None:
        async with veil.AsyncClient(relay.url, key) as client:
            await client.embeddings.create(model=EMBED, input="private")

    with pytest.raises(errors.AttestationFailed):
        asyncio.run(main())
    assert relay.confidential_bodies() == [] and len(relay.locks()) == 1


def test_a_policy_decides_what_is_accepted(
    relay: HostileRelay, user: tuple[str, dict[str, int]]
) -> None:
    key, _ = user
    relay.reset()
    strict = Policy(allowed_tcb_statuses=("UpToDate", "SWHardeningNeeded"))
    with (
        veil.Client(relay.url, key, policy=strict) as client,
        pytest.raises(errors.AttestationFailed),
    ):
        client.embeddings.create(model=EMBED, input="x")
    # A policy file that allows no TEE is the same opt-in as insecure_no_tee.
    with veil.Client(relay.url, key, policy=Policy(allow_no_tee=True)) as client:
        assert client.embeddings.create(model=EMBED, input="x").veil.attestation is not None
    # insecure_no_tee loosens only allow_no_tee; the rest of the policy is kept.
    with veil.Client(relay.url, key, policy=strict, insecure_no_tee=True) as client:
        assert client.policy.allowed_tcb_statuses == strict.allowed_tcb_statuses
        assert client.policy.allow_no_tee and not strict.allow_no_tee
    assert len(relay.confidential_bodies()) == 1


def test_atoma_v1_is_still_available(relay: HostileRelay, user: tuple[str, dict[str, int]]) -> None:
    key, _ = user
    relay.reset()
    with veil.Client(relay.url, key, protocol="atoma-v1", insecure_no_tee=True) as client:
        answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
        stream = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=4, stream=True
        )
        chunks = list(stream)
    assert answer.veil.signature_verified and answer.veil.protocol == "atoma-v1"
    assert chunks[-1].usage is not None and stream.veil.protocol == "atoma-v1"
    assert stream.veil.attestation is not None and stream.veil.attestation.ok
    for body in relay.confidential_bodies():
        assert "protocol" not in body and "request_id" not in body
    with pytest.raises(ValueError, match="protocol"):
        veil.Client(relay.url, key, protocol="veil-v9")  # type: ignore[arg-type]
