"""A hostile gateway, attack by attack: each one fails closed with a specific error, and the ledger
stays balanced (no reservation left behind, and only what the node's signed receipts say charged).

``HostileGateway`` is an ASGI app on loopback between the Veil client and the real gateway, which
in turn fronts a real node with the real embedded models. It sees and may rewrite everything the
untrusted gateway sees: the lock response (keys, evidence), the envelope (model, stack, units,
route), and the answers (JSON or the SSE stream). It records what it forwarded and what the real
gateway answered, including the node's signed usage receipts (``: veil-receipt`` SSE comments).

The node here has no TEE (its evidence has format "none"), so clients opt in with
``insecure_no_tee=True`` wherever the attack is not about attestation; the key substitution test
runs the default (strict) client too.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import veil
from tests.e2e.conftest import CHAT, EMBED, Deployment, deploy
from tests.node.conftest import RunningNode, start_node
from tests.servers import ServerThread, wait_until
from veil.attestation import NoTeeProvider, build_evidence
from veil.client import errors
from veil.hazmat import v3
from veil.node.keyring import NodeKey
from veil.node.service import EngineRegistry
from veil.wire.envelopes import Usage
from veil.wire.keyid import key_id
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt, verify_token

LOCK_TTL = 3  # seconds an unused lock holds its units (short, so abandoned locks are seen back)
MESSAGES = [{"role": "user", "content": "Count from one to ten"}]
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "attestation-samples"
RECEIPT_PREFIX = RECEIPT_COMMENT.decode()


# -- the hostile gateway ------------------------------------------------------------------------
@dataclass
class Forwarded:
    path: str
    body: bytes
    status: int
    answer: bytes


@dataclass
class HostileGateway:
    """Proxies to ``upstream`` (the real gateway), rewriting what the hooks say."""

    upstream: str
    url: str = ""
    seen: list[tuple[str, bytes]] = field(default_factory=list)  # what the client sent
    forwarded: list[Forwarded] = field(default_factory=list)  # confidential POSTs, as forwarded
    streams: list[list[str]] = field(default_factory=list)  # SSE blocks as the gateway sent them
    rewrite_lock: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    rewrite_envelope: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    reroute: str | None = None  # forward confidential POSTs to this path instead
    before_forward: Callable[[], None] | None = None
    rewrite_answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    rewrite_stream: Callable[[list[str]], list[str]] | None = None

    def reset(self) -> HostileGateway:
        self.seen, self.forwarded, self.streams = [], [], []
        self.rewrite_lock = self.rewrite_envelope = self.before_forward = None
        self.rewrite_answer = self.rewrite_stream = None
        self.reroute = None
        return self

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(body) for path, body in self.seen if "/confidential/" in path]

    def app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.upstream, timeout=300)

        async def proxy(request: Request) -> Response:
            path, body = request.url.path, await request.body()
            self.seen.append((path, body))
            headers = {
                k: v for k, v in request.headers.items() if k in ("authorization", "content-type")
            }
            confidential = path.startswith("/v1/confidential/")
            if confidential:
                if self.rewrite_envelope is not None:
                    body = json.dumps(self.rewrite_envelope(json.loads(body))).encode()
                path = self.reroute or path
                if self.before_forward is not None:
                    self.before_forward()
            upstream = await client.request(
                request.method, path, params=dict(request.query_params), content=body,
                headers=headers,
            )  # fmt: skip
            content_type = upstream.headers.get("content-type", "")
            if confidential:
                self.forwarded.append(Forwarded(path, body, upstream.status_code, upstream.content))
            if path == "/v1/nodes/lock" and upstream.status_code == 200 and self.rewrite_lock:
                return JSONResponse(self.rewrite_lock(json.loads(body), upstream.json()))
            if not confidential or upstream.status_code != 200:
                return Response(upstream.content, upstream.status_code, media_type=content_type)
            if content_type.startswith("text/event-stream"):
                blocks = [b for b in upstream.text.split("\n\n") if b]
                self.streams.append(list(blocks))
                if self.rewrite_stream is not None:
                    blocks = self.rewrite_stream(blocks)
                return Response("".join(b + "\n\n" for b in blocks), media_type=content_type)
            answer = upstream.json()
            if self.rewrite_answer is not None:
                answer = self.rewrite_answer(answer)
            return JSONResponse(answer)

        return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])


# -- fixtures -----------------------------------------------------------------------------------
OTHER_CHAT = "smollm2-135m-instruct-twin"


class TwinChatModel:
    """The session's chat engine under a second model id: a node serving two chat models, so a
    model swap can name a model the node really serves for chat."""

    def __init__(self, engine: Any, model_id: str) -> None:
        self._engine = engine
        self.model_id = model_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, chat_engine: Any, embedding_engine: Any
) -> Iterator[Deployment]:
    registry = EngineRegistry()
    registry.add(chat_engine)
    registry.add(embedding_engine)
    registry.add(TwinChatModel(chat_engine, OTHER_CHAT))  # type: ignore[arg-type]
    # Short locks, and a gateway that re-reads node keys often (the rotation test needs it).
    servers, deployed = deploy(
        tmp_path_factory.mktemp("attacks"),
        [registry],
        lock_timeout_seconds=LOCK_TTL,
        health_interval_seconds=0.2,
    )
    with servers[0], servers[1]:
        yield deployed.started()


@pytest.fixture(scope="module")
def hostile(deployment: Deployment) -> Iterator[HostileGateway]:
    gateway = HostileGateway(deployment.url)
    with ServerThread(gateway.app()) as server:
        gateway.url = server.url
        yield gateway


@pytest.fixture(scope="module")
def other_node(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[RunningNode]:
    """A second, genuine node the victim's lock never named (not behind the gateway)."""
    server, node = start_node(tmp_path_factory.mktemp("other-node"), node_registry)
    with server:
        yield node


