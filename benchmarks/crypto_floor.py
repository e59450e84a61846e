"""The floor of veil-v3's design, in the crypto benchmark's run: how cheap v3 could be at best.

Part of ``python -m benchmarks.crypto`` (see its docstring). Each v3 target is a ratio against a
baseline measured in the same run; here the same ratios are computed for the least work the
protocol itself requires, each primitive timed alone on the same payloads and keys, with nothing
around it (no envelope object, no JSON or base64, no key derivation, no checks):

- **a request**: the hybrid-KEM HPKE seal and open of the response secret and the body (with an
  ``info`` as long as a real request's), AES-256-GCM encrypt + decrypt of the answer (one key
  object, so not even its key schedule), and the answer's one Ed25519 signature and its check;
- **a stream chunk**: AES-256-GCM encrypt + decrypt of the chunk with its 22-byte AAD (index and
  final flag), and the running hash (SHA-256 over the previous hash, index, flag and ciphertext)
  that both ends must compute for every chunk to check the answer's one signature. Nonce and AAD
  are precomputed: free here, not in the protocol.

Where a floor ratio misses its target, no implementation of the protocol as specified can meet it
on this machine: the shortfall is the design's (the KEM, the signature, the running hash), not
code that could be made faster. Where it meets its target, what separates the measured figure
from the floor is implementation overhead.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.crypto import (
    ANSWER,
    CHUNK,
    CHUNK_GCM_TARGET,
    ENDPOINT,
    REQUEST,
    REQUEST_TARGET,
    RESERVATION,
    USAGE,
    Keys,
    time_chunk,
)
from benchmarks.report import Report
from veil.hazmat import v3
from veil.hazmat.v3.schedule import CHUNK_LABEL, SECRET_SIZE, info_of, signed_message
from veil.wire.envelopes import Usage


def request_floor(keys: Keys, request: bytes) -> dict[str, Callable[[], None]]:
    """The primitives of one v3 request, each alone: {name: one operation}."""
    kem = v3.Kem.HYBRID
    suite = v3.SUITES[kem]
    public = v3.hpke_public_key(kem, keys.kem.public_key)
    envelope, _ = v3.seal_request(
        keys.kem.public_key, keys.kem.key_id, request, node_signing_key=keys.signer_public,
        endpoint=ENDPOINT, model_name="smollm2-135m-instruct", stack_small_id=1,
        num_compute_units=256, stream=False, reservation_id=RESERVATION,
    )  # fmt: skip
    info = info_of(envelope, kem, ENDPOINT)  # a real request's info, byte for byte
    plaintext = os.urandom(SECRET_SIZE) + request
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    message = signed_message(os.urandom(32), Usage(**USAGE))
    signature = keys.signer.sign(message)

    def kem_seal_open() -> None:
        suite.decrypt(suite.encrypt(plaintext, public, info), keys.kem.private_key, info)

    def answer_aead() -> None:
        aead.decrypt(nonce, aead.encrypt(nonce, ANSWER, None), None)

    def sign() -> None:
        keys.signer.sign(message)

    def verify() -> None:
        keys.signer_public.verify(signature, message)

    return {
        "hybrid-KEM HPKE seal + open of secret and body": kem_seal_open,
        "AES-256-GCM encrypt + decrypt of the answer": answer_aead,
        "Ed25519 sign of the answer": sign,
        "Ed25519 verify of the answer": verify,
    }


def chunk_floor() -> Callable[[], None]:
    """One chunk's required work on both ends: AEAD with its AAD, and the running hash twice."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    place = struct.pack(">Q?", 5, False)
    aad = CHUNK_LABEL + place
    previous = os.urandom(32)

    def one() -> None:
        sealed = aead.encrypt(nonce, CHUNK, aad)
        hashlib.sha256(previous + place + sealed).digest()  # the node's running hash
        aead.decrypt(nonce, sealed, aad)
        hashlib.sha256(previous + place + sealed).digest()  # the client's

    return one


def request_floor_us(primitives: dict[str, Callable[[], None]], iterations: int) -> float:
    """One round of a request's floor: the sum of its primitives' microseconds."""
    return sum(time_chunk(one, iterations, 1) for one in primitives.values())


