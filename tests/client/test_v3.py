"""veil-v3 on the client, without servers: locks carrying a post-quantum key and the evidence that
binds it, the flow sealing to that key (or refusing a lock without one), and answers sealed by a
node simulated with ``veil.hazmat.v3.ServerSession``, opened and checked chunk by chunk."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import veil
from veil.attestation import NoTeeProvider, Policy, build_evidence
from veil.client import cli, errors, options
from veil.client import lock as locks
from veil.client import plan as plans
from veil.client.flow import Answer, Send, StreamOpened, confidential
from veil.client.opening import V3ResponseOpener, open_single
from veil.client.options import ClientOptions
from veil.client.receipt import Receipt
from veil.client.streaming import DONE_EVENT, StreamChecker, VerifiedEvents
from veil.hazmat import v3
from veil.hazmat.v3 import Kem, NodeKemKey
from veil.wire.envelopes import RESERVATION_HEADER, ConfidentialComputeRequest, Usage
from veil.wire.errors import InvalidBody
from veil.wire.routes import ROUTES

NONCE = bytes(range(32))
DEV = Policy(allow_no_tee=True)  # these locks come from no TEE, like the test nodes
CLASSICAL = Policy(allow_no_tee=True, allow_classical_kem=True)
RESERVATION = "5e" * 16
ENDPOINT = ROUTES["chat"].confidential
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
    {"id": "c", "choices": [], "usage": USAGE},
]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass
class Node:
    """A node's keys, as a keyring would hold them: X25519 (atoma-v1 and v3's classical KEM),
    X-Wing (v3's post-quantum KEM) and Ed25519."""

    x25519: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    hybrid: NodeKemKey = field(default_factory=NodeKemKey.generate)
    signer: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> bytes:
        return self.x25519.public_key().public_bytes_raw()

    @property
    def classical(self) -> NodeKemKey:
        return NodeKemKey.from_seed(Kem.X25519, self.x25519.private_bytes_raw())

    def keys(self, key_id: str) -> NodeKemKey | None:
        return next((k for k in (self.hybrid, self.classical) if k.key_id == key_id), None)

    def lock(
        self,
        nonce: bytes = NONCE,
        *,
        with_kem: bool = True,
        evidence_kem: bytes | str | None = "same",
        **change: object,
    ) -> bytes:
        """The gateway's lock answer; ``evidence_kem``: the post-quantum key the evidence binds
        ("same": the node's, None: none, as the evidence of a node without one)."""
        signing = self.signer.public_key().public_bytes_raw()
        bound = self.hybrid.public_key if evidence_kem == "same" else evidence_kem
        assert bound is None or isinstance(bound, bytes)
        evidence = build_evidence(
            NoTeeProvider(), self.public_key, signing, nonce, kem_public_key=bound
        )
        lock: dict[str, object] = {
            "public_key": b64(self.public_key), "node_small_id": 1, "stack_small_id": 2,
            "key_id": locks.node_key_id(self.public_key), "node_signing_public_key": b64(signing),
            "reserved_units": 10, "evidence": evidence.model_dump(mode="json"),
            "reservation_id": RESERVATION,
        }  # fmt: skip
        if with_kem:
            lock |= {
                "kem": Kem.HYBRID.value,
                "kem_public_key": b64(self.hybrid.public_key),
                "kem_key_id": self.hybrid.key_id,
            }
        lock.update(change)
        return json.dumps({k: v for k, v in lock.items() if v is not None}).encode()

    def open(
        self, raw: bytes, kems: frozenset[Kem] = frozenset({Kem.HYBRID})
    ) -> tuple[bytes, v3.ServerSession]:
        envelope = ConfidentialComputeRequest.model_validate_json(raw)
        return v3.open_request(
            envelope, self.keys, endpoint=ENDPOINT, allowed_kems=kems, reservation_id=RESERVATION
        )

    def answer(self, server: v3.ServerSession, document: dict[str, Any]) -> str:
        usage = document.get("usage")
        sealed = server.seal(
            json.dumps(document).encode(), final=True, sign=self.signer.sign, usage=usage
        )
        return sealed.model_dump_json(exclude_none=True)

    def stream(self, server: v3.ServerSession) -> list[str]:
        events = []
        for i, chunk in enumerate(CHUNKS):
            final = i == len(CHUNKS) - 1
            sealed = server.seal(
                json.dumps(chunk).encode(), final=final, sign=self.signer.sign,
                usage=USAGE if final else None,
            )  # fmt: skip
            events.append(sealed.model_dump_json(exclude_none=True))
        return events


def failed_steps(raw: bytes, policy: Policy = DEV) -> list[str]:
    with pytest.raises(errors.AttestationFailed) as caught:
        locks.accept_lock(raw, policy, NONCE)
    report = caught.value.report
    return [] if report is None else [step.name for step in report.failures]


# -- the default --------------------------------------------------------------------------------
def test_veil_v3_is_the_default_everywhere() -> None:
    assert options.DEFAULT_PROTOCOL == "veil-v3"
    assert set(options.PROTOCOLS) == {"veil-v3", "atoma-v1"}  # veil-v2 is retired
    assert ClientOptions.resolve("http://gw").protocol == "veil-v3"
    assert options.check_protocol("veil-v3") == "veil-v3"
    with veil.Client("http://gw", "k") as client:
        assert client.protocol == "veil-v3"
    with pytest.raises(ValueError, match="veil-v3"):
        veil.Client("http://gw", "k", protocol="veil-v2")

    async def async_protocol() -> str:
        async with veil.AsyncClient("http://gw", "k") as client:
            return client.protocol

    assert asyncio.run(async_protocol()) == "veil-v3"
    for command in (cli.chat, cli.embed):
        assert inspect.signature(command).parameters["protocol"].default == "veil-v3"
    assert inspect.signature(plans.seal).parameters["protocol"].default == "veil-v3"
    assert not Policy().allow_classical_kem  # post-quantum unless a policy says otherwise


# -- locks --------------------------------------------------------------------------------------
def test_a_v3_lock_names_its_post_quantum_key_and_the_evidence_binds_it() -> None:
    node = Node()
    lock = locks.accept_lock(node.lock(), DEV, NONCE)
    assert lock.kem_public_key == node.hybrid.public_key
    assert lock.kem_key_id == node.hybrid.key_id != lock.key_id
    steps = {step.name: step for step in lock.attestation.steps}
    assert steps["binding"].ok and "veil-v3 report" in steps["binding"].detail
    assert steps["expected keys"].ok and "ML-KEM-768" in steps["expected keys"].detail
    # A lock without a post-quantum key is a lock all the same (for atoma-v1, or veil-v3 with
    # X25519 where the policy allows it).
    bare = locks.accept_lock(node.lock(with_kem=False, evidence_kem=None), DEV, NONCE)
    assert bare.kem_public_key is None and bare.kem_key_id is None


def test_a_bundle_that_binds_another_kem_key_or_none_fails_attestation() -> None:
    node = Node()
    other = NodeKemKey.generate().public_key
    # The gateway put its own ML-KEM key in the lock, or the evidence binds no ML-KEM key.
    assert failed_steps(node.lock(evidence_kem=other)) == ["expected keys"]
    assert failed_steps(node.lock(evidence_kem=None)) == ["expected keys"]
    # The document claims the lock's key, but what the TEE signed binds another.
    document = json.loads(node.lock(evidence_kem=other))
    document["evidence"]["kem_public_key"] = b64(node.hybrid.public_key)
    assert failed_steps(json.dumps(document).encode()) == ["binding"]
    # Or the document (and the lock) drop the key to pass for a node without one: what the TEE
    # signed still commits to it, so the binding fails.
    document = json.loads(node.lock())
    del document["evidence"]["kem_public_key"]
    document.pop("kem"), document.pop("kem_public_key"), document.pop("kem_key_id")
    assert failed_steps(json.dumps(document).encode()) == ["binding"]


def test_inconsistent_kem_fields_are_refused() -> None:
    node = Node()
    with pytest.raises(errors.UnverifiableNode, match="kem_key_id"):
        locks.accept_lock(node.lock(kem_key_id=node.classical.key_id), DEV, NONCE)
    with pytest.raises(errors.UnverifiableNode, match="kem"):
        locks.accept_lock(node.lock(kem="x25519"), DEV, NONCE)
    with pytest.raises(errors.UnverifiableNode, match="no post-quantum key"):
        locks.accept_lock(node.lock(kem_public_key=None), DEV, NONCE)


# -- sealing ------------------------------------------------------------------------------------
PLAN = plans.plan_request("chat", {"model": "m", "messages": [], "max_tokens": 4})


def test_v3_seals_to_the_post_quantum_key_bound_to_the_reservation() -> None:
    node = Node()
    lock = locks.accept_lock(node.lock(), DEV, NONCE)
    raw, opener = plans.seal(PLAN, lock, 1, 0.0, "veil-v3")
    envelope = json.loads(raw)
    assert envelope["protocol"] == "veil-v3" and envelope["kem"] == "mlkem768-x25519"
    assert envelope["key_id"] == node.hybrid.key_id and envelope["reservation_id"] == RESERVATION
    assert base64.b64decode(envelope["node_dh_public_key"]) == node.hybrid.x25519_public_key
    body, _ = node.open(raw)
    assert body == PLAN.body
    assert isinstance(opener, V3ResponseOpener)
    assert (opener.receipt.protocol, opener.receipt.kem) == ("veil-v3", "mlkem768-x25519")
    assert opener.receipt.kem_key_id == node.hybrid.key_id
    assert opener.receipt.node_key_id == lock.key_id
    # A node that accepts only the classical KEM refuses it.
    with pytest.raises(InvalidBody, match="does not accept"):
        node.open(raw, frozenset({Kem.X25519}))


def test_a_lock_without_a_kem_key_is_refused_unless_the_policy_allows_classical() -> None:
    node = Node()
    lock = locks.accept_lock(node.lock(with_kem=False, evidence_kem=None), DEV, NONCE)
    with pytest.raises(errors.NoPostQuantumKey) as caught:
        plans.seal(PLAN, lock, 1, 0.0, "veil-v3")
    assert isinstance(caught.value, errors.UnverifiableNode)
    assert caught.value.code == "NO_POST_QUANTUM_KEY"
    assert "post-quantum" in caught.value.message and "allow_classical_kem" in caught.value.message
    # With the policy's consent: veil-v3 still, with X25519 to the lock's (attested) X25519 key.
    raw, opener = plans.seal(PLAN, lock, 1, 0.0, "veil-v3", allow_classical_kem=True)
    envelope = json.loads(raw)
    assert envelope["protocol"] == "veil-v3" and envelope["kem"] == "x25519"
    assert envelope["key_id"] == lock.key_id
    assert node.open(raw, frozenset({Kem.X25519}))[0] == PLAN.body
    assert opener.receipt.kem == "x25519" and "veil-v3 x25519" in opener.receipt.summary()
    # A lock with a post-quantum key is sealed to it even when the classical KEM is allowed.
    hybrid = locks.accept_lock(node.lock(), CLASSICAL, NONCE)
    raw, _ = plans.seal(PLAN, hybrid, 1, 0.0, "veil-v3", allow_classical_kem=True)
    assert json.loads(raw)["kem"] == "mlkem768-x25519"


def test_an_unusable_classical_key_is_refused() -> None:
    node = Node()
    lock = locks.accept_lock(
        node.lock(with_kem=False, evidence_kem=None), DEV, NONCE
    )  # a genuine lock, then its key swapped for a point of low order
    broken = locks.Lock(**{**lock.__dict__, "node_public_key": bytes(32)})
    with pytest.raises(errors.UnverifiableNode, match="unusable"):
        plans.seal(PLAN, broken, 1, 0.0, "veil-v3", allow_classical_kem=True)


# -- the flow -----------------------------------------------------------------------------------
def flow_nonce(step: Any) -> bytes:
    assert isinstance(step, Send) and step.request.url.path == "/v1/nodes/lock"
    return base64.b64decode(json.loads(step.request.content)["attestation_nonce"])


def test_the_flow_seals_v3_and_opens_the_signed_answer() -> None:
    node = Node()
    policy_options = ClientOptions.resolve("http://gw", "k", insecure_no_tee=True)
    flow = confidential(PLAN, policy_options)
    nonce = flow_nonce(next(flow))
    sealed = flow.send(httpx.Response(200, content=node.lock(nonce)))
    assert isinstance(sealed, Send) and sealed.request.url.path == ENDPOINT
    assert sealed.request.headers[RESERVATION_HEADER] == RESERVATION
    body, server = node.open(sealed.request.content)
    assert body == PLAN.body
    answer = {"id": "x", "choices": [], "usage": USAGE}
    with pytest.raises(StopIteration) as done:
        flow.send(httpx.Response(200, content=node.answer(server, answer)))
    outcome = done.value.value
    assert isinstance(outcome, Answer) and json.loads(outcome.plaintext) == answer
    receipt = outcome.receipt
    assert receipt.protocol == "veil-v3" and receipt.kem == "mlkem768-x25519"
    assert receipt.usage == Usage(**USAGE) and receipt.signature_verified
    assert receipt.messages_verified == 1 and receipt.units_charged == 5
    assert "veil-v3 mlkem768-x25519" in receipt.summary()


def test_the_flow_refuses_a_lock_without_a_kem_key_before_sending() -> None:
    node = Node()
    for policy, refused in ((DEV, True), (CLASSICAL, False)):
        flow = confidential(PLAN, ClientOptions.resolve("http://gw", "k", policy=policy))
        nonce = flow_nonce(next(flow))
        lock = httpx.Response(200, content=node.lock(nonce, with_kem=False, evidence_kem=None))
        if refused:
            with pytest.raises(errors.NoPostQuantumKey):
                flow.send(lock)  # the flow ends here: no envelope was built or sent
        else:
            sealed = flow.send(lock)
            assert (
                isinstance(sealed, Send) and json.loads(sealed.request.content)["kem"] == "x25519"
            )


def test_a_retry_seals_afresh_never_resending_the_ciphertext() -> None:
    node = Node()
    flow = confidential(PLAN, ClientOptions.resolve("http://gw", "k", backoff=0, policy=DEV))
    first = flow.send(httpx.Response(200, content=node.lock(flow_nonce(next(flow)))))
    assert isinstance(first, Send)
    flow.send(httpx.Response(409, json={"error": {"code": "STALE_NODE_KEY", "message": "x"}}))
    relock = flow.send(None)
    second = flow.send(httpx.Response(200, content=node.lock(flow_nonce(relock))))
    assert isinstance(second, Send)
    one, two = json.loads(first.request.content), json.loads(second.request.content)
    for name in ("ciphertext", "request_id", "client_dh_public_key", "nonce", "salt"):
        assert one[name] != two[name], name
    assert two["protocol"] == "veil-v3"
    assert node.open(second.request.content)[0] == PLAN.body
    # An answer to the first envelope cannot be passed off as the second's.
    _, stale = node.open(first.request.content)
    with pytest.raises(errors.DecryptionError):
        flow.send(httpx.Response(200, content=node.answer(stale, {"choices": []})))


def test_the_flow_streams_v3() -> None:
    node = Node()
    plan = plans.plan_request("chat", {"model": "m", "messages": [], "stream": True})
    flow = confidential(plan, ClientOptions.resolve("http://gw", "k", policy=DEV))
    sealed = flow.send(httpx.Response(200, content=node.lock(flow_nonce(next(flow)))))
    assert isinstance(sealed, Send) and sealed.stream
    _, server = node.open(sealed.request.content)
    body = "".join(f"data: {e}\n\n" for e in node.stream(server)) + "data: [DONE]\n\n"
    events = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=body.encode()
    )
    with pytest.raises(StopIteration) as done:
        flow.send(events)
    opened = done.value.value
    assert isinstance(opened, StreamOpened)
    frames = list(VerifiedEvents(opened.response, opened.checker))
    assert frames[-1] == DONE_EVENT and len(frames) == len(CHUNKS) + 1
    assert opened.receipt.usage == Usage(**USAGE) and opened.receipt.messages_verified == 3