_victims = itertools.count(1)


@pytest.fixture
def user(deployment: Deployment) -> tuple[str, dict[str, int]]:
    """A fresh victim per test: one chat stack and one embeddings stack."""
    return deployment.new_user(f"victim-{next(_victims)}", {CHAT: 100_000, EMBED: 100_000})


def client(hostile: HostileGateway, key: str, **options: Any) -> veil.Client:
    options.setdefault("insecure_no_tee", True)  # the node has no TEE; see the module docstring
    options.setdefault("backoff", 0)
    return veil.Client(hostile.url, key, **options)


# -- the ledger ---------------------------------------------------------------------------------
def used(deployment: Deployment, stacks: dict[str, int]) -> dict[int, int]:
    return {sid: deployment.stack(sid)["used_units"] for sid in stacks.values()}


def assert_balanced(
    deployment: Deployment, before: dict[int, int], charged: dict[int, int] | None = None
) -> None:
    """Every stack's reservations are released (abandoned locks expire after LOCK_TTL) and its
    used units grew by exactly ``charged`` (nothing, unless a signed receipt says so)."""
    charged = charged or {}

    def state() -> dict[int, tuple[int, int]]:
        stacks = {sid: deployment.stack(sid) for sid in before}
        return {
            sid: (s["reserved_units"], s["used_units"] - before[sid]) for sid, s in stacks.items()
        }

    expected = {sid: (0, charged.get(sid, 0)) for sid in before}
    with contextlib.suppress(TimeoutError):  # the assert below says what differs
        wait_until(lambda: state() == expected, LOCK_TTL + 20, "the ledger to settle")
    assert state() == expected  # (reserved, newly used) per stack


def signed_charge(blocks: list[str], signing_key: Ed25519PublicKey) -> int:
    """What the node's newest valid usage receipt in a stream charges (the gateway settles it)."""
    charge = 0
    for block in blocks:
        for line in block.split("\n"):
            if line.startswith(RECEIPT_PREFIX):
                receipt = verify_token(line[len(RECEIPT_PREFIX) :], UsageReceipt, [signing_key])
                charge = receipt.compute_units
    return charge


def data_positions(blocks: list[str]) -> list[int]:
    """Indices of the sealed chunks (``data: {...}``; not ``[DONE]``, not comments)."""
    return [i for i, block in enumerate(blocks) if block.startswith("data: {")]


