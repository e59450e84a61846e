"""The crypto benchmark's outside baselines: the published atoma-sdk 0.1.3 and ``openssl speed``.

Part of ``python -m benchmarks.crypto`` (see its docstring): veil-v3 (with its one signature) and
Veil's atoma-v1 suite against atoma-sdk's own ``crypto_utils`` (run in its own venv by ``benchmarks/atoma_worker.py``, rounds
alternating with ours on identical inputs), and AES-256-GCM through ``cryptography`` against
``openssl speed -evp aes-256-gcm`` on the same machine.
"""

from __future__ import annotations

import base64
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks import atoma_baseline
from benchmarks.crypto import (
    ANSWER,
    Keys,
    time_chunk,
    time_request,
    v1_request_steps,
    v3_request_steps,
)
from benchmarks.report import Relation, Report
from veil.hazmat import v1, v3
from veil.wire.envelopes import SALT_SIZE

REQUEST_2K = (
    b'{"model":"smollm2-135m-instruct","max_tokens":256,"messages":[{"role":"user","content":"'
)
REQUEST_2K += b"x" * (2048 - len(REQUEST_2K) - 4) + b'"}]}'
_CHUNK_HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,"choices":'
_CHUNK_HEAD += b'[{"index":0,"delta":{"content":"'
_CHUNK_TAIL = b'"},"finish_reason":null}]}'
CHUNK_200 = _CHUNK_HEAD + b"w" * (200 - len(_CHUNK_HEAD) - len(_CHUNK_TAIL)) + _CHUNK_TAIL
STREAM_CHUNKS = 500
ATOMA_REQUEST_TARGET = 1.0  # Veil time / atoma-sdk time per 2 KiB request, at most (v3 and v1)
ATOMA_CHUNK_TARGET = 10.0  # atoma-sdk time / Veil time per chunk opened, at least
GCM_TARGET = 0.7  # Veil's AES-256-GCM throughput / OpenSSL's, at least


def v1_chunk_stream(keys: Keys) -> tuple[X25519PrivateKey, bytes, list[dict[str, str]]]:
    """A 500-chunk v1 stream sealed as the node seals it: (client key, salt, messages)."""
    client_sk = X25519PrivateKey.generate()
    salt = os.urandom(SALT_SIZE)
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


def against_atoma(
    report: Report, keys: Keys, iterations: int, rounds: int
) -> tuple[float, float] | None:
    """veil-v3, Veil's atoma-v1 suite and atoma-sdk 0.1.3 on the same 2 KiB request, and the
    atoma-v1 suite against atoma-sdk on 200 B chunks. Returns atoma-sdk's microseconds per 2 KiB
    request and v3's floor for it (``crypto_floor``) timed in the same rounds (None: atoma-sdk
    could not run)."""
    from benchmarks.crypto_floor import request_floor, request_floor_us

    baseline = report.baseline(
        "atoma-sdk 0.1.3",
        "atoma-sdk 0.1.3's own `crypto_utils` in its own venv, rounds alternating with Veil's "
        "on identical inputs. atoma-sdk neither signs nor checks signatures: Veil's atoma-v1 "
        "rows leave the signature out too, veil-v3's include its one signature per answer.",
    )
    v3_what = "veil-v3 (hybrid KEM, with its signature) / atoma-sdk 0.1.3 crypto per 2 KiB request"
    request_what = "Veil (atoma-v1) / atoma-sdk 0.1.3 crypto per 2 KiB request"
    chunk_what = "opening 200 B chunks, atoma-sdk's `decrypt_message` / Veil's"
    ids = ("v3_request_vs_atoma_sdk", "v1_request_vs_atoma_sdk", "atoma_sdk_chunk_open_vs_veil")
    worker, origin = atoma_baseline.start()
    if worker is None:  # no package index: said in the report, the headlines have no value
        report.note(f"atoma-sdk comparison not run: {origin}")
        for what, id in zip((v3_what, request_what, chunk_what), ids, strict=True):
            target: tuple[Relation, float] = (
                (">=", ATOMA_CHUNK_TARGET) if what is chunk_what else ("<=", ATOMA_REQUEST_TARGET)
            )
            report.ratio(what, None, None, baseline=baseline, detail=f"not run: {origin}",
                         target=target, id=id)  # fmt: skip
        return None
    with worker:
        worker.call(
            "setup",
            node_sk=atoma_baseline.b64(keys.node.private_bytes_raw()),
            request=atoma_baseline.b64(REQUEST_2K),
            answer=atoma_baseline.b64(ANSWER),
        )
        time_request(v1_request_steps(keys, False, REQUEST_2K), 50, 1)  # warm-up, every side
        time_request(v3_request_steps(keys, REQUEST_2K), 50, 1)
        worker.call("request", iterations=50)
        ours: list[list[float]] = []
        ours_v3: list[list[float]] = []
        theirs: list[list[float]] = []
        floor = request_floor(keys, REQUEST_2K)
        floors: list[float] = []
        for _ in range(rounds):
            ours.append(time_request(v1_request_steps(keys, False, REQUEST_2K), iterations, 1))
            ours_v3.append(time_request(v3_request_steps(keys, REQUEST_2K), iterations, 1))
            floors.append(request_floor_us(floor, iterations))
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

    table = report.table(
        f"veil-v3 and Veil's atoma-v1 suite against atoma-sdk 0.1.3 crypto_utils, identical "
        f"inputs; {rounds} rounds x {iterations} ops, alternating",
        [("operation", ""), ("atoma-sdk us", ".1f"), ("veil v1 us", ".1f"),
         ("veil v3 us", ".1f"), ("v1/atoma", ".2f"), ("v3/atoma", ".2f")],
        notes=f"request {len(REQUEST_2K)} B, answer {len(ANSWER)} B, chunk {len(CHUNK_200)} B; "
        "atoma-sdk and Veil's v1 rows without signatures, v3 with its one signature per answer "
        "(node seal signs, client open verifies) and the hybrid KEM",
    )  # fmt: skip
    names = ["client seal", "node open", "node seal", "client open", "total"]
    for i, name in enumerate(names):
        a = statistics.median(r[i] for r in theirs)
        b = statistics.median(r[i] for r in ours)
        c = statistics.median(r[i] for r in ours_v3)
        table.row(f"2 KiB request: {name}", a, b, c, b / a, c / a)
    report.ratio(v3_what, c, a, baseline=baseline, unit="us",
                 target=("<=", ATOMA_REQUEST_TARGET), id=ids[0])  # fmt: skip
    report.ratio(request_what, b, a, baseline=baseline, unit="us",
                 target=("<=", ATOMA_REQUEST_TARGET), id=ids[1])  # fmt: skip
    atoma = (a, statistics.median(floors))
    a, b = statistics.median(theirs_chunk), statistics.median(ours_chunk)
    chunks = report.table(
        f"Opening 200 B chunks of a {STREAM_CHUNKS}-chunk atoma-v1 stream: atoma-sdk's "
        "`decrypt_message` per chunk against Veil's key derived once per response",
        [("operation", ""), ("atoma-sdk us", ".1f"), ("veil us", ".1f"), ("veil/atoma", ".2f")],
    )
    chunks.row("200 B chunk open", a, b, b / a)
    report.ratio(chunk_what, a, b, baseline=baseline, unit="us", fmt=".1f",
                 target=(">=", ATOMA_CHUNK_TARGET), id=ids[2])  # fmt: skip
    return atoma