# -- streams and answers ------------------------------------------------------------------------
def v3_stream(node: Node | None = None) -> tuple[StreamChecker, list[str], Receipt]:
    """A checker for a fresh v3 request, and the node's genuine events answering it."""
    node = node or Node()
    lock = locks.accept_lock(node.lock(), DEV, NONCE)
    plan = plans.plan_request("chat", {"model": "m", "messages": [], "stream": True})
    raw, opener = plans.seal(plan, lock, 1, 0.0, "veil-v3")
    _, server = node.open(raw)
    return StreamChecker(opener), node.stream(server), opener.receipt


def feed(checker: StreamChecker, events: list[str]) -> None:
    for event in events:
        checker.event(event)
    checker.end()


def test_a_v3_stream_in_order_is_verified_with_one_signature() -> None:
    checker, events, receipt = v3_stream()
    assert [("signature" in json.loads(e)) for e in events] == [False, False, True]
    for event in events:
        assert checker.event(event) is not None
    checker.end()
    assert checker.event("[DONE]") is None
    assert receipt.usage == Usage(**USAGE) and receipt.messages_verified == 3
    assert receipt.protocol == "veil-v3" and receipt.signature_verified
    with pytest.raises(errors.StreamCorrupt):
        checker.event(events[1])
    with pytest.raises(errors.StreamCorrupt):
        checker.event("[DONE]")  # a second end