# -- 1. key substitution ------------------------------------------------------------------------
def substitute_keys(
    forge: str, attacker_x: bytes, attacker_ed: bytes, attacker_kem: bytes
) -> Callable[..., Any]:
    """The gateway answers the lock with its own keys (the X25519 one and the post-quantum one a
    veil-v3 client seals to), and evidence as ``forge`` says."""

    def rewrite(asked: dict[str, Any], lock: dict[str, Any]) -> dict[str, Any]:
        lock["public_key"] = base64.b64encode(attacker_x).decode()
        lock["key_id"] = key_id(attacker_x)
        lock["kem_public_key"] = base64.b64encode(attacker_kem).decode()
        lock["kem_key_id"] = key_id(attacker_kem)
        nonce = base64.b64decode(asked["attestation_nonce"])  # the client's own, fresh nonce
        if forge == "relay_genuine_evidence":
            return lock  # the node's real evidence: it binds the node's keys, not the attacker's
        lock["node_signing_public_key"] = base64.b64encode(attacker_ed).decode()
        evidence = build_evidence(
            NoTeeProvider(), attacker_x, attacker_ed, nonce, kem_public_key=attacker_kem
        )
        if forge == "rewrapped_tdx_quote":
            # A genuine Intel TDX quote (from another machine) around the attacker's keys.
            evidence = evidence.model_copy(
                update={
                    "format": "tdx",
                    "quote": (SAMPLES / "tdx_quote").read_bytes(),
                    "collateral": json.loads((SAMPLES / "tdx_quote_collateral.json").read_text()),
                    "warning": None,
                }
            )
        lock["evidence"] = evidence.model_dump(mode="json")
        return lock

    return rewrite


@pytest.mark.parametrize(
    ("forge", "strict", "failing_steps"),
    [
        ("relay_genuine_evidence", False, {"expected keys"}),
        ("forged_no_tee_evidence", True, {"format"}),
        ("rewrapped_tdx_quote", True, {"collateral", "quote", "binding"}),
    ],
)
def test_key_substitution_is_refused_before_anything_is_encrypted(
    deployment: Deployment,
    hostile: HostileGateway,
    user: tuple[str, dict[str, int]],
    forge: str,
    strict: bool,
    failing_steps: set[str],
) -> None:
    if forge == "rewrapped_tdx_quote" and not (SAMPLES / "tdx_quote").exists():
        pytest.skip("the TDX sample quote is not available")
    key, stacks = user
    before = used(deployment, stacks)
    attacker_x = X25519PrivateKey.generate().public_key().public_bytes_raw()
    attacker_ed = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    attacker_kem = v3.NodeKemKey.generate().public_key
    hostile.reset().rewrite_lock = substitute_keys(forge, attacker_x, attacker_ed, attacker_kem)
    with (
        client(hostile, key, insecure_no_tee=not strict) as victim,
        pytest.raises(errors.AttestationFailed) as caught,
    ):
        victim.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    report = caught.value.report
    assert report is not None and not report.ok
    assert {step.name for step in report.failures} & failing_steps
    # Refused before sealing: nothing was encrypted to the attacker's key, nothing was sent.
    assert hostile.paths() == ["/v1/nodes/lock"] and hostile.forwarded == []
    assert_balanced(deployment, before)


# -- 1b. a genuine enclave that runs no release the client pinned ------------------------------
TINFOIL_WORKFLOW = (
    "https://github.com/tinfoilsh/confidential-model-router/.github/workflows/"
    "tinfoil-release-publish.yml@refs/tags/v0.0.110"
)
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def genuine_snp_lock(release: dict[str, Any]) -> Callable[..., Any]:
    """The gateway answers the lock with a genuine AMD SEV-SNP report (Tinfoil's Genoa router
    enclave, its VCEK and AMD's chain: real, vendor-signed evidence) and the release given."""

    def rewrite(asked: dict[str, Any], lock: dict[str, Any]) -> dict[str, Any]:
        evidence = dict(lock["evidence"])
        snp = SAMPLES / "sev-snp"
        evidence.update(
            format="sev-snp",
            quote=base64.b64encode((snp / "teep_tinfoil_genoa_report.bin").read_bytes()).decode(),
            vcek=base64.b64encode((snp / "teep_genoa_vcek.der").read_bytes()).decode(),
            cert_chain=(snp / "ask_ark_genoa.pem").read_text(),
            release=release,
            warning=None,
        )
        lock["evidence"] = evidence
        return lock

    return rewrite


