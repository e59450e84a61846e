"""Protocol crypto cost, atoma-v1 against veil-v2, in one run: ``python -m benchmarks.crypto``.

Per request: client seal -> node open (with the body-hash check) -> node seals and signs the
answer -> client opens it and checks the signature; each step timed separately and in total.
Per chunk: node seals and signs one stream chunk -> client opens it and checks the signature.
Both suites run the same steps on the same payloads with the same Ed25519 key; the rows marked
"no sig" leave the (identical) Ed25519 sign/verify out, to show the suites' own difference.

Every figure is the median over ``--rounds`` rounds of ``--iterations`` operations (CPU time per
operation, microseconds). Targets: v2 within 1.5x of v1 per request, 1.2x per chunk.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.protocol import v1, v2
from veil.protocol.envelopes import ConfidentialComputeResponse

ENDPOINT = "/v1/confidential/chat/completions"
MODEL = "gemma-3-270m"
REQUEST = (
    b'{"model":"gemma-3-270m","messages":[{"role":"user","content":"'
    + b"Summarise the following paragraph in one sentence. " * 8
    + b'"}],"max_tokens":256,"stream":false}'
)
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1750000000,"model":"gemma-3-270m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"'
    + b"A one sentence summary of the paragraph. " * 40
    + b'"},"finish_reason":"stop"}]}'
)
CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,'
    b'"model":"gemma-3-270m","choices":[{"index":0,"delta":{"content":" word"},'
    b'"finish_reason":null}]}'
)


@dataclass
class Keys:
    node: X25519PrivateKey
    node_public: bytes
    key_id: str
    signer: Ed25519PrivateKey
    signer_public: Ed25519PublicKey


def make_keys() -> Keys:
    node = X25519PrivateKey.generate()
    public = node.public_key().public_bytes_raw()
    signer = Ed25519PrivateKey.generate()
    return Keys(node, public, v2.key_id_of(public), signer, signer.public_key())


def _no_sign(_: bytes) -> bytes:
    return bytes(64)


# -- v1, as the node pipeline and the Veil client do it -----------------------------------------


def v1_request_steps(keys: Keys, sign: bool) -> list[Callable[[dict[str, Any]], None]]:
    signer = keys.signer.sign if sign else _no_sign
    verifier = keys.signer_public

    def client_seal(s: dict[str, Any]) -> None:
        s["env"], s["client"] = v1.seal_request(
            keys.node_public, REQUEST, model_name=MODEL, stack_small_id=1, num_compute_units=256
        )

    def node_open(s: dict[str, Any]) -> None:
        env = s["env"]
        session = v1.Session.from_exchange(keys.node, env.client_dh_public_key, env.salt)
        plaintext = session.open(env.nonce, env.ciphertext)
        assert v1.hashes_equal(v1.body_hash(plaintext), env.plaintext_body_hash)
        s["server"] = session

    def node_seal(s: dict[str, Any]) -> None:
        digest = v1.body_hash(ANSWER)
        nonce, ct = s["server"].seal(ANSWER)
        s["resp"] = ConfidentialComputeResponse(
            ciphertext=ct, nonce=nonce, response_hash=digest, signature=signer(digest)
        )

    def client_open(s: dict[str, Any]) -> None:
        resp = s["resp"]
        assert v1.open_response(s["client"], resp) == ANSWER
        if sign:
            verifier.verify(resp.signature, resp.response_hash)

    return [client_seal, node_open, node_seal, client_open]


def v2_request_steps(keys: Keys, sign: bool) -> list[Callable[[dict[str, Any]], None]]:
    signer = keys.signer.sign if sign else _no_sign

    def client_seal(s: dict[str, Any]) -> None:
        s["env"], s["client"] = v2.seal_request(
            keys.node_public,
            keys.key_id,
            REQUEST,
            endpoint=ENDPOINT,
            model_name=MODEL,
            stack_small_id=1,
            num_compute_units=256,
        )

    def node_open(s: dict[str, Any]) -> None:
        _, s["server"] = v2.open_request(s["env"], keys.node, endpoint=ENDPOINT)

    def node_seal(s: dict[str, Any]) -> None:
        s["resp"] = s["server"].seal(ANSWER, index=0, final=True, sign=signer)

    def client_open(s: dict[str, Any]) -> None:
        assert v2.open_response(s["client"], s["resp"]) == ANSWER
        if sign:
            v2.verify_signature(s["resp"], keys.signer_public)

    return [client_seal, node_open, node_seal, client_open]


# -- per chunk -----------------------------------------------------------------------------------


def v1_chunk(keys: Keys, sign: bool) -> Callable[[], None]:
    signer = keys.signer.sign if sign else _no_sign
    verifier = keys.signer_public
    env, client = v1.seal_request(keys.node_public, REQUEST, model_name=MODEL, stack_small_id=1)
    server = v1.Session.from_exchange(keys.node, env.client_dh_public_key, env.salt)

    def one() -> None:
        digest = v1.body_hash(CHUNK)
        nonce, ct = server.seal(CHUNK)
        resp = ConfidentialComputeResponse(
            ciphertext=ct, nonce=nonce, response_hash=digest, signature=signer(digest)
        )
        assert v1.open_response(client, resp) == CHUNK
        if sign:
            verifier.verify(resp.signature, digest)

    return one


def v2_chunk(keys: Keys, sign: bool) -> Callable[[], None]:
    signer = keys.signer.sign if sign else _no_sign
    state: dict[str, Any] = {}

    def fresh() -> None:
        env, state["client"] = v2.seal_request(
            keys.node_public, keys.key_id, REQUEST, endpoint=ENDPOINT, model_name=MODEL,
            stack_small_id=1,
        )  # fmt: skip
        _, state["server"] = v2.open_request(env, keys.node, endpoint=ENDPOINT)

    fresh()

    def one() -> None:
        server: v2.ServerSession = state["server"]
        client: v2.ClientSession = state["client"]
        resp = server.seal(CHUNK, index=server.next_index, final=False, sign=signer)
        assert client.open(resp) == CHUNK
        if sign:
            v2.verify_signature(resp, keys.signer_public)

    return one


# -- timing --------------------------------------------------------------------------------------


def time_request(
    steps: list[Callable[[dict[str, Any]], None]], iterations: int, rounds: int
) -> list[float]:
    """Median microseconds per operation for each step, then the total."""
    per_round: list[list[float]] = []
    for _ in range(rounds):
        spent = [0] * len(steps)
        for _ in range(iterations):
            state: dict[str, Any] = {}
            for i, step in enumerate(steps):
                t0 = time.perf_counter_ns()
                step(state)
                spent[i] += time.perf_counter_ns() - t0
        per_round.append([ns / iterations / 1000 for ns in spent])
    medians = [statistics.median(r[i] for r in per_round) for i in range(len(steps))]
    totals = statistics.median(sum(r) for r in per_round)
    return [*medians, totals]


def time_chunk(one: Callable[[], None], iterations: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            one()
        samples.append((time.perf_counter_ns() - t0) / iterations / 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    keys = make_keys()

    # Warm up both paths (imports, OpenSSL tables, pydantic validators).
    time_request(v1_request_steps(keys, True), 50, 1)
    time_request(v2_request_steps(keys, True), 50, 1)

    rows: list[tuple[str, float, float, float | None]] = []
    names = ["client seal", "node open", "node seal+sign", "client open+verify"]
    # Interleave the suites round by round so drift (thermal, other load) hits both equally.
    v1_parts: list[list[float]] = []
    v2_parts: list[list[float]] = []
    for _ in range(args.rounds):
        v1_parts.append(time_request(v1_request_steps(keys, True), args.iterations, 1))
        v2_parts.append(time_request(v2_request_steps(keys, True), args.iterations, 1))
    for i, name in enumerate([*names, "request total"]):
        a = statistics.median(p[i] for p in v1_parts)
        b = statistics.median(p[i] for p in v2_parts)
        rows.append((f"request: {name}", a, b, 1.5 if name == "request total" else None))

    a = statistics.median(
        time_request(v1_request_steps(keys, False), args.iterations, 1)[-1]
        for _ in range(args.rounds)
    )
    b = statistics.median(
        time_request(v2_request_steps(keys, False), args.iterations, 1)[-1]
        for _ in range(args.rounds)
    )
    rows.append(("request total, no sig", a, b, None))

    chunk_iters = args.iterations * 5
    for label, sign, target in (("chunk (seal+sign+open+verify)", True, 1.2),
                                ("chunk, no sig", False, None)):  # fmt: skip
        c1, c2 = v1_chunk(keys, sign), v2_chunk(keys, sign)
        s1: list[float] = []
        s2: list[float] = []
        for _ in range(args.rounds):
            s1.append(time_chunk(c1, chunk_iters, 1))
            s2.append(time_chunk(c2, chunk_iters, 1))
        rows.append((label, statistics.median(s1), statistics.median(s2), target))

    width = max(len(r[0]) for r in rows)
    print(f"request body {len(REQUEST)} B, answer {len(ANSWER)} B, chunk {len(CHUNK)} B; "
          f"{args.rounds} rounds x {args.iterations} ops (chunks: x{chunk_iters})")  # fmt: skip
    print(f"{'operation':<{width}}  {'v1 us':>8}  {'v2 us':>8}  {'v2/v1':>6}  target")
    failed = False
    for name, a, b, target in rows:
        ratio = b / a
        verdict = ""
        if target is not None:
            ok = ratio <= target
            failed |= not ok
            verdict = f"<= {target:.1f}x  {'met' if ok else 'NOT MET'}"
        print(f"{name:<{width}}  {a:8.1f}  {b:8.1f}  {ratio:5.2f}x  {verdict}")
    if failed:
        print("\nat least one target is not met (see above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