def test_v3_order_errors_map_to_the_client_errors() -> None:
    def refused(reorder: Callable[[list[str]], list[str]]) -> type[Exception]:
        checker, events, _ = v3_stream()
        with pytest.raises(errors.IntegrityError) as caught:
            feed(checker, reorder(events))
        return type(caught.value)

    assert refused(lambda e: [e[0], e[2]]) is errors.StreamCorrupt  # dropped
    assert refused(lambda e: [e[1], e[0], e[2]]) is errors.StreamCorrupt  # reordered
    assert refused(lambda e: [e[0], e[0], e[1], e[2]]) is errors.StreamCorrupt  # duplicated
    assert refused(lambda e: [e[0], e[1]]) is errors.StreamTruncated  # truncated
    assert refused(lambda e: []) is errors.StreamTruncated  # nothing at all
    assert refused(lambda e: [e[0], "[DONE]"]) is errors.StreamTruncated  # ended early
    assert refused(lambda e: [*e, e[2]]) is errors.StreamCorrupt  # after the final chunk
    _, foreign, _ = v3_stream()
    assert refused(lambda e: [e[0], foreign[1], e[2]]) is errors.StreamCorrupt  # other answer
    assert refused(lambda e: [foreign[0], *e[1:]]) is errors.DecryptionError  # other request