def test_a_genuine_enclave_outside_every_pinned_release_is_sent_nothing(
    deployment: Deployment, hostile: HostileGateway, user: tuple[str, dict[str, int]]
) -> None:
    """The client pins releases signed by its own release key; the node shows a genuine SNP
    enclave and a release, signed by that key, that lists another measurement. The chain, the
    signature and the release all verify, and the measurement step refuses it: nothing sealed."""
    from veil.attestation.policy import Policy
    from veil.attestation.release import sign_manifest

    key, stacks = user
    before = used(deployment, stacks)
    release_key = Ed25519PrivateKey.generate()
    manifest = json.dumps(
        {"release": "veil-node@1.0.0", "sev_snp": [{"measurement": "ab" * 48}]}
    ).encode()
    release = {
        "manifest": base64.b64encode(manifest).decode(),
        "signature": sign_manifest(manifest, release_key),
    }
    hostile.reset().rewrite_lock = genuine_snp_lock(release)
    trusted = base64.b64encode(release_key.public_key().public_bytes_raw()).decode()
    policy = Policy(release_signers=[{"ed25519_public_key": trusted}])
    with (
        client(hostile, key, insecure_no_tee=False, policy=policy) as victim,
        pytest.raises(errors.AttestationFailed) as caught,
    ):
        victim.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    report = caught.value.report
    assert report is not None
    steps = {step.name: step for step in report.steps}
    for genuine in ("SNP signature", "SNP certificate chain", "SNP VCEK extensions", "release"):
        assert steps[genuine].outcome == "pass", steps[genuine]
    assert steps["measurements"].outcome == "FAIL"
    assert "7adcb574" in (steps["measurements"].actual or steps["measurements"].detail)
    assert hostile.paths() == ["/v1/nodes/lock"] and hostile.forwarded == []
    assert_balanced(deployment, before)


def test_the_release_tinfoil_signed_proves_its_enclave_and_still_binds_no_veil_keys(
    deployment: Deployment, hostile: HostileGateway, user: tuple[str, dict[str, int]]
) -> None:
    """Release -> running enclave, end to end through a client: the real Sigstore bundle of
    Tinfoil's release verifies offline under the workflow identity the client pinned, its SNP
    measurement is the genuine report's, and the report still does not bind the lock's keys, so
    nothing is sealed."""
    from veil.attestation.policy import Policy

    key, stacks = user
    before = used(deployment, stacks)
    bundle = json.loads(
        (
            SAMPLES / "sigstore" / "tinfoil_confidential-model-router_v0.0.110.sigstore.json"
        ).read_text()
    )
    hostile.reset().rewrite_lock = genuine_snp_lock({"sigstore_bundle": bundle})
    policy = Policy(
        release_signers=[{"sigstore_identity": TINFOIL_WORKFLOW, "sigstore_issuer": GITHUB_ISSUER}],
        sigstore_trusted_root=str(SAMPLES / "sigstore" / "trusted_root.json"),
    )
    with (
        client(hostile, key, insecure_no_tee=False, policy=policy) as victim,
        pytest.raises(errors.AttestationFailed) as caught,
    ):
        victim.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
    report = caught.value.report
    assert report is not None
    outcomes = {step.name: step.outcome for step in report.steps}
    assert outcomes["release"] == "pass" and outcomes["measurements"] == "pass"
    assert outcomes["binding"] == "FAIL"
    assert "tinfoilsh/confidential-model-router" in report.facts["release"]
    assert hostile.paths() == ["/v1/nodes/lock"] and hostile.forwarded == []
    assert_balanced(deployment, before)