def design_floor(
    report: Report,
    keys: Keys,
    iterations: int,
    rounds: int,
    atoma: tuple[float, float] | None,
    *,
    atoma_declared: bool,
) -> None:
    """Report the floors against baselines measured in the same rounds: atoma-v1's request and
    bare AES-GCM's chunk are timed again here, interleaved with the floors. ``atoma``: atoma-sdk's
    2 KiB request and the 2 KiB floor, from the rounds of ``against_atoma`` (None: not run);
    ``atoma_declared``: whether this run has the atoma-sdk baseline at all (not ``--skip-atoma``)."""
    from benchmarks.crypto import bare_gcm_chunk, time_request, v1_request_steps
    from benchmarks.crypto_baselines import ATOMA_REQUEST_TARGET

    primitives = request_floor(keys, REQUEST)
    chunk_one, bare_one = chunk_floor(), bare_gcm_chunk()
    v1_steps = v1_request_steps(keys, True)
    runs: dict[str, Callable[[], float]] = {
        **{f"request: {name}": _timer(one, iterations) for name, one in primitives.items()},
        "chunk: AEAD with AAD, both ends, and the running hash on both": _timer(
            chunk_one, iterations * 5
        ),
        "atoma-v1 request, measured (baseline)": lambda: time_request(v1_steps, iterations, 1)[-1],
        "bare AES-256-GCM chunk, measured (baseline)": _timer(bare_one, iterations * 5),
    }
    for run in runs.values():
        run()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    us = {name: statistics.median(s) for name, s in samples.items()}
    names = list(runs)
    request = sum(us[n] for n in names[:4])
    chunk, v1_total, gcm = (us[n] for n in names[4:7])
    table = report.table(
        f"The design's floor: the primitives veil-v3 requires, each alone, beside the baselines "
        f"timed in the same rounds (microseconds of CPU, median of {rounds} rounds)",
        [("primitive", ""), ("us", ".1f")],
        notes="no envelope, JSON, base64, key derivation or checks: what no implementation of the "
        "protocol can skip. A floor ratio that misses its target means the target is out of the "
        "design's reach on this machine.",
    )  # fmt: skip
    for name in names:
        table.row(name, us[name])
    table.row("request floor (the four request rows)", request)
    if atoma is not None:
        table.row("2 KiB request floor (timed in the atoma-sdk rounds)", atoma[1])
        table.row("atoma-sdk 0.1.3 2 KiB request (same rounds, baseline)", atoma[0])
    report.ratio(
        "floor of a veil-v3 request / atoma-v1's measured request", request, v1_total,
        baseline="atoma-v1", unit="us", target=("<=", REQUEST_TARGET),
        id="v3_request_floor_vs_atoma_v1",
        detail="the design's least work (hybrid KEM, answer AEAD, one signature and its check)",
    )  # fmt: skip
    report.ratio(
        "veil-v3 chunk floor throughput / bare AES-256-GCM's", gcm, chunk,
        baseline="AES-256-GCM", unit="us", target=(">=", CHUNK_GCM_TARGET),
        id="v3_chunk_floor_vs_aes_gcm",
        detail="AEAD with the chunk's AAD and the running hash on both ends, nothing else",
    )  # fmt: skip
    if atoma_declared:  # the atoma-sdk baseline is in this run (not --skip-atoma)
        floor_2k, sdk = (atoma[1], atoma[0]) if atoma is not None else (None, None)
        report.ratio(
            "floor of a veil-v3 2 KiB request / atoma-sdk 0.1.3's measured one", floor_2k, sdk,
            baseline="atoma-sdk 0.1.3", unit="us", target=("<=", ATOMA_REQUEST_TARGET),
            id="v3_request_floor_vs_atoma_sdk",
            detail="atoma-sdk neither signs nor checks a signature; v3 must"
            if atoma is not None else "not run: atoma-sdk did not run",
        )  # fmt: skip


def _timer(one: Callable[[], None], iterations: int) -> Callable[[], float]:
    return lambda: time_chunk(one, iterations, 1)
