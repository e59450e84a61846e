"""The confidential flow without a network: the generator is handed the responses a gateway would
give, and must ask for exactly the requests and pauses the protocol says; the options object and
the verified event stream, likewise without servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pytest

from tests.client.test_pieces import DEV, NONCE, lock_json
from tests.client.test_v3 import v3_stream
from veil.client import errors
from veil.client.flow import Send, Wait, arun, confidential, run
from veil.client.lock import accept_lock
from veil.client.options import DEFAULT_BASE_URL, ClientOptions
from veil.client.plan import plan_body, plan_request
from veil.client.streaming import DONE_EVENT, VerifiedEvents

OPTIONS = ClientOptions.resolve("http://gw:1/v1", "k", backoff=0.5, insecure_no_tee=True)


def error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "no"}})


def test_options_are_resolved_once_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OPTIONS.base_url == "http://gw:1" and OPTIONS.policy.allow_no_tee
    assert [OPTIONS.delay(n) for n in (2, 3, 4)] == [0.5, 1.0, 2.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPTIONS.api_key = "other"  # type: ignore[misc]
    monkeypatch.setenv("VEIL_BASE_URL", "http://env:2/")
    monkeypatch.setenv("VEIL_API_KEY", "from-env")
    from_env = ClientOptions.resolve()
    assert (from_env.base_url, from_env.api_key) == ("http://env:2", "from-env")
    monkeypatch.delenv("VEIL_BASE_URL")
    assert ClientOptions.resolve().base_url == DEFAULT_BASE_URL
    with pytest.raises(ValueError, match="max_attempts"):
        ClientOptions.resolve(max_attempts=0)
    request = OPTIONS.request("GET", "/v1/stacks", api_key="caller")
    assert request.headers["authorization"] == "Bearer caller"
    assert str(request.url) == "http://gw:1/v1/stacks"


def test_a_request_encoded_elsewhere_is_sealed_as_it_is() -> None:
    raw = b'{"model": "m", "messages": [], "max_tokens": 3}'  # not the compact encoding
    plan = plan_body("chat", raw)
    assert plan.body == raw and plan.units == 3 + len(raw)
    with pytest.raises(ValueError, match="JSON object"):
        plan_body("chat", b"[1]")


def test_a_retryable_error_starts_again_with_a_new_lock_after_a_pause() -> None:
    flow = confidential(plan_request("embeddings", {"model": "e", "input": "x"}), OPTIONS)
    first = next(flow)
    assert isinstance(first, Send) and first.request.url.path == "/v1/nodes/lock"
    assert first.request.headers["authorization"] == "Bearer k"
    assert json.loads(first.request.content)["attestation_nonce"]
    assert flow.send(error(503, "SERVICE_UNAVAILABLE")) == Wait(0.5)
    again = flow.send(None)
    assert isinstance(again, Send) and again.request.url.path == "/v1/nodes/lock"
    assert again.request.content != first.request.content  # a fresh nonce
    assert flow.send(error(503, "SERVICE_UNAVAILABLE")) == Wait(1.0)
    flow.send(None)
    with pytest.raises(errors.ServiceUnavailableError):  # the third attempt was the last
        flow.send(error(503, "SERVICE_UNAVAILABLE"))


def test_a_balance_error_asks_for_the_stacks_and_reports_what_is_left() -> None:
    plan = plan_request("chat", {"model": "m", "messages": [], "max_tokens": 4})
    flow = confidential(plan, OPTIONS)
    next(flow)
    lookup = flow.send(error(402, "BALANCE_ERROR"))
    assert isinstance(lookup, Send) and lookup.request.method == "GET"
    assert lookup.request.url.path == "/v1/stacks"
    stacks = {"stacks": [{"model": "m", "free_units": 7}, {"model": "other", "free_units": 9}]}
    with pytest.raises(errors.BalanceError) as caught:
        flow.send(httpx.Response(200, json=stacks))
    assert caught.value.remaining_units == 7 and caught.value.model == "m"
    # The lookup failing on the network still raises the balance error, without the units.
    flow = confidential(plan, OPTIONS)
    next(flow)
    flow.send(error(402, "BALANCE_ERROR"))
    with pytest.raises(errors.BalanceError) as caught:
        flow.throw(errors.TransportError("GET /v1/stacks failed"))
    assert caught.value.remaining_units is None


class Gateway(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers every request with the next of ``answers``, and remembers the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)


def test_both_drivers_run_the_same_flow() -> None:
    plan = plan_request("embeddings", {"model": "e", "input": "x"})
    options = dataclasses.replace(OPTIONS, backoff=0.0, max_attempts=2)

    def gateway() -> Gateway:
        return Gateway(error(425, "UNAVAILABLE_STACK"), error(401, "AUTH_ERROR"))

    for drive in (
        lambda g: run(confidential(plan, options), g),
        lambda g: asyncio.run(arun(confidential(plan, options), g)),
    ):
        used = gateway()
        with pytest.raises(errors.AuthenticationError):
            drive(used)
        assert used.paths == ["/v1/nodes/lock", "/v1/nodes/lock"]
        broken = Gateway(httpx.ConnectError("refused"))
        with pytest.raises(errors.TransportError) as caught:
            drive(broken)
        assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_stream_is_handed_on_unread_only_when_it_is_an_event_stream() -> None:
    plan = plan_request("chat", {"model": "m", "messages": [], "stream": True})
    lock = httpx.Response(200, content=lock_json())
    flow = confidential(plan, OPTIONS)
    next(flow)
    # The flow's own nonce is random, so the lock's evidence cannot match it: refused unsealed.
    with pytest.raises(errors.AttestationFailed):
        flow.send(lock)
    assert accept_lock(lock_json(), DEV, NONCE).attestation.ok
    send = Send(httpx.Request("POST", "http://gw/x"), stream=True)
    events = httpx.Response(200, headers={"content-type": "text/event-stream"})
    assert send.keeps_open(events)
    assert not send.keeps_open(httpx.Response(200, headers={"content-type": "text/plain"}))
    assert not send.keeps_open(error(503, "SERVICE_UNAVAILABLE"))
    assert not Send(send.request).keeps_open(events)


def test_verified_events_are_the_plaintexts_then_done() -> None:
    checker, sealed, receipt = v3_stream()
    body = "".join(f"data: {event}\n\n" for event in sealed) + "data: [DONE]\n\n"
    upstream = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=body.encode()
    )
    frames = list(VerifiedEvents(upstream, checker))
    assert frames[-1] == DONE_EVENT and len(frames) == len(sealed) + 1
    chunks = [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-1]]
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert receipt.messages_verified == len(sealed) and receipt.signature_verified

    # Without its final chunk, the stream raises where [DONE] would have been.
    checker, sealed, _ = v3_stream()
    truncated = "".join(f"data: {event}\n\n" for event in sealed[:-1])
    upstream = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=truncated.encode()
    )
    handed: list[bytes] = []
    with pytest.raises(errors.StreamTruncated):
        handed.extend(VerifiedEvents(upstream, checker))
    assert DONE_EVENT not in handed