# -- 2. envelope rewrites -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attack", "status", "exception"),
    [
        # The honest gateway behind the hostile one already refuses a claim whose model or stack
        # disagrees with the caller's reservation (425, retried with a fresh lock); the node's own
        # HPKE info check of the same swaps is tested on the node alone (tests/node/test_v3_node.py).
        ("model_swap", 425, errors.UnavailableStackError),
        ("model_swap_other_kind", 425, errors.UnavailableStackError),
        ("model_swap_unserved", 404, errors.NotFoundError),
        ("stack_swap", 425, errors.UnavailableStackError),
        ("units_inflation", 422, errors.EnvelopeRejectedError),
        ("route_swap", 404, errors.NotFoundError),  # the node routes on model kind first
    ],
)
def test_rewritten_envelopes_are_refused_and_nothing_is_charged(
    deployment: Deployment,
    hostile: HostileGateway,
    user: tuple[str, dict[str, int]],
    attack: str,
    status: int,
    exception: type[errors.APIError],
) -> None:
    key, stacks = user
    before = used(deployment, stacks)
    if attack == "stack_swap":
        # The gateway wants the victim's other stack to pay: it holds a reservation there.
        held = deployment.lock(key, EMBED, max_num_tokens=10_000)
        assert held.status_code == 200 and held.json()["stack_small_id"] == stacks[EMBED]
    rewrites: dict[str, Callable[[dict[str, Any]], None]] = {
        "model_swap": lambda e: e.update(model_name=OTHER_CHAT),  # served, for chat: the info
        "model_swap_other_kind": lambda e: e.update(model_name=EMBED),  # the node's route check
        "model_swap_unserved": lambda e: e.update(model_name="gpt-5-huge"),
        "stack_swap": lambda e: e.update(stack_small_id=stacks[EMBED]),
        "units_inflation": lambda e: e.update(num_compute_units=e["num_compute_units"] * 1000),
        "route_swap": lambda e: None,
    }

    def rewrite(envelope: dict[str, Any]) -> dict[str, Any]:
        rewrites[attack](envelope)
        return envelope

    hostile.reset().rewrite_envelope = rewrite
    if attack == "route_swap":
        hostile.reroute = "/v1/confidential/embeddings"
    with client(hostile, key) as victim, pytest.raises(exception) as caught:
        victim.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    assert caught.value.status == status
    if status == 425:  # retried with a new lock and a new encryption, refused every time
        assert len(hostile.forwarded) == victim.max_attempts
        assert {f.status for f in hostile.forwarded} == {425}
        assert_balanced(deployment, before)
        return
    (forwarded,) = hostile.forwarded  # refused, and not retried
    assert forwarded.status == status
    if status == 422:
        assert json.loads(forwarded.answer)["error"]["code"] == "DECRYPTION_FAILED"
    assert_balanced(deployment, before)


# -- 3. replay: tests/e2e/test_v3.py (test_a_replayed_v3_envelope_is_refused_and_charged_once) ---


# -- 4. stream edits ----------------------------------------------------------------------------
def drop(blocks: list[str]) -> list[str]:
    del blocks[data_positions(blocks)[1]]
    return blocks


def reorder(blocks: list[str]) -> list[str]:  # two content chunks: what v1 cannot see
    d = data_positions(blocks)
    blocks[d[1]], blocks[d[2]] = blocks[d[2]], blocks[d[1]]
    return blocks


def duplicate(blocks: list[str]) -> list[str]:
    d = data_positions(blocks)
    blocks.insert(d[1] + 1, blocks[d[1]])
    return blocks


def truncate(blocks: list[str]) -> list[str]:
    del blocks[data_positions(blocks)[-1] :]
    return blocks


def truncate_then_done(blocks: list[str]) -> list[str]:
    blocks[data_positions(blocks)[-1] :] = ["data: [DONE]"]
    return blocks


