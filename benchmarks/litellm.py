"""Veil's gateway side by side with LiteLLM's proxy: ``python -m benchmarks.litellm [--quick]``.

LiteLLM's proxy (PyPI ``litellm[proxy]``) is the gateway most teams put in front of their models
for keys, budgets and spend tracking. It is installed here into a venv of its own,
``.cache/litellm-venv`` (never into Veil's), by this benchmark the first time it runs; where it
cannot be installed or started, the headlines say "not measured" and why (never a number).

Both gateways run in front of the same upstream, the stand-in for vLLM on a GPU
(``benchmarks/upstream_standin.py``), in one run: LiteLLM straight in front of it (its master key
checked on every request; no PostgreSQL spend tracking, whose Prisma client needs a download this
machine cannot make: said in the report), Veil's ``veil gateway`` (SQLite ledger, durable) in front
of a ``veil node`` on it. On plain chat (16 tokens) and embeddings:

- **added latency**: p50 through LiteLLM minus p50 straight to the stand-in; p50 through Veil's
  gateway minus p50 straight to the node it forwards to (each gateway's own hop; requests
  sequential, paths alternating). Target: Veil's <= 0.5x LiteLLM's;
- **requests/s per gateway core**: ``--clients`` concurrent clients for ``--seconds`` through each
  gateway; requests/s divided by the gateway process's CPU (cores busy, from ``/proc``). Target:
  Veil's >= 2x LiteLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tests.harness import free_port, stop_session

from benchmarks.confidential import p_ms
from benchmarks.report import Report
from benchmarks.standin_deploy import Deployment, cpu_seconds, deployment, node_on
from benchmarks.tool_venv import ensure_tool
from benchmarks.upstream_standin import EMBED_MODEL, MODEL

MASTER_KEY = "sk-veil-bench"
LATENCY_TARGET = 0.5  # Veil's added p50 / LiteLLM's, at most
THROUGHPUT_TARGET = 2.0  # Veil's requests/s per gateway core / LiteLLM's, at least
BODIES = {
    "chat": ("/v1/chat/completions", {"model": MODEL, "max_tokens": 16,
                                      "messages": [{"role": "user", "content": "hello there"}]}),
    "embeddings": ("/v1/embeddings", {"model": EMBED_MODEL, "input": "a short sentence"}),
}  # fmt: skip


def ensure_litellm() -> tuple[Path | None, str]:
    return ensure_tool("litellm[proxy]", "litellm-venv", "litellm", timeout=1800)


@contextlib.contextmanager
def litellm_proxy(command: Path, standin: str, tmp: Path) -> Iterator[tuple[str, int]]:
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {standin}/v1\n      api_key: none\n"
        f"  - model_name: {EMBED_MODEL}\n    litellm_params:\n      model: openai/{EMBED_MODEL}\n"
        f"      api_base: {standin}/v1\n      api_key: none\n"
        f"general_settings:\n  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
    )
    port, log = free_port(), tmp / "litellm.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", "1"],
            stdout=output, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_live(url, process, log)
        yield url, process.pid
    finally:
        stop_session(process)


def _wait_live(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    """Poll LiteLLM's unauthenticated ``/health/liveliness`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-600:]
            raise RuntimeError(f"litellm exited with {process.returncode}: {tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"litellm not live after {timeout:.0f} s")


def latencies(paths: dict[str, tuple[str, dict[str, str]]], kind: str, rounds: int
              ) -> dict[str, list[float]]:  # fmt: skip
    route, body = BODIES[kind]
    seen: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(timeout=60) as http:
        for i in range(rounds + 3):
            for name, (base, headers) in paths.items():
                started = time.perf_counter()
                answer = http.post(base + route, json=body, headers=headers)
                spent = time.perf_counter() - started
                answer.raise_for_status()
                if i >= 3:  # the first rounds warm connections and caches
                    seen[name].append(spent)
    return seen


async def throughput(base: str, headers: dict[str, str], pid: int, clients: int,
                     seconds: float) -> tuple[float, float]:  # fmt: skip
    """(requests/s, gateway cores busy) of ``clients`` looping on chat and embeddings."""
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60, headers=headers) as http:

        async def client(i: int) -> None:
            nonlocal done
            kinds = list(BODIES.values())
            while time.monotonic() < stop:
                route, body = kinds[(i + done) % len(kinds)]
                answer = await http.post(base + route, json=body)
                answer.raise_for_status()
                done += 1

        cpu, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.monotonic() - started
        return done / elapsed, (cpu_seconds(pid) - cpu) / elapsed


TITLE = "Veil's gateway against LiteLLM's proxy, in front of the same upstream"
DESCRIPTION = (
    "Added p50 latency and requests/s per gateway core on plain chat and embeddings: LiteLLM's "
    "proxy (litellm[proxy], its own venv) and Veil's gateway (durable SQLite ledger, in front of "
    "a node), both on the stand-in for vLLM on a GPU, in one run."
)


