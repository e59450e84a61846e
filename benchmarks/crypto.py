"""Protocol crypto cost of veil-v3, against atoma-v1, atoma-sdk 0.1.3 and bare AES-256-GCM, in one
run: ``python -m benchmarks.crypto``.

Per request: client seal -> node open -> node seals the answer and signs it -> client opens it and
checks the signature; each step timed separately and in total. veil-v3 seals with the hybrid KEM
(ML-KEM-768 + X25519, X-Wing) through ``cryptography``'s HPKE and signs once per answer (the final
chunk); atoma-v1 (X25519 + HKDF + AES-GCM, as the node and the Veil client do it) signs every
message. Both run on the same payloads with the same Ed25519 key, rounds interleaved.

Per stream chunk: the node seals one (not final, so unsigned) chunk and the client opens it: the
AES-GCM tag, its place and the running hash. Against bare AES-256-GCM encrypt + decrypt of the same
bytes (``cryptography``'s ``AESGCM``, one key object): the throughput ratio is bare time / v3 time
(chunks/s of v3 over chunks/s of bare AES-GCM; 1.0 would be free). The final chunk, which carries
the answer's one signature, is timed on its own.

Every figure is the median over ``--rounds`` rounds of ``--iterations`` operations (CPU time per
operation, microseconds). Targets: v3 request <= 1.2x atoma-v1's and <= 1.0x atoma-sdk 0.1.3's;
v3 chunk <= 25 us and >= 0.5x bare AES-256-GCM throughput; the client's crypto < 1% of a real
request (``crypto_share``).

Then, against the published client (atoma-sdk 0.1.3, run in its own venv by
``benchmarks/atoma_worker.py``, rounds alternating with ours on identical inputs):

- the request path of a 2 KiB request: veil-v3 (with its one signature) and Veil's atoma-v1
  suite (no signature) vs atoma-sdk's ``crypto_utils`` (which neither signs nor checks one);
- opening 200-byte stream chunks: atoma-sdk's ``decrypt_message`` per chunk (X25519 + HKDF +
  AES-GCM setup every time) vs Veil's key derived once per response. Target: >= 10x faster;
- AES-256-GCM encryption of 1 MiB through ``cryptography`` vs ``openssl speed -evp aes-256-gcm``
  on the same machine. Target: >= 0.7 of OpenSSL's throughput.

``--skip-atoma`` leaves the atoma-sdk comparisons out (they need its venv, built once from PyPI);
``--skip-round-trip`` the real request of ``crypto_share``. ``--json PATH`` writes the run as JSON
(``benchmarks/report.py``); the printed report is rendered from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.report import Report
from veil.hazmat import v1, v3
from veil.wire.envelopes import ConfidentialComputeResponse

ENDPOINT = "/v1/confidential/chat/completions"
MODEL = "smollm2-135m-instruct"
RESERVATION = "0123456789abcdef0123456789abcdef"
USAGE = {"prompt_tokens": 120, "completion_tokens": 256, "total_tokens": 376}
REQUEST = (
    b'{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"'
    + b"Summarise the following paragraph in one sentence. " * 8
    + b'"}],"max_tokens":256,"stream":false}'
)
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1750000000,"model":"smollm2-135m-instruct",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"'
    + b"A one sentence summary of the paragraph. " * 40
    + b'"},"finish_reason":"stop"}]}'
)
CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,'
    b'"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"content":" word"},'
    b'"finish_reason":null}]}'
)


@dataclass
class Keys:
    node: X25519PrivateKey  # atoma-v1's node key
    node_public: bytes
    kem: v3.NodeKemKey  # veil-v3's (hybrid KEM)
    signer: Ed25519PrivateKey
    signer_public: Ed25519PublicKey

    def kem_lookup(self, key_id: str) -> v3.NodeKemKey | None:
        return self.kem if key_id == self.kem.key_id else None


def make_keys() -> Keys:
    node = X25519PrivateKey.generate()
    signer = Ed25519PrivateKey.generate()
    return Keys(
        node, node.public_key().public_bytes_raw(), v3.NodeKemKey.generate(v3.Kem.HYBRID),
        signer, signer.public_key(),
    )  # fmt: skip


def _no_sign(_: bytes) -> bytes:
    return bytes(64)


Step = Callable[[dict[str, Any]], None]


# -- atoma-v1, as the node pipeline and the Veil client do it ------------------------------------


def v1_request_steps(keys: Keys, sign: bool, request: bytes = REQUEST) -> list[Step]:
    signer = keys.signer.sign if sign else _no_sign
    verifier = keys.signer_public

    def client_seal(s: dict[str, Any]) -> None:
        s["env"], s["client"] = v1.seal_request(
            keys.node_public, request, model_name=MODEL, stack_small_id=1, num_compute_units=256
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
            assert resp.signature is not None and resp.response_hash is not None
            verifier.verify(resp.signature, resp.response_hash)

    return [client_seal, node_open, node_seal, client_open]


# -- veil-v3 ---------------------------------------------------------------------------------------


def v3_seal(keys: Keys, request: bytes) -> tuple[Any, v3.ClientSession]:
    return v3.seal_request(
        keys.kem.public_key, keys.kem.key_id, request, node_signing_key=keys.signer_public,
        endpoint=ENDPOINT, model_name=MODEL, stack_small_id=1, num_compute_units=256,
        stream=False, reservation_id=RESERVATION,
    )  # fmt: skip


def v3_request_steps(keys: Keys, request: bytes = REQUEST) -> list[Step]:
    """The four steps of a v3 request; the answer is one final chunk, signed once."""

    def client_seal(s: dict[str, Any]) -> None:
        s["env"], s["client"] = v3_seal(keys, request)

    def node_open(s: dict[str, Any]) -> None:
        _, s["server"] = v3.open_request(
            s["env"], keys.kem_lookup, endpoint=ENDPOINT, reservation_id=RESERVATION
        )

    def node_seal(s: dict[str, Any]) -> None:
        s["resp"] = s["server"].seal(ANSWER, final=True, sign=keys.signer.sign, usage=USAGE)

    def client_open(s: dict[str, Any]) -> None:
        assert s["client"].open(s["resp"]) == ANSWER  # the signature is checked on the final

    return [client_seal, node_open, node_seal, client_open]


# -- per chunk -----------------------------------------------------------------------------------


def v1_chunk(keys: Keys) -> Callable[[], None]:
    """atoma-v1: every chunk hashed, sealed, signed, opened and its signature checked."""
    env, client = v1.seal_request(keys.node_public, REQUEST, model_name=MODEL, stack_small_id=1)
    server = v1.Session.from_exchange(keys.node, env.client_dh_public_key, env.salt)

    def one() -> None:
        digest = v1.body_hash(CHUNK)
        nonce, ct = server.seal(CHUNK)
        resp = ConfidentialComputeResponse(
            ciphertext=ct, nonce=nonce, response_hash=digest, signature=keys.signer.sign(digest)
        )
        assert v1.open_response(client, resp) == CHUNK
        keys.signer_public.verify(resp.signature or b"", digest)

    return one


class V3Stream:
    """One v3 answer being streamed: ``chunk`` seals and opens the next (unsigned) chunk; a new
    request is sealed every ``per_request`` chunks, so the index never runs out."""

    def __init__(self, keys: Keys, per_request: int = 100_000) -> None:
        self.keys = keys
        self.per_request = per_request
        self.fresh()

    def fresh(self) -> None:
        env, self.client = v3_seal(self.keys, REQUEST)
        _, self.server = v3.open_request(
            env, self.keys.kem_lookup, endpoint=ENDPOINT, reservation_id=RESERVATION
        )

    def chunk(self) -> None:
        if self.server.next_index >= self.per_request:
            self.fresh()
        resp = self.server.seal(CHUNK, final=False, sign=self.keys.signer.sign)
        assert self.client.open(resp) == CHUNK

    def final(self, iterations: int) -> float:
        """Microseconds per final chunk (signed over the running hash, with the usage; node seal
        + client open + verify), each after a fresh request sealed and opened untimed."""
        spent = 0
        for _ in range(iterations):
            self.fresh()
            t0 = time.perf_counter_ns()
            resp = self.server.seal(CHUNK, final=True, sign=self.keys.signer.sign, usage=USAGE)
            assert self.client.open(resp) == CHUNK
            spent += time.perf_counter_ns() - t0
        self.fresh()
        return spent / iterations / 1000


def bare_gcm_chunk() -> Callable[[], None]:
    """AES-256-GCM encrypt + decrypt of the same chunk bytes, nothing else (the floor)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)

    def one() -> None:
        assert aead.decrypt(nonce, aead.encrypt(nonce, CHUNK, None), None) == CHUNK

    return one