@pytest.mark.parametrize(
    ("edit", "exception"),
    [
        (drop, errors.StreamCorrupt),
        (reorder, errors.StreamCorrupt),
        (duplicate, errors.StreamCorrupt),
        (truncate, errors.StreamTruncated),
        (truncate_then_done, errors.StreamTruncated),
        ("splice_foreign", errors.StreamCorrupt),
    ],
    ids=["drop", "reorder", "duplicate", "truncate", "truncate_then_done", "splice_foreign"],
)
def test_edited_streams_are_refused(
    deployment: Deployment,
    hostile: HostileGateway,
    user: tuple[str, dict[str, int]],
    edit: Callable[[list[str]], list[str]] | str,
    exception: type[errors.IntegrityError],
) -> None:
    key, stacks = user
    before = used(deployment, stacks)
    hostile.reset()
    with client(hostile, key) as victim:
        if edit == "splice_foreign":
            # A genuine chunk of another answer, at the right position.
            earlier = victim.chat.completions.create(
                model=CHAT, messages=MESSAGES, max_tokens=6, stream=True
            )
            assert list(earlier)[-1].usage is not None
            foreign = hostile.streams[0]

            def splice(blocks: list[str]) -> list[str]:
                blocks[data_positions(blocks)[1]] = foreign[data_positions(foreign)[1]]
                return blocks

            hostile.rewrite_stream = splice
        else:
            assert callable(edit)
            hostile.rewrite_stream = edit
        stream = victim.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=6, stream=True
        )
        received = []
        with pytest.raises(exception):
            for chunk in stream:
                received.append(chunk)
    assert stream.veil.usage is None and (not received or received[-1].usage is None)
    # The node produced the whole answer: the gateway charged its final signed receipt, no more.
    signing_key = deployment.nodes[0].signing_key()
    charged = sum(signed_charge(blocks, signing_key) for blocks in hostile.streams)
    assert charged > 0
    assert_balanced(deployment, before, {stacks[CHAT]: charged})


# -- 5. an answer from another node key ---------------------------------------------------------
def other_nodes_stream(node: RunningNode) -> list[str]:
    """A genuine veil-v3 stream of ``node`` answering the attacker's own request (same shape)."""
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 6, "stream": True}
    endpoint = "/v1/confidential/chat/completions"
    hybrid = node.keyring.current.hybrid
    assert hybrid is not None
    envelope, _ = v3.seal_request(
        hybrid.public_key, hybrid.key_id, json.dumps(body).encode(),
        node_signing_key=node.keyring.signing_public_key, endpoint=endpoint, model_name=CHAT,
        stack_small_id=1, num_compute_units=200, stream=True,
    )  # fmt: skip
    answer = node.post(endpoint, envelope)
    assert answer.status_code == 200, answer.text
    return [b for b in answer.text.split("\n\n") if b]


