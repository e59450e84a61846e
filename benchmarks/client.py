"""Client-side crypto, measured: ``python -m benchmarks.client [--base-url URL --api-key KEY]``.

1. Opening a 500-chunk stream. Veil derives the request key once and reuses one AESGCM object for
   every chunk (``v1.Session``); atoma-sdk 0.1.3 calls ``crypto_utils.decrypt_message`` per chunk,
   which redoes the X25519 exchange, the HKDF derivation and the AESGCM setup each time. The
   baseline is that real function, run in atoma-sdk's own venv (``benchmarks/atoma_worker.py``)
   on the same sealed chunks; where that venv cannot be built (no package index) it falls back to
   the same operations re-implemented here, in its order, and says so. The like-for-like row
   compares those same checks (tag + BLAKE2b); a second row adds what Veil checks on top (the
   Ed25519 signature of every chunk, envelope parsing), for the whole per-event cost.
2. Client crypto time per request against the request's total time, with the embedded models
   (``veil serve`` on loopback, its own process tree, as ``benchmarks/load.py`` (a) starts it,
   unless ``--base-url`` and ``--api-key`` name a running gateway). Requests are veil-v3 (the
   client's default: hybrid KEM, one signature per answer) and attested; the local deployment
   has no TEE, so the client opts in with ``insecure_no_tee`` for it (``--insecure-no-tee`` does
   the same for a ``--base-url`` gateway whose nodes have no TEE). "Crypto" is the CPU time the
   client's thread spends sealing, opening and verifying (``Receipt.crypto_seconds``, measured
   with ``time.thread_time``): on this machine the node shares the client's two cores, and wall
   time would count the moments the node's model preempts the client as client crypto. "Total"
   is the wall time of the whole call, lock and attestation check included.

Reports the tables and the ratios (``--json PATH``: as JSON; the printed report is rendered from
it); exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tests.harness import TEST_MODEL_DIR, NodeKeys, client_opener

import veil
from benchmarks import atoma_baseline
from benchmarks.report import Report
from veil.client.receipt import Receipt
from veil.client.streaming import StreamChecker
from veil.hazmat import v1
from veil.wire.envelopes import ConfidentialComputeResponse
from veil.wire.keyid import key_id

CHUNKS = 500
REPEATS = 5


# -- 1. opening a stream ----------------------------------------------------------------------
def atoma_decrypt_message(
    client_sk: X25519PrivateKey, node_pk: X25519PublicKey, salt: bytes, message: dict[str, Any]
) -> bytes:
    """atoma-sdk 0.1.3 ``crypto_utils.decrypt_message``, operation for operation."""
    ciphertext = base64.b64decode(message["ciphertext"])
    nonce = base64.b64decode(message["nonce"])
    expected_hash = message.get("response_hash")
    shared_secret = client_sk.exchange(node_pk)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"").derive(shared_secret)
    plaintext = AESGCM(key).decrypt(nonce, ciphertext, None)
    if expected_hash:
        actual = hashlib.blake2b(plaintext, digest_size=32).digest()
        if not secrets.compare_digest(actual, base64.b64decode(expected_hash)):
            raise ValueError("Message hash verification failed")
    return plaintext


def sealed_stream(
    node_sk: X25519PrivateKey, client_pk: bytes, salt: bytes, signer: Ed25519PrivateKey
) -> list[dict[str, Any]]:
    """500 chunks sealed the way the node seals them (fresh nonce, hash, signature)."""
    session = v1.Session.from_exchange(node_sk, client_pk, salt)
    events = []
    for i in range(CHUNKS):
        last = i == CHUNKS - 1
        chunk = {
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "smollm2-135m-instruct",
            "choices": [] if last else [
                {"index": 0, "delta": {"content": f" token{i}"}, "logprobs": None,
                 "finish_reason": None}
            ],
        }  # fmt: skip
        usage = {"prompt_tokens": 10, "completion_tokens": CHUNKS - 1, "total_tokens": CHUNKS + 9}
        if last:
            chunk["usage"] = usage
        plaintext = json.dumps(chunk, separators=(",", ":")).encode()
        digest = v1.body_hash(plaintext)
        nonce, ciphertext = session.seal(plaintext)
        event: dict[str, Any] = {
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "response_hash": base64.b64encode(digest).decode(),
            "signature": base64.b64encode(signer.sign(digest)).decode(),
        }
        if last:
            event["usage"] = usage
        events.append(event)
    return events


def best_of(work: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_stream() -> list[tuple[str, float]]:
    node_sk, client_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    node_pk = node_sk.public_key()
    signer = Ed25519PrivateKey.generate()
    salt = os.urandom(16)
    events = sealed_stream(node_sk, client_sk.public_key().public_bytes_raw(), salt, signer)
    data = [json.dumps(e) for e in events]
    node = NodeKeys(
        node_pk.public_bytes_raw(), key_id(node_pk.public_bytes_raw()), signer.public_key()
    )

    def atoma() -> None:
        for event in events:
            atoma_decrypt_message(client_sk, node_pk, salt, event)

    def veil_same_checks() -> None:
        session = v1.Session.from_exchange(client_sk, node_pk.public_bytes_raw(), salt)
        for event in events:
            atoma_baseline.veil_decrypt(session, event)

    def veil_full() -> None:
        session = v1.Session.from_exchange(client_sk, node_pk.public_bytes_raw(), salt)
        checker = StreamChecker(client_opener(session, node, "chat", "smollm2-135m-instruct"))
        for line in data:
            checker.event(line)
        checker.end()

    # Sanity: all three read the same plaintexts.
    session = v1.Session.from_exchange(client_sk, node_pk.public_bytes_raw(), salt)
    assert all(
        atoma_decrypt_message(client_sk, node_pk, salt, e)
        == atoma_baseline.veil_decrypt(session, e)
        for e in events[:3]
    )
    ConfidentialComputeResponse.model_validate_json(data[0])
    rows = [
        ("veil: key once, same checks (tag + hash)", best_of(veil_same_checks)),
        ("veil: full client path (+ Ed25519, parsing)", best_of(veil_full)),
    ]
    worker, origin = atoma_baseline.start()
    if worker is None:  # no package index: the same operations, re-implemented, say so
        print(f"   {origin}: baseline re-implemented operation for operation", file=sys.stderr)
        return [("atoma-sdk (re-implemented): decrypt_message", best_of(atoma)), *rows]
    with worker:
        worker.call(
            "load_chunks",
            client_sk=atoma_baseline.b64(client_sk.private_bytes_raw()),
            node_pk=atoma_baseline.b64(node_pk.public_bytes_raw()),
            salt=atoma_baseline.b64(salt),
            chunks=[{k: e[k] for k in ("ciphertext", "nonce", "response_hash")} for e in events],
        )
        per_chunk = worker.call("chunks", repeats=REPEATS)["us_per_chunk"]
    return [("atoma-sdk 0.1.3: decrypt_message per chunk", per_chunk * CHUNKS / 1e6), *rows]


# -- 2. crypto share of a real request --------------------------------------------------------
@contextmanager
def local_deployment() -> Iterator[tuple[str, str]]:
    """``veil serve`` (gateway + node on the embedded models) in its own process tree, so that
    the servers do not compete with the measured client for this process's interpreter lock
    (client and node are different machines in real use); a user made in its ledger."""
    from benchmarks.confidential import create_user
    from benchmarks.load import single
    from veil.engines import prepare_embedded_models

    prepare_embedded_models(TEST_MODEL_DIR, progress=False)
    with (
        tempfile.TemporaryDirectory(prefix="veil-bench-client-") as tmp,
        single(Path(tmp), TEST_MODEL_DIR) as deployment,
    ):
        _, key = asyncio.run(create_user(deployment.database_url))
        yield deployment.gateways[0], key


def bench_requests(
    base_url: str, api_key: str, rounds: int, insecure_no_tee: bool = False
) -> list[tuple[str, float, float, int]]:
    messages = [{"role": "user", "content": "Write one short sentence about the sea."}]
    rows = []
    with veil.Client(base_url, api_key, insecure_no_tee=insecure_no_tee) as client:
        kinds: dict[str, Callable[[], Receipt]] = {
            "chat (8 tokens)": lambda: (
                client.chat.completions.create(
                    model="smollm2-135m-instruct", messages=messages, max_tokens=8, temperature=0
                ).veil
            ),
            "chat stream (8 tokens)": lambda: _drain(client, messages),
            "embeddings (1 text)": lambda: (
                client.embeddings.create(
                    model="all-minilm-l6-v2", input="a short private sentence"
                ).veil
            ),
        }
        for name, call in kinds.items():
            call()  # warm-up
            crypto, total = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                receipt = call()
                total.append(time.perf_counter() - started)
                crypto.append(receipt.crypto_seconds)
            rows.append(
                (
                    name,
                    statistics.median(crypto),
                    statistics.median(total),
                    receipt.messages_verified,
                )
            )
    return rows


def ed25519_verify_seconds() -> float:
    """One Ed25519 verification with ``cryptography`` on this machine (best of 5 x 200)."""
    key = Ed25519PrivateKey.generate()
    public, message = key.public_key(), os.urandom(32)
    signature = key.sign(message)
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(200):
            public.verify(signature, message)
        best = min(best, (time.thread_time() - t0) / 200)
    return best


def _drain(client: veil.Client, messages: list[dict[str, str]]) -> Receipt:
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, max_tokens=8, temperature=0, stream=True
    )
    for _ in stream:
        pass
    return stream.veil


TITLE = "Client: opening streams, and crypto's share of a real request"
DESCRIPTION = (
    "1) Opening a 500-chunk sealed stream on the client. 2) Client crypto time per request "
    "against the whole request time, through a real gateway + node on the embedded models."
)
STREAM_TARGET = 10.0  # atoma-sdk's per-chunk decrypt / Veil's, at least
SHARE_TARGET = 1.0  # client crypto as a percentage of the request's time, below


def report_stream(report: Report, rows: list[tuple[str, float]]) -> None:
    baseline = report.baseline(
        "atoma-sdk decrypt_message",
        "atoma-sdk 0.1.3's per-chunk `decrypt_message` (X25519 + HKDF + AES-GCM setup per chunk) "
        "in the same run. Ratio = baseline time / Veil time (higher is better).",
    )
    first = rows[0][1]
    table = report.table(
        f"1. Opening a {CHUNKS}-chunk stream (best of {REPEATS})",
        [("method", ""), ("total ms", ".2f"), ("us/chunk", ".1f"), ("speed-up", ".1f")],
    )
    for name, seconds in rows:
        table.row(name, seconds * 1e3, seconds / CHUNKS * 1e6, first / seconds)
    report.ratio(
        "opening a 500-chunk stream, atoma-sdk's per-chunk decrypt / Veil's (like for like)",
        first * 1e3, rows[1][1] * 1e3, baseline=baseline, unit="ms", fmt=".1f",
        target=(">=", STREAM_TARGET),
    )  # fmt: skip


def report_requests(
    report: Report, results: list[tuple[str, float, float, int]], rounds: int
) -> None:
    total = report.baseline("the request's own time", "each request's total wall time.")
    verify = ed25519_verify_seconds()
    table = report.table(
        f"2. Client crypto per request vs total (median of {rounds})",
        [("request", ""), ("crypto ms (CPU)", ".3f"), ("total ms (wall)", ".1f"),
         ("crypto share %", ".3f"), ("signatures", "d"), ("Ed25519 verify ms", ".2f")],
        notes="every message's Ed25519 signature is checked; one verification costs "
        f"{verify * 1e6:.0f} us here, measured in this run",
    )  # fmt: skip
    worst = 0.0
    for name, crypto, seconds, messages in results:
        share = crypto / seconds * 100
        worst = max(worst, share)
        table.row(name, crypto * 1e3, seconds * 1e3, share, messages, messages * verify * 1e3)
    report.measure(
        "client crypto as a share of a real request's time, at most", worst, "%",
        baseline=total, fmt=".3f", target=("<", SHARE_TARGET),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default=None, help="a running gateway (default: start one)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-requests", action="store_true", help="only benchmark 1")
    parser.add_argument(
        "--insecure-no-tee",
        action="store_true",
        help="accept nodes without a TEE at --base-url (the local deployment always needs it)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    report = Report("client", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    report_stream(report, bench_stream())
    if not args.skip_requests:
        with ExitStack() as stack:
            if args.base_url and args.api_key:
                base_url, api_key = args.base_url, args.api_key
                insecure_no_tee = args.insecure_no_tee
            else:
                print("starting `veil serve` on the embedded models...", file=sys.stderr)
                base_url, api_key = stack.enter_context(local_deployment())
                insecure_no_tee = True  # a loopback demo deployment: no TEE
            results = bench_requests(base_url, api_key, args.rounds, insecure_no_tee)
        report_requests(report, results, args.rounds)
    return report.emit(args.json)


if __name__ == "__main__":
    raise SystemExit(main())
