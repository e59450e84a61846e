"""The crypto benchmark's real request: the client's crypto as a share of one confidential round
trip (part of ``python -m benchmarks.crypto``).

The round trip is real: Veil's own client (``veil.Client``, veil-v3, hybrid KEM) locks through a
``veil gateway`` (SQLite ledger), seals, sends, and opens and checks the answer of a ``veil node``
whose chat model is the vLLM stand-in (``benchmarks/upstream_standin.py``: no GPU here), every part
its own process on loopback. "Crypto" is the CPU time the client's thread spends sealing, opening
and verifying (``Receipt.crypto_seconds``, ``time.thread_time``); the baseline is the same call's
wall time, lock and attestation check included. The stand-in answers at once, so this is the
shortest real request there is: against a real model, which takes longer to answer, the share is
smaller. The microbenchmark's own client-side figures (seal; open + verify) are shown beside it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import Report
from benchmarks.upstream_standin import MODEL

SHARE_TARGET = 1.0  # client crypto as a percentage of a real request's time, below
ROUNDS = 20
PROMPT = [{"role": "user", "content": "Summarise the following paragraph in one sentence."}]


def share_of_a_request(
    report: Report, keys: object, client_us: dict[str, float], *, skip: bool = False
) -> None:
    what = "client crypto (veil-v3) as a share of a real confidential request's time"
    baseline = report.baseline(
        "a real round trip",
        "the wall time of the same call: `veil.Client` -> `veil gateway` (lock, then the sealed "
        "request) -> `veil node` -> the vLLM stand-in, on loopback, in this run; share = the "
        "client's crypto CPU time / that wall time.",
    )
    if skip:
        report.measure(what, None, "%", baseline=baseline, target=("<", SHARE_TARGET),
                       fmt=".3f", id="v3_client_crypto_share", detail="not run (--skip-round-trip)")  # fmt: skip
        return
    try:
        rows = _round_trips()
    except Exception as exc:
        report.note(f"real round trip not measured: {type(exc).__name__}: {exc}")
        report.measure(what, None, "%", baseline=baseline, target=("<", SHARE_TARGET),
                       fmt=".3f", id="v3_client_crypto_share", detail="not measured")  # fmt: skip
        return
    table = report.table(
        f"Client crypto in a real confidential request (veil.Client, veil-v3; median of {ROUNDS})",
        [("request", ""), ("crypto ms (CPU)", ".3f"), ("total ms (wall)", ".2f"),
         ("crypto share %", ".3f")],
        notes="through a real gateway and node whose upstream is the vLLM stand-in (the shortest "
        f"real request). Microbenchmark, same run: client seal {client_us['client_seal']:.0f} "
        f"us, client open + verify {client_us['client_open']:.0f} us of a 2-step request.",
    )  # fmt: skip
    worst = (0.0, 0.0, 1.0)
    for name, crypto, wall in rows:
        table.row(name, crypto * 1e3, wall * 1e3, crypto / wall * 100)
        if crypto / wall > worst[0]:
            worst = (crypto / wall, crypto, wall)
    report.measure(
        what, worst[0] * 100, "%", baseline=baseline, fmt=".3f", target=("<", SHARE_TARGET),
        id="v3_client_crypto_share",
        compared={"numerator": worst[1] * 1e3, "denominator": worst[2] * 1e3, "unit": "ms"},
        detail=f"the larger of {len(rows)} request kinds",
    )  # fmt: skip


def _round_trips() -> list[tuple[str, float, float]]:
    import veil
    from benchmarks.standin_deploy import deployment
    from veil.client.receipt import Receipt

    print("starting the vLLM stand-in, `veil node` and `veil gateway`...", file=sys.stderr)
    rows: list[tuple[str, float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="veil-bench-share-") as tmp,
        deployment(Path(tmp), gateway=True) as deployed,
    ):
        assert deployed.gateway is not None and deployed.api_key is not None
        with veil.Client(deployed.gateway, deployed.api_key, insecure_no_tee=True) as client:

            def chat() -> Receipt:
                answer = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=16)
                return answer.veil

            def stream() -> Receipt:
                chunks = client.chat.completions.create(
                    model=MODEL, messages=PROMPT, max_tokens=64, stream=True
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
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    receipt = call()
                    wall.append(time.perf_counter() - started)
                    crypto.append(receipt.crypto_seconds)
                rows.append((name, statistics.median(crypto), statistics.median(wall)))
    return rows
