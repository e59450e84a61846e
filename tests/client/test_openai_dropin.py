"""The official ``openai`` package, unchanged, made confidential by ``veil.openai_http_client``.

A recording transport sits where the network is (under Veil's transport), so the tests see every
byte that left the process, and check the prompt is never among them."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

import veil
from tests.client.conftest import CHAT, EMBED, HostileRelay
from tests.e2e.conftest import Deployment
from veil.client import errors

SECRET = "the launch code is tangerine-42"
MESSAGES = [{"role": "user", "content": f"Repeat after me: {SECRET}"}]


class Recording(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, request.read()))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncRecording(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, await request.aread()))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def assert_nothing_plain(requests: list[tuple[str, bytes]]) -> None:
    assert requests, "nothing was recorded"
    for path, body in requests:
        assert path in ("/v1/nodes/lock", "/v1/models") or path.startswith("/v1/confidential/")
        assert b"tangerine" not in body and b"launch code" not in body


@pytest.fixture(scope="module")
def key(client_deployment: Deployment) -> str:
    api_key, _ = client_deployment.new_user("openai-user", {CHAT: 1_000_000, EMBED: 100_000})
    return api_key


def openai_client(url: str, key: str, wire: httpx.BaseTransport) -> openai.OpenAI:
    http = veil.openai_http_client(url, key, transport=wire, backoff=0, insecure_no_tee=True)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, http_client=http)


def test_openai_chat(client_deployment: Deployment, key: str) -> None:
    wire = Recording()
    with openai_client(client_deployment.url, key, wire) as client:
        answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=6)
        raw = client.chat.completions.with_raw_response.create(
            model=CHAT, messages=MESSAGES, max_tokens=4
        )
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.completion_tokens <= 6
    assert raw.headers["x-veil-signature"] == "verified"
    assert raw.headers["x-veil-node-key-id"] == client_deployment.nodes[0].keyring.current.key_id
    assert [path for path, _ in wire.requests] == [
        "/v1/nodes/lock",
        "/v1/confidential/chat/completions",
    ] * 2
    assert_nothing_plain(wire.requests)


def test_openai_chat_stream(client_deployment: Deployment, key: str) -> None:
    wire = Recording()
    with openai_client(client_deployment.url, key, wire) as client:
        chunks = list(
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=6, stream=True)
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 6
    assert_nothing_plain(wire.requests)
    envelope = json.loads(wire.requests[-1][1])
    assert envelope["stream"] is True and envelope["model_name"] == CHAT


def test_openai_embeddings_and_models_pass_through(client_deployment: Deployment, key: str) -> None:
    wire = Recording()
    with openai_client(client_deployment.url, key, wire) as client:
        result = client.embeddings.create(model=EMBED, input=SECRET)
        ids = {m.id for m in client.models.list()}
    assert len(result.data[0].embedding) == 384
    assert {CHAT, EMBED} <= ids
    assert [path for path, _ in wire.requests] == [
        "/v1/nodes/lock",
        "/v1/confidential/embeddings",
        "/v1/models",
    ]
    assert_nothing_plain(wire.requests)


def test_async_openai_chat_and_stream(client_deployment: Deployment, key: str) -> None:
    wire = AsyncRecording()

    async def main() -> tuple[str | None, list[openai.types.chat.ChatCompletionChunk]]:
        http = veil.async_openai_http_client(
            client_deployment.url, key, transport=wire, insecure_no_tee=True
        )
        async with openai.AsyncOpenAI(
            base_url=f"{client_deployment.url}/v1", api_key=key, http_client=http
        ) as client:
            answer = await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=4
            )
            stream = await client.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=4, stream=True
            )
            return answer.choices[0].message.role, [chunk async for chunk in stream]

    role, chunks = asyncio.run(main())
    assert role == "assistant"
    assert chunks[-1].usage is not None
    assert_nothing_plain(wire.requests)
    assert len(wire.requests) == 4


def test_openai_sees_server_errors_as_its_own(relay: HostileRelay) -> None:
    relay.reset()
    client = openai.OpenAI(
        base_url=f"{relay.url}/v1",
        api_key="veil_wrong",
        http_client=veil.openai_http_client(relay.url, insecure_no_tee=True),
    )
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert caught.value.status_code == 401
    assert len(relay.locks()) == 1  # not retried by openai either


def test_openai_gets_integrity_errors_untouched(relay: HostileRelay, key: str) -> None:
    relay.reset("swap_hash")
    with openai_client(relay.url, key, httpx.HTTPTransport()) as client:
        with pytest.raises(errors.ResponseHashMismatch):
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
        relay.mode = "drop_final"
        stream = client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=4, stream=True
        )
        with pytest.raises(errors.StreamTruncated):
            list(stream)


def test_a_mismatched_base_url_still_never_sends_plaintext(
    client_deployment: Deployment, key: str
) -> None:
    wire = Recording()
    http = veil.openai_http_client(client_deployment.url, key, transport=wire, insecure_no_tee=True)
    with openai.OpenAI(
        base_url=f"{client_deployment.url}/somewhere/else/v1", api_key=key, http_client=http
    ) as client:
        answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert answer.choices[0].message.role == "assistant"
    assert [path for path, _ in wire.requests] == [
        "/v1/nodes/lock",
        "/v1/confidential/chat/completions",
    ]
    assert_nothing_plain(wire.requests)


def test_the_drop_in_is_strict_about_attestation_by_default(relay: HostileRelay, key: str) -> None:
    relay.reset()
    http = veil.openai_http_client(relay.url, key)
    client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=key, http_client=http)
    with client, pytest.raises(errors.AttestationFailed):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert len(relay.locks()) == 1 and relay.confidential_bodies() == []


def test_the_drop_in_reports_protocol_and_attestation(
    client_deployment: Deployment, key: str
) -> None:
    wire = Recording()
    http = veil.openai_http_client(
        client_deployment.url, key, transport=wire, insecure_no_tee=True, protocol="atoma-v1"
    )
    with openai.OpenAI(
        base_url=f"{client_deployment.url}/v1", api_key=key, http_client=http
    ) as client:
        raw = client.embeddings.with_raw_response.create(model=EMBED, input="x")
    assert raw.headers["x-veil-protocol"] == "atoma-v1"
    assert raw.headers["x-veil-attestation"].startswith("NO TEE")
    assert "protocol" not in json.loads(wire.requests[-1][1])


def test_which_requests_are_sealed() -> None:
    from veil.client.transport import inference_endpoint

    def endpoint(method: str, url: str) -> str | None:
        return inference_endpoint(httpx.Request(method, url))

    assert endpoint("POST", "http://g/v1/chat/completions") == "chat"
    assert endpoint("POST", "http://g/prefix/v1/embeddings/") == "embeddings"
    assert endpoint("POST", "http://g/v1/images/generations") == "images"
    assert endpoint("POST", "http://g/v1/confidential/chat/completions") is None
    assert endpoint("GET", "http://g/v1/models") is None
    assert endpoint("POST", "http://g/v1/completions") is None


def test_routes_that_cannot_be_sealed_are_refused_not_sent(
    client_deployment: Deployment, key: str
) -> None:
    wire = Recording()
    with openai_client(client_deployment.url, key, wire) as client:
        with pytest.raises(errors.PlaintextRefused):
            client.completions.create(model=CHAT, prompt=SECRET, max_tokens=4)
        with pytest.raises(errors.PlaintextRefused):
            client.moderations.create(input=SECRET)
    assert wire.requests == []


def test_a_plaintext_body_posted_under_confidential_is_refused_not_sent(
    client_deployment: Deployment, key: str
) -> None:
    """The transport passes ``/confidential/`` requests through only when they are envelopes: a
    base_url that points openai at the confidential routes must not send the prompt in clear."""
    wire = Recording()
    http = veil.openai_http_client(
        client_deployment.url, key, transport=wire, backoff=0, insecure_no_tee=True
    )
    with (
        openai.OpenAI(
            base_url=f"{client_deployment.url}/v1/confidential", api_key=key, http_client=http
        ) as client,
        pytest.raises(errors.PlaintextRefused, match="not a sealed envelope"),
    ):
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": SECRET}], max_tokens=4
        )
    assert wire.requests == []