def test_v3_tampering_maps_to_the_client_errors() -> None:
    def refused(change: Callable[[dict[str, Any]], None], at: int = 0) -> type[Exception]:
        checker, events, _ = v3_stream()
        for event in events[:at]:
            checker.event(event)
        document = json.loads(events[at])
        change(document)
        with pytest.raises(errors.IntegrityError) as caught:
            feed(checker, [json.dumps(document), *events[at + 1 :]])
        return type(caught.value)

    def flip(document: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(document["ciphertext"]))
        raw[-1] ^= 1
        document["ciphertext"] = b64(bytes(raw))

    def put(name: str, value: object) -> Callable[[dict[str, Any]], None]:
        return lambda document: document.__setitem__(name, value)

    assert refused(flip) is errors.DecryptionError
    assert refused(flip, at=2) is errors.DecryptionError
    assert refused(put("final", True)) is errors.DecryptionError  # the flag is in the AAD
    assert refused(put("nonce", b64(bytes(12)))) is errors.DecryptionError
    assert refused(put("response_hash", b64(bytes(32)))) is errors.ResponseHashMismatch
    assert refused(lambda d: d.pop("response_hash")) is errors.ResponseHashMismatch
    assert refused(put("response_nonce", b64(bytes(32))), at=1) is errors.StreamCorrupt
    assert refused(lambda d: d.pop("index")) is errors.StreamCorrupt  # not a v3 chunk
    assert refused(put("index", 1)) is errors.StreamCorrupt  # out of place
    # Only the final chunk is signed, and its signature covers the usage sent beside it.
    assert refused(put("signature", b64(bytes(64))), at=2) is errors.SignatureInvalid
    assert refused(lambda d: d.pop("signature"), at=2) is errors.SignatureInvalid
    more = {**USAGE, "completion_tokens": 200, "total_tokens": 203}
    assert refused(put("usage", more), at=2) is errors.SignatureInvalid
    assert refused(put("signature", b64(bytes(64)))) is errors.SignatureInvalid  # not the final
    assert refused(put("usage", USAGE)) is errors.UsageMismatch  # unsigned, beside a chunk
    # An altered chunk with a signature added is still reported as altered.
    assert (
        refused(lambda d: (flip(d), d.update(signature=b64(bytes(64))))) is errors.DecryptionError
    )