def openssl_gcm_bytes_per_second(seconds: int) -> float | None:
    """``openssl speed -evp aes-256-gcm`` on 1 MiB blocks, in bytes per second (None: no openssl).

    ``openssl speed`` has no machine-readable output for this; its one result line is parsed."""
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


def against_openssl(report: Report, rounds: int) -> None:
    baseline = report.baseline(
        "openssl speed",
        "`openssl speed -evp aes-256-gcm` on 1 MiB blocks, run in the same benchmark; ratio = "
        "Veil's MB/s / OpenSSL's.",
    )
    what = "AES-256-GCM on 1 MiB, Veil's calls / `openssl speed`"
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
            report.note("openssl speed not available: AES-256-GCM not compared")
            report.ratio(what, None, None, baseline=baseline, detail="openssl not available",
                         target=(">=", GCM_TARGET), id="aes_gcm_vs_openssl")  # fmt: skip
            return
        theirs.append(measured)
    a, b = statistics.median(theirs), statistics.median(ours)
    table = report.table(
        "AES-256-GCM on 1 MiB: cryptography (what Veil calls) vs `openssl speed` (same machine)",
        [("implementation", ""), ("MB/s", ".0f")],
    )
    table.row("openssl speed -evp aes-256-gcm", a / 1e6)
    table.row("cryptography AESGCM.encrypt", b / 1e6)
    report.ratio(what, b / 1e6, a / 1e6, baseline=baseline, unit="MB/s",
                 target=(">=", GCM_TARGET), id="aes_gcm_vs_openssl")  # fmt: skip


def key_agreement(report: Report, keys: Keys, iterations: int, rounds: int) -> None:
    """Where v3's extra cost per request goes: its HPKE single-shot seal + open of the response
    secret alone, with the hybrid KEM and with X25519, against v1's X25519 + HKDF on both sides."""
    hybrid, classical = v3.Kem.HYBRID, v3.Kem.X25519
    x_key = v3.NodeKemKey.generate(classical)
    info = b"veil-v3 request\x00bench"
    secret = os.urandom(32)

    def hpke(kem: v3.Kem, key: v3.NodeKemKey) -> Callable[[], None]:
        public = v3.hpke_public_key(kem, key.public_key)

        def one() -> None:
            sealed = v3.SUITES[kem].encrypt(secret, public, info)
            assert v3.SUITES[kem].decrypt(sealed, key.private_key, info) == secret

        return one

    def v1_keys() -> None:
        client = X25519PrivateKey.generate()
        salt = os.urandom(SALT_SIZE)
        v1.Session.from_exchange(client, keys.node_public, salt)
        v1.Session.from_exchange(keys.node, client.public_key().public_bytes_raw(), salt)

    runs = {"v1: X25519 + HKDF, both sides": v1_keys,
            "v3: HPKE seal + open, X25519 KEM": hpke(classical, x_key),
            "v3: HPKE seal + open, ML-KEM-768 + X25519 (X-Wing)": hpke(hybrid, keys.kem)}  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, one in runs.items():
            samples[name].append(time_chunk(one, iterations, 1))
    table = report.table(
        "Key agreement per request, both sides (microseconds of CPU, median of "
        f"{rounds} rounds x {iterations})",
        [("key agreement", ""), ("us", ".1f")],
        notes="what the post-quantum KEM adds to a request: the rest of v3's request cost is the "
        "envelope (pydantic), the canonical info, the answer's HKDF and its one signature",
    )
    for name in runs:
        table.row(name, statistics.median(samples[name]))