# -- timing --------------------------------------------------------------------------------------


def time_request(steps: list[Step], iterations: int, rounds: int) -> list[float]:
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


TITLE = "Protocol crypto: veil-v3 against atoma-v1, atoma-sdk 0.1.3 and bare AES-256-GCM"
DESCRIPTION = (
    "CPU time of each cryptographic step of one request (client seal, node open, node seal + "
    "sign, client open + verify) and of one stream chunk: veil-v3 (hybrid KEM, one signature per "
    "answer) against atoma-v1 on the same payloads and Ed25519 key, and a v3 chunk against bare "
    "AES-256-GCM on the same bytes; then v3 and Veil's atoma-v1 suite against the published "
    "atoma-sdk 0.1.3 on a 2 KiB request and on 200-byte stream chunks; AES-256-GCM throughput "
    "against `openssl speed`; and the client's crypto as a share of a real confidential request."
)
REQUEST_TARGET = 1.2  # veil-v3 / atoma-v1 per request, at most
CHUNK_US_TARGET = 25.0  # veil-v3 per stream chunk, microseconds, at most
CHUNK_GCM_TARGET = 0.5  # v3 chunk throughput / bare AES-256-GCM throughput, at least
NAMES = ["client seal", "node open", "node seal+sign", "client open+verify", "request total"]