def test_a_forged_final_signature_is_refused() -> None:
    node = Node()
    checker, events, receipt = v3_stream(node)
    final = json.loads(events[2])
    impostor = Ed25519PrivateKey.generate()
    # The impostor signs exactly what the node would have: the running hash and the usage.
    message = v3.signed_message(base64.b64decode(final["response_hash"]), Usage(**USAGE))
    final["signature"] = b64(impostor.sign(message))
    checker.event(events[0])
    checker.event(events[1])
    with pytest.raises(errors.SignatureInvalid):
        checker.event(json.dumps(final))
    assert receipt.usage is None and not receipt.signature_verified


def test_a_whole_v3_answer_must_be_final_and_signed() -> None:
    checker, events, _ = v3_stream()
    with pytest.raises(errors.MalformedResponse, match="final"):
        open_single(checker.opener, events[0].encode())
    node = Node()
    lock = locks.accept_lock(node.lock(), DEV, NONCE)
    raw, opener = plans.seal(PLAN, lock, 1, 0.0, "veil-v3")
    _, server = node.open(raw)
    answer = json.loads(node.answer(server, {"choices": [], "usage": USAGE}))
    answer["usage"]["total_tokens"] = 6  # in clear: signed, so the signature fails
    with pytest.raises(errors.SignatureInvalid):
        open_single(opener, json.dumps(answer).encode())