def not_measured(report: Report, baseline: str, why: str) -> int:
    report.note(f"LiteLLM not measured: {why}")
    report.ratio("added p50 latency, Veil's gateway / LiteLLM's proxy", None, None,
                 baseline=baseline, target=("<=", LATENCY_TARGET), detail=f"not measured: {why}",
                 id="gateway_vs_litellm_latency_ratio")  # fmt: skip
    report.ratio("requests/s per gateway core, Veil's gateway / LiteLLM's proxy", None, None,
                 baseline=baseline, target=(">=", THROUGHPUT_TARGET),
                 detail=f"not measured: {why}", id="gateway_vs_litellm_throughput_ratio")  # fmt: skip
    return report.emit(ARGS.json)


ARGS = argparse.Namespace(json=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 rounds, 4 s of load")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    ARGS.json = args.json
    if args.quick:
        args.rounds, args.seconds = 30, 4.0
    report = Report("litellm", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    baseline = report.baseline(
        "LiteLLM proxy",
        "LiteLLM's proxy (litellm[proxy], master key, no spend database) in front of the same "
        "stand-in in this run; ratios = Veil / LiteLLM.",
    )
    command, origin = ensure_litellm()
    if command is None:
        return not_measured(report, baseline, origin)
    with contextlib.ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="veil-bench-lite-")))
        deployed = running.enter_context(deployment(tmp, gateway=True, tokenize=False))
        open_node, _ = running.enter_context(node_on(tmp, deployed.standin, None, "open-node"))
        try:
            lite, lite_pid = running.enter_context(litellm_proxy(command, deployed.standin, tmp))
        except (RuntimeError, OSError) as exc:
            return not_measured(report, baseline, f"the proxy did not start ({exc})"[:300])
        measured = measure(report, deployed, open_node, lite, lite_pid, args)
    veil_added, lite_added, veil_rate, lite_rate = measured
    report.ratio("added p50 latency, Veil's gateway / LiteLLM's proxy", veil_added, lite_added,
                 baseline=baseline, unit="ms", target=("<=", LATENCY_TARGET),
                 id="gateway_vs_litellm_latency_ratio",
                 detail=f"Veil {veil_added:.2f} ms, LiteLLM {lite_added:.2f} ms (chat + embeddings)")  # fmt: skip
    report.ratio("requests/s per gateway core, Veil's gateway / LiteLLM's proxy", veil_rate,
                 lite_rate, baseline=baseline, unit="req/s per core",
                 target=(">=", THROUGHPUT_TARGET), id="gateway_vs_litellm_throughput_ratio",
                 detail=f"Veil {veil_rate:.0f}, LiteLLM {lite_rate:.0f} req/s per core")  # fmt: skip
    return report.emit(args.json)


def measure(report: Report, deployed: Deployment, open_node: str, lite: str, lite_pid: int,
            args: argparse.Namespace) -> tuple[float, float, float, float]:  # fmt: skip
    assert deployed.gateway and deployed.api_key
    veil_headers = {"authorization": f"Bearer {deployed.api_key}"}
    paths = {
        "stand-in, direct (LiteLLM's baseline)": (deployed.standin, {}),
        "LiteLLM proxy": (lite, {"authorization": f"Bearer {MASTER_KEY}"}),
        "a node, direct (Veil's baseline)": (open_node, {}),
        "Veil gateway -> node": (deployed.gateway, veil_headers),
    }
    table = report.table(
        f"Latency, sequential requests, paths alternating ({args.rounds} rounds): p50 ms",
        [("path", ""), ("chat p50", ".2f"), ("embeddings p50", ".2f")],
        notes="each gateway's added latency is its p50 minus that of what it forwards to: the "
        "stand-in for LiteLLM; for Veil's gateway, a node on the same stand-in that serves "
        "without gateway tickets (the gateway's own node takes its tickets only)",
    )
    p50: dict[str, list[float]] = {name: [] for name in paths}
    for kind in BODIES:
        seen = latencies(paths, kind, args.rounds)
        for name in paths:
            p50[name].append(p_ms(seen[name], 50) or 0.0)
    for name in paths:
        table.row(name, *p50[name])
    names = list(paths)
    lite_added = (sum(p50[names[1]]) - sum(p50[names[0]])) / 2
    veil_added = (sum(p50[names[3]]) - sum(p50[names[2]])) / 2
    rates = report.table(
        f"Throughput: {args.clients} clients x {args.seconds:.0f} s, chat and embeddings mixed",
        [("gateway", ""), ("req/s", ".0f"), ("gateway cores busy", ".2f"),
         ("req/s per core", ".0f")],
    )  # fmt: skip
    per_core = {}
    for name, (base, headers), pid in (
        ("LiteLLM proxy", paths["LiteLLM proxy"], lite_pid),
        ("Veil gateway", paths["Veil gateway -> node"], deployed.pids["gateway"]),
    ):
        rate, busy = asyncio.run(throughput(base, headers, pid, args.clients, args.seconds))
        per_core[name] = rate / busy if busy else 0.0
        rates.row(name, rate, busy, per_core[name])
    return veil_added, lite_added, per_core["Veil gateway"], per_core["LiteLLM proxy"]


if __name__ == "__main__":
    raise SystemExit(main())