def compare_suites(report: Report, keys: Keys, iterations: int, rounds: int) -> dict[str, float]:
    """Every step of a request, v1 against v3, rounds interleaved; then a chunk. Returns the
    v3 client-side figures (seal, open + verify) for the crypto share."""
    baseline = report.baseline(
        "atoma-v1",
        "Veil's Atoma-compatible suite (X25519 + HKDF + AES-256-GCM, every message signed), "
        "measured in the same process, rounds interleaved with veil-v3; ratio = v3 time / v1 "
        "time (lower is better).",
    )
    time_request(v1_request_steps(keys, True), 50, 1)  # warm-up: imports, tables, validators
    time_request(v3_request_steps(keys), 50, 1)
    table = report.table(
        f"veil-v3 (hybrid KEM) against atoma-v1, microseconds of CPU per operation (median of "
        f"{rounds} rounds x {iterations} ops)",
        [("operation", ""), ("v1 us", ".1f"), ("v3 us", ".1f"), ("v3/v1", ".2f")],
        notes=f"request body {len(REQUEST)} B, answer {len(ANSWER)} B (one final chunk, signed "
        "once in both suites)",
    )
    v1_parts: list[list[float]] = []
    v3_parts: list[list[float]] = []
    for _ in range(rounds):
        v1_parts.append(time_request(v1_request_steps(keys, True), iterations, 1))
        v3_parts.append(time_request(v3_request_steps(keys), iterations, 1))
    medians: list[tuple[float, float]] = []
    for i, name in enumerate(NAMES):
        a = statistics.median(p[i] for p in v1_parts)
        b = statistics.median(p[i] for p in v3_parts)
        table.row(f"request: {name}", a, b, b / a)
        medians.append((a, b))
    a, b = medians[-1]
    report.ratio(
        "veil-v3 / atoma-v1 crypto per request (hybrid KEM, with the answer's signature)", b, a,
        baseline=baseline, unit="us", target=("<=", REQUEST_TARGET), id="v3_request_vs_atoma_v1",
    )  # fmt: skip
    return {"client_seal": medians[0][1], "client_open": medians[3][1]}


