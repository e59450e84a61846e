"""Protocol crypto cost, atoma-v1 against veil-v2, in one run: ``python -m benchmarks.crypto``.

Per request: client seal -> node open (with the body-hash check) -> node seals and signs the
answer -> client opens it and checks the signature; each step timed separately and in total.
Per chunk: node seals and signs one stream chunk -> client opens it and checks the signature.
Both suites run the same steps on the same payloads with the same Ed25519 key; the rows marked
"no sig" leave the (identical) Ed25519 sign/verify out, to show the suites' own difference.

Every figure is the median over ``--rounds`` rounds of ``--iterations`` operations (CPU time per
operation, microseconds). Targets: v2 within 1.5x of v1 per request, 1.2x per chunk.

Then, against the published client (atoma-sdk 0.1.3, run in its own venv by
``benchmarks/atoma_worker.py``, rounds alternating with ours on identical inputs):

- the request path of a 2 KiB request (client seal, node open, node seal, client open) with Veil's
  v1 suite vs atoma-sdk's ``crypto_utils`` (see the worker for what each step is on its side);
  neither side signs here, since atoma-sdk neither signs nor checks signatures. Target: Veil's
  time / atoma-sdk's <= 1.0;
- opening 200-byte stream chunks: atoma-sdk's ``decrypt_message`` per chunk (X25519 + HKDF + AES-GCM
  setup every time) vs Veil's key derived once per response. Target: >= 10x faster;
- AES-256-GCM encryption of 1 MiB through ``cryptography`` vs ``openssl speed -evp aes-256-gcm``
  on the same machine. Target: >= 0.7 of OpenSSL's throughput.

``--skip-atoma`` leaves the atoma-sdk comparisons out (they need its venv, built once from PyPI).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import KEMKey

from benchmarks import atoma_baseline
from veil.hazmat import v1, v2
from veil.wire.envelopes import ConfidentialComputeResponse

ENDPOINT = "/v1/confidential/chat/completions"
MODEL = "smollm2-135m-instruct"
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


def v1_request_steps(
    keys: Keys, sign: bool, request: bytes = REQUEST
) -> list[Callable[[dict[str, Any]], None]]:
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
    parser.add_argument("--skip-atoma", action="store_true", help="leave atoma-sdk out")
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
    key_agreement(keys, args.iterations, args.rounds)
    if not args.skip_atoma:
        failed |= against_atoma(keys, args.iterations, args.rounds)
    failed |= against_openssl(args.rounds)
    if failed:
        print("\nat least one target is not met (see above)")
    return 0


def key_agreement(keys: Keys, iterations: int, rounds: int) -> None:
    """Where v2's extra cost per request goes: the HPKE contexts (pyhpke's key schedule, about
    ten HMAC objects built in Python per side) against v1's bare X25519 + one HKDF per side."""
    info = v2.request_info(ENDPOINT)
    suite = v2.CIPHER_SUITE
    node_kem_key = KEMKey.from_pyca_cryptography_key(keys.node)
    node_public = suite.kem.deserialize_public_key(keys.node_public)

    def v1_keys() -> None:
        client = X25519PrivateKey.generate()
        salt = os.urandom(v1.SALT_SIZE)
        v1.Session.from_exchange(client, keys.node_public, salt)
        v1.Session.from_exchange(keys.node, client.public_key().public_bytes_raw(), salt)

    def v2_keys() -> None:
        enc, _ = suite.create_sender_context(node_public, info)
        suite.create_recipient_context(enc, node_kem_key, info)

    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(time_chunk(v1_keys, iterations, 1))
        b.append(time_chunk(v2_keys, iterations, 1))
    ka, kb = statistics.median(a), statistics.median(b)
    print(
        f"\nkey agreement per request, both sides: v1 (X25519 + HKDF) {ka:.1f} us, "
        f"v2 (pyhpke SetupBaseS + SetupBaseR) {kb:.1f} us: {kb - ka:.1f} us of v2's extra cost "
        "per request is pyhpke's key schedule"
    )


# -- against atoma-sdk 0.1.3 and OpenSSL ----------------------------------------------------------

REQUEST_2K = (
    b'{"model":"smollm2-135m-instruct","max_tokens":256,"messages":[{"role":"user","content":"'
)
REQUEST_2K += b"x" * (2048 - len(REQUEST_2K) - 4) + b'"}]}'
_CHUNK_HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,"choices":'
_CHUNK_HEAD += b'[{"index":0,"delta":{"content":"'
_CHUNK_TAIL = b'"},"finish_reason":null}]}'
CHUNK_200 = _CHUNK_HEAD + b"w" * (200 - len(_CHUNK_HEAD) - len(_CHUNK_TAIL)) + _CHUNK_TAIL
STREAM_CHUNKS = 500


def v1_chunk_stream(keys: Keys) -> tuple[X25519PrivateKey, bytes, list[dict[str, str]]]:
    """A 500-chunk v1 stream sealed as the node seals it: (client key, salt, messages)."""
    client_sk = X25519PrivateKey.generate()
    salt = os.urandom(v1.SALT_SIZE)
    server = v1.Session.from_exchange(keys.node, client_sk.public_key().public_bytes_raw(), salt)
    messages = []
    for _ in range(STREAM_CHUNKS):
        nonce, ciphertext = server.seal(CHUNK_200)
        messages.append(
            {
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "response_hash": base64.b64encode(v1.body_hash(CHUNK_200)).decode(),
            }
        )
    return client_sk, salt, messages