@pytest.mark.parametrize(
    ("substitution", "exception"),
    [
        ("re_signed", errors.SignatureInvalid),
        ("signed_early", errors.SignatureInvalid),
        ("whole_answer", errors.DecryptionError),
    ],
)
def test_an_answer_from_another_node_key_is_refused(
    deployment: Deployment,
    hostile: HostileGateway,
    other_node: RunningNode,
    user: tuple[str, dict[str, int]],
    substitution: str,
    exception: type[errors.IntegrityError],
) -> None:
    key, stacks = user
    before = used(deployment, stacks)
    node_key = deployment.nodes[0].signing_key()

    def re_signed(blocks: list[str]) -> list[str]:
        """veil-v3 signs once per answer: the final chunk's signature, over the very message the
        node signed (running hash and usage), made by the other node instead."""
        final = data_positions(blocks)[-1]
        chunk = json.loads(blocks[final][len("data: ") :])
        assert chunk["final"] and chunk.get("signature") is not None
        usage = None if chunk.get("usage") is None else Usage.model_validate(chunk["usage"])
        message = v3.signed_message(base64.b64decode(chunk["response_hash"]), usage)
        node_key.verify(base64.b64decode(chunk["signature"]), message)  # the genuine one does
        chunk["signature"] = base64.b64encode(other_node.keyring.sign(message)).decode()
        blocks[final] = "data: " + json.dumps(chunk)
        return blocks

    def signed_early(blocks: list[str]) -> list[str]:
        """The first chunk (AEAD only in veil-v3) given a signature by the other node."""
        first = data_positions(blocks)[0]
        chunk = json.loads(blocks[first][len("data: ") :])
        assert not chunk["final"] and chunk.get("signature") is None
        digest = base64.b64decode(chunk["response_hash"])
        chunk["signature"] = base64.b64encode(other_node.keyring.sign(digest)).decode()
        blocks[first] = "data: " + json.dumps(chunk)
        return blocks

    edits: dict[str, Callable[[list[str]], list[str]]] = {
        "re_signed": re_signed,
        "signed_early": signed_early,
    }
    if substitution == "whole_answer":
        substitute = other_nodes_stream(other_node)
        edits["whole_answer"] = lambda _: list(substitute)
    hostile.reset().rewrite_stream = edits[substitution]
    with client(hostile, key) as victim, pytest.raises(exception):
        stream = victim.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=6, stream=True
        )
        for _ in stream:
            pass
    # Only a re-signed final chunk lets the (AEAD-authenticated) chunks before it through; the
    # answer is refused all the same, and no usage is taken from it.
    if substitution == "re_signed":
        assert stream.veil.messages_verified == len(data_positions(hostile.streams[0])) - 1 > 0
    else:
        assert stream.veil.messages_verified == 0
    assert stream.veil.usage is None
    charged = signed_charge(hostile.streams[0], node_key)
    assert_balanced(deployment, before, {stacks[CHAT]: charged})


# -- 6. a stale key after rotation --------------------------------------------------------------
def test_a_key_rotated_after_the_lock_is_re_locked_and_re_encrypted(
    deployment: Deployment, hostile: HostileGateway, user: tuple[str, dict[str, int]]
) -> None:
    key, stacks = user
    before = used(deployment, stacks)
    node = deployment.nodes[0]
    old_key = node.keyring.current
    assert old_key.hybrid is not None
    grace = node.keyring.grace_seconds
    node.keyring.grace_seconds = 0  # key_grace_seconds = 0: the old key dies with the rotation
    rotated: list[NodeKey] = []

    def rotate_once() -> None:
        if not rotated:  # between the client's lock and the node opening the envelope
            rotated.append(node.keyring.rotate())

    hostile.reset().before_forward = rotate_once
    try:
        # backoff: time for the gateway (which re-reads node keys every 0.2 s) to see the new key.
        with client(hostile, key, backoff=1.0) as victim:
            answer = victim.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=4)
    finally:
        node.keyring.grace_seconds = grace
    first, second = hostile.forwarded
    assert first.status == 409 and json.loads(first.answer)["error"]["code"] == "STALE_NODE_KEY"
    assert second.status == 200
    assert answer.veil.attempts == 2 and answer.veil.signature_verified
    (new_key,) = rotated
    assert new_key.hybrid is not None
    assert answer.veil.node_key_id == new_key.key_id != old_key.key_id
    # veil-v3: the envelopes name the post-quantum key they were sealed to.
    assert answer.veil.kem_key_id == new_key.hybrid.key_id != old_key.hybrid.key_id
    stale, fresh = hostile.envelopes()
    assert stale["protocol"] == fresh["protocol"] == "veil-v3"
    assert stale["key_id"] == old_key.hybrid.key_id and fresh["key_id"] == new_key.hybrid.key_id
    assert stale["request_id"] != fresh["request_id"]
    # Re-encrypted: a new encapsulation, to the new key's X25519 part.
    assert stale["ciphertext"] != fresh["ciphertext"]
    assert base64.b64decode(stale["node_dh_public_key"]) == old_key.hybrid.x25519_public_key
    assert base64.b64decode(fresh["node_dh_public_key"]) == new_key.hybrid.x25519_public_key
    assert hostile.paths().count("/v1/nodes/lock") == 2  # locked (and attested) again
    assert answer.veil.attestation is not None and answer.veil.attestation.ok
    assert_balanced(deployment, before, {stacks[CHAT]: answer.veil.units_charged or 0})