def compare_chunks(report: Report, keys: Keys, iterations: int, rounds: int) -> None:
    gcm = report.baseline(
        "AES-256-GCM",
        "bare AES-256-GCM encrypt + decrypt of the same chunk bytes through `cryptography`'s "
        "AESGCM (one key object), rounds interleaved with v3's chunks; throughput ratio = bare "
        "time / v3 time (v3 chunks/s over bare AES-GCM chunks/s; 1.0 would be free).",
    )
    iters = iterations * 5
    stream, bare, old = V3Stream(keys), bare_gcm_chunk(), v1_chunk(keys)
    sample = stream.server.seal(CHUNK, final=False, sign=keys.signer.sign)
    stream.client.open(sample)

    def response_object() -> None:  # what the node builds per chunk besides the crypto
        ConfidentialComputeResponse(
            ciphertext=sample.ciphertext, nonce=sample.nonce, response_hash=sample.response_hash,
            response_nonce=sample.response_nonce, index=sample.index, final=False,
        )  # fmt: skip

    for one in (stream.chunk, bare, old):
        time_chunk(one, 200, 1)  # warm-up
    s3: list[float] = []
    sg: list[float] = []
    s1: list[float] = []
    sf: list[float] = []
    sp: list[float] = []
    final_iters = max(20, iterations // 4)
    for _ in range(rounds):
        s3.append(time_chunk(stream.chunk, iters, 1))
        sg.append(time_chunk(bare, iters, 1))
        s1.append(time_chunk(old, iters, 1))
        sf.append(stream.final(final_iters))
        sp.append(time_chunk(response_object, iters, 1))
    v3_us, gcm_us, v1_us = statistics.median(s3), statistics.median(sg), statistics.median(s1)
    final_us, object_us = statistics.median(sf), statistics.median(sp)
    table = report.table(
        f"One stream chunk, node seal + client open, microseconds of CPU (median of {rounds} "
        f"rounds x {iters} chunks; final chunk x{final_iters})",
        [("chunk", ""), ("us", ".1f"), ("chunks/s", ".0f"), ("vs bare AES-GCM", ".2f")],
        notes=f"chunk {len(CHUNK)} B; 'vs bare AES-GCM' is the throughput ratio (bare time / "
        "this time)",
    )  # fmt: skip
    table.row("bare AES-256-GCM encrypt + decrypt", gcm_us, 1e6 / gcm_us, 1.0)
    table.row("veil-v3 chunk (tag, place, running hash)", v3_us, 1e6 / v3_us, gcm_us / v3_us)
    table.row("  of which: the response object (pydantic), built once", object_us,
              1e6 / object_us, gcm_us / object_us)  # fmt: skip
    table.row("veil-v3 final chunk (+ the answer's one signature)", final_us, 1e6 / final_us,
              gcm_us / final_us)  # fmt: skip
    table.row("atoma-v1 chunk (hash, seal, sign, open, verify)", v1_us, 1e6 / v1_us,
              gcm_us / v1_us)  # fmt: skip
    report.measure(
        "veil-v3 crypto per stream chunk (node seal + client open)", v3_us, "us",
        baseline=gcm, target=("<=", CHUNK_US_TARGET), id="v3_chunk_us",
        compared={"numerator": v3_us, "denominator": gcm_us, "unit": "us"},
    )  # fmt: skip
    report.ratio(
        "veil-v3 chunks/s / bare AES-256-GCM chunks/s on the same bytes", gcm_us, v3_us,
        baseline=gcm, unit="us", target=(">=", CHUNK_GCM_TARGET), id="v3_chunk_vs_aes_gcm",
        detail="throughput ratio: bare AES-GCM time / v3 time",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip-atoma", action="store_true", help="leave atoma-sdk out")
    parser.add_argument("--skip-round-trip", action="store_true", help="no real request")
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    from benchmarks import crypto_baselines, crypto_floor, crypto_share

    report = Report("crypto", TITLE, DESCRIPTION, argv if argv is not None else [])
    keys = make_keys()
    client = compare_suites(report, keys, args.iterations, args.rounds)
    compare_chunks(report, keys, args.iterations, args.rounds)
    crypto_baselines.key_agreement(report, keys, args.iterations, args.rounds)
    atoma = None
    if not args.skip_atoma:
        atoma = crypto_baselines.against_atoma(report, keys, args.iterations, args.rounds)
    crypto_floor.design_floor(
        report, keys, args.iterations, args.rounds, atoma, atoma_declared=not args.skip_atoma
    )
    crypto_baselines.against_openssl(report, args.rounds)
    crypto_share.share_of_a_request(report, keys, client, skip=args.skip_round_trip)
    # An unmet target is reported, not a failure: the run itself succeeded.
    return report.emit(args.json)


if __name__ == "__main__":
    import sys

    # Run the importable module, not this ``__main__`` copy: ``crypto_baselines`` imports it.
    from benchmarks.crypto import main as run

    raise SystemExit(run(sys.argv[1:]))