def against_atoma(keys: Keys, iterations: int, rounds: int) -> bool:
    """Print the comparison with atoma-sdk; True if a target is not met."""
    print("\nVeil (atoma-v1 suite) against atoma-sdk 0.1.3 crypto_utils, identical inputs")
    worker, origin = atoma_baseline.start()
    if worker is None:
        print(f"  not run: {origin}")
        return False
    with worker:
        worker.call(
            "setup",
            node_sk=atoma_baseline.b64(keys.node.private_bytes_raw()),
            request=atoma_baseline.b64(REQUEST_2K),
            answer=atoma_baseline.b64(ANSWER),
        )
        time_request(v1_request_steps(keys, False, REQUEST_2K), 50, 1)  # warm-up, both sides
        worker.call("request", iterations=50)
        ours: list[list[float]] = []
        theirs: list[list[float]] = []
        for _ in range(rounds):
            ours.append(time_request(v1_request_steps(keys, False, REQUEST_2K), iterations, 1))
            steps = worker.call("request", iterations=iterations)["steps"]
            theirs.append([*steps, sum(steps)])

        client_sk, salt, messages = v1_chunk_stream(keys)
        worker.call(
            "load_chunks",
            client_sk=atoma_baseline.b64(client_sk.private_bytes_raw()),
            node_pk=atoma_baseline.b64(keys.node_public),
            salt=atoma_baseline.b64(salt),
            chunks=messages,
        )
        ours_chunk: list[float] = []
        theirs_chunk: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            session = v1.Session.from_exchange(client_sk, keys.node_public, salt)
            for message in messages:
                atoma_baseline.veil_decrypt(session, message)
            ours_chunk.append((time.perf_counter_ns() - t0) / len(messages) / 1000)
            theirs_chunk.append(worker.call("chunks", repeats=1)["us_per_chunk"])

    print(
        f"request {len(REQUEST_2K)} B, answer {len(ANSWER)} B, chunk {len(CHUNK_200)} B; "
        f"{rounds} rounds x {iterations} ops, alternating; no signatures on either side"
    )
    print(f"{'operation':<34}  {'atoma us':>8}  {'veil us':>8}  {'veil/atoma':>10}  target")
    names = ["client seal", "node open", "node seal", "client open", "total"]
    failed = False
    for i, name in enumerate(names):
        a = statistics.median(r[i] for r in theirs)
        b = statistics.median(r[i] for r in ours)
        verdict = ""
        if name == "total":
            ok = b / a <= 1.0
            failed |= not ok
            verdict = f"<= 1.0x  {'met' if ok else 'NOT MET'}"
        print(f"{'2 KiB request: ' + name:<34}  {a:8.1f}  {b:8.1f}  {b / a:9.2f}x  {verdict}")
    a, b = statistics.median(theirs_chunk), statistics.median(ours_chunk)
    ok = a / b >= 10
    failed |= not ok
    print(
        f"{'200 B chunk open (500-chunk stream)':<34}  {a:8.1f}  {b:8.1f}  {b / a:9.2f}x  "
        f"(veil {a / b:.1f}x faster; target >= 10x  {'met' if ok else 'NOT MET'})"
    )
    return failed


def openssl_gcm_bytes_per_second(seconds: int) -> float | None:
    """``openssl speed -evp aes-256-gcm`` on 1 MiB blocks, in bytes per second (None: no openssl)."""
    try:
        done = subprocess.run(
            ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "1048576",
             "-seconds", str(seconds)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^aes-256-gcm\s+([\d.]+)k\s*$", done.stdout, re.MULTILINE | re.IGNORECASE)
    return float(match.group(1)) * 1000 if match else None


def against_openssl(rounds: int) -> bool:
    print(
        "\nAES-256-GCM on 1 MiB: cryptography (what Veil calls) vs `openssl speed` (same machine)"
    )
    data = os.urandom(1 << 20)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    aead.encrypt(nonce, data, None)  # warm-up
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(max(3, rounds // 3)):
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 1.0:
            aead.encrypt(nonce, data, None)  # same nonce: a throughput probe, nothing is sent
            n += 1
        ours.append(n * len(data) / (time.perf_counter() - t0))
        measured = openssl_gcm_bytes_per_second(1)
        if measured is None:
            print("  openssl speed not available: not compared")
            return False
        theirs.append(measured)
    a, b = statistics.median(theirs), statistics.median(ours)
    ok = b / a >= 0.7
    print(f"{'implementation':<34}  {'MB/s':>8}")
    print(f"{'openssl speed -evp aes-256-gcm':<34}  {a / 1e6:8.0f}")
    print(f"{'cryptography AESGCM.encrypt':<34}  {b / 1e6:8.0f}")
    print(f"AES-256-GCM throughput ratio, veil/openssl: {b / a:.2f}x (target >= 0.7x: "
          f"{'met' if ok else 'NOT MET'})")  # fmt: skip
    return not ok


if __name__ == "__main__":
    raise SystemExit(main())
