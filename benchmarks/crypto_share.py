"""The crypto benchmark's real request: the client's crypto as a share of one confidential round
trip (part of ``python -m benchmarks.crypto``).

The round trip is real: Veil's own client (``veil.Client``, veil-v3, hybrid KEM) locks through a
``veil gateway`` (SQLite ledger), seals, sends, and opens and checks the answer of a ``veil node``,
every part its own process on loopback. "Crypto" is the CPU time the client's thread spends
sealing, opening and verifying (``Receipt.crypto_seconds``, ``time.thread_time``); the baseline is
the same call's wall time, lock and attestation check included.

Two nodes, one after the other:

- **a real model** (the headline, ``v3_client_crypto_share``): the node's embedded chat model
  (SmolLM2-135M-Instruct through llama.cpp on this CPU, the smallest model Veil ships), answering
  16 tokens, and streaming 64;
- **the vLLM stand-in** (``benchmarks/upstream_standin.py``, a stand-in for vLLM on a GPU, which
  cannot run here): it answers at once, faster than any real model, so this is the shortest round
  trip Veil can make, and its share is an upper bound (``v3_client_crypto_share_standin``,
  reported without a target: no real request is that short).

The microbenchmark's own client-side figures (seal; open + verify) are shown beside them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness import TEST_MODEL_DIR

from benchmarks.report import Relation, Report
from benchmarks.upstream_standin import MODEL

SHARE_TARGET = 1.0  # client crypto as a percentage of a real request's time, below
ROUNDS = 20
REAL_ROUNDS = 5  # the real model takes a second or so a round
PROMPT = [{"role": "user", "content": "Summarise the following paragraph in one sentence."}]


def share_of_a_request(
    report: Report, keys: object, client_us: dict[str, float], *, skip: bool = False
) -> None:
    what = "client crypto (veil-v3) as a share of a real confidential request's time"
    standin_what = "the same share against the vLLM stand-in (an upper bound: it answers at once)"
    baseline = report.baseline(
        "a real round trip",
        "the wall time of the same call: `veil.Client` -> `veil gateway` (lock, then the sealed "
        "request) -> `veil node` on its embedded chat model (real, on this CPU), on loopback, in "
        "this run; share = the client's crypto CPU time / that wall time.",
    )
    standin = report.baseline(
        "a stand-in round trip",
        "the same call through a `veil node` whose chat model is the vLLM stand-in, which answers "
        "at once: the shortest round trip there is, in this run.",
    )
    if skip:
        report.measure(what, None, "%", baseline=baseline, target=("<", SHARE_TARGET),
                       fmt=".3f", id="v3_client_crypto_share", detail="not run (--skip-round-trip)")  # fmt: skip
        return
    for label, models_dir, rounds, id, headline in (
        ("the embedded chat model", TEST_MODEL_DIR, REAL_ROUNDS, "v3_client_crypto_share", what),
        ("the vLLM stand-in", None, ROUNDS, "v3_client_crypto_share_standin", standin_what),
    ):
        target: tuple[Relation, float] | None = (
            ("<", SHARE_TARGET) if models_dir is not None else None
        )
        base = baseline if models_dir is not None else standin
        try:
            rows = _round_trips(models_dir, rounds)
        except Exception as exc:
            report.note(f"round trip through {label} not measured: {type(exc).__name__}: {exc}")
            report.measure(headline, None, "%", baseline=base, target=target, fmt=".3f", id=id,
                           detail="not measured")  # fmt: skip
            continue
        table = report.table(
            f"Client crypto in a confidential request through {label} (veil.Client, veil-v3; "
            f"median of {rounds})",
            [("request", ""), ("crypto ms (CPU)", ".3f"), ("total ms (wall)", ".2f"),
             ("crypto share %", ".3f")],
            notes=f"Microbenchmark, same run: client seal {client_us['client_seal']:.0f} us, "
            f"client open + verify {client_us['client_open']:.0f} us of a 2-step request.",
        )  # fmt: skip
        worst = (0.0, 0.0, 1.0)
        for name, crypto, wall in rows:
            table.row(name, crypto * 1e3, wall * 1e3, crypto / wall * 100)
            if crypto / wall > worst[0]:
                worst = (crypto / wall, crypto, wall)
        report.measure(
            headline, worst[0] * 100, "%", baseline=base, fmt=".3f", target=target, id=id,
            compared={"numerator": worst[1] * 1e3, "denominator": worst[2] * 1e3, "unit": "ms"},
            detail=f"the larger of {len(rows)} request kinds, through {label}",
        )  # fmt: skip


def _round_trips(models_dir: Path | None, rounds: int) -> list[tuple[str, float, float]]:
    import veil
    from benchmarks.standin_deploy import deployment
    from veil.client.receipt import Receipt

    model = MODEL
    if models_dir is not None:
        from veil.engines import prepare_embedded_models
        from veil.engines.models import CHAT_MODEL_ID

        prepare_embedded_models(models_dir, progress=False)
        model = CHAT_MODEL_ID
    where = "its embedded models" if models_dir is not None else "the vLLM stand-in"
    print(f"starting `veil node` on {where} and `veil gateway`...", file=sys.stderr)
    rows: list[tuple[str, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="veil-bench-share-") as tmp,
        deployment(Path(tmp), gateway=True, models_dir=models_dir) as deployed,
    ):
        assert deployed.gateway is not None and deployed.api_key is not None
        with veil.Client(deployed.gateway, deployed.api_key, insecure_no_tee=True) as client:

            def chat() -> Receipt:
                answer = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=16)
                return answer.veil

            def stream() -> Receipt:
                chunks = client.chat.completions.create(
                    model=model, messages=PROMPT, max_tokens=64, stream=True
                )
                for _ in chunks:
                    pass
                return chunks.veil

            kinds: dict[str, Callable[[], Receipt]] = {
                "chat (16 tokens)": chat,
                "chat stream (64 chunks)": stream,
            }
            for name, call in kinds.items():
                call()  # warm-up: connections, the node's key in the client's cache
                crypto, wall = [], []
                for _ in range(rounds):
                    started = time.perf_counter()
                    receipt = call()
                    wall.append(time.perf_counter() - started)
                    crypto.append(receipt.crypto_seconds)
                rows.append((name, statistics.median(crypto), statistics.median(wall)))
    return rows