# -- the SDK over a simulated gateway and node --------------------------------------------------
class SimulatedGateway(httpx.BaseTransport):
    """A gateway and its v3 node in one transport: locks with evidence for the caller's nonce,
    opens what it is sent and answers sealed with ``v3.ServerSession``."""

    def __init__(self, node: Node, *, with_kem: bool = True) -> None:
        self.node, self.with_kem = node, with_kem
        self.envelopes: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/nodes/lock":
            nonce = base64.b64decode(json.loads(request.content)["attestation_nonce"])
            kem = "same" if self.with_kem else None
            content = self.node.lock(nonce, with_kem=self.with_kem, evidence_kem=kem)
            return httpx.Response(200, content=content)
        self.envelopes.append(json.loads(request.content))
        body, server = self.node.open(request.content, frozenset(Kem))
        if json.loads(body).get("stream"):
            text = "".join(f"data: {e}\n\n" for e in self.node.stream(server)) + "data: [DONE]\n\n"
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=text.encode()
            )
        completion = {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "blue"}}],
            "usage": USAGE,
        }  # fmt: skip
        return httpx.Response(200, content=self.node.answer(server, completion))


def test_the_sdk_speaks_v3_by_default() -> None:
    gateway = SimulatedGateway(Node())
    with veil.Client("http://gw", "k", transport=gateway, insecure_no_tee=True) as client:
        answer = client.chat.completions.create(model="m", messages=[], max_tokens=4)
        stream = client.chat.completions.create(model="m", messages=[], stream=True)
        chunks = list(stream)
        raw = client.openai.chat.completions.with_raw_response.create(model="m", messages=[])
    assert answer.choices[0].message.content == "blue"
    assert answer.veil.protocol == "veil-v3" and answer.veil.kem == "mlkem768-x25519"
    assert answer.veil.signature_verified and answer.veil.usage == Usage(**USAGE)
    assert chunks[-1].usage is not None and stream.veil.kem == "mlkem768-x25519"
    assert raw.headers["x-veil-protocol"] == "veil-v3"
    assert raw.headers["x-veil-kem"] == "mlkem768-x25519"
    assert {e["kem"] for e in gateway.envelopes} == {"mlkem768-x25519"}
    # A node without a post-quantum key: refused, unless the policy allows the classical KEM.
    classical = SimulatedGateway(Node(), with_kem=False)
    with (
        veil.Client("http://gw", "k", transport=classical, insecure_no_tee=True) as client,
        pytest.raises(errors.NoPostQuantumKey),
    ):
        client.chat.completions.create(model="m", messages=[])
    assert classical.envelopes == []
    with veil.Client("http://gw", "k", transport=classical, policy=CLASSICAL) as client:
        answer = client.chat.completions.create(model="m", messages=[])
    assert answer.veil.kem == "x25519" and [e["kem"] for e in classical.envelopes] == ["x25519"]
