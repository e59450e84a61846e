"""Run every benchmark and write the report: ``python -m benchmarks [--quick] [--out PATH]``.

Each benchmark runs as its own process (``python -m benchmarks.NAME --json FILE``, quick arguments
with ``--quick``) and writes its run as one JSON document (``benchmarks/report.py``). This runner
gathers them, with what it saw of each process (command, seconds, exit status, the end of its error
output, the load average when it started), into one JSON document for the whole run (default
``docs/BENCHMARKS.json``, beside the Markdown report), and renders the report (default
``docs/BENCHMARKS.md``) and the headlines it prints from that document alone. The run's
``headlines`` list every headline by its stable id as ``{"benchmark", "id", "value", "unit",
"baseline", "ratio", "target", "met", ...}``, and every id of ``REQUIRED_IDS`` is in it: with no
value and ``met`` null where its benchmark did not run, failed or could not measure it. A
benchmark that fails is reported as failed and the others still run. Exits 1 if any benchmark
exited non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import (
    MET,
    NOT_MEASURED,
    headline_text,
    machine,
    render_markdown,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "BENCHMARKS.md"
BENCH_TIMEOUT = 3600.0  # per benchmark; the load benchmark at full size takes a few minutes
RUN_SCHEMA = "veil-benchmark-run/1"
HEADLINE_FIELDS = ("id", "value", "unit", "baseline", "ratio", "target", "met")


@dataclass(frozen=True)
class Benchmark:
    module: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]


BENCHMARKS = (
    Benchmark("crypto", (), ("--iterations", "100", "--rounds", "5")),
    Benchmark("node_overhead", (), ("--quick",)),
    Benchmark("client", (), ("--rounds", "3")),
    Benchmark("gateway", (), ("--quick",)),
    Benchmark("ledger", (), ("--quick",)),
    Benchmark("load", (), ("--quick",)),
    Benchmark("ratelimit", (), ("--requests", "100", "--rounds", "3")),
    Benchmark("stream_rate", (), ("--quick",)),
    Benchmark("litellm", (), ("--quick",)),
)

# The headlines every full run reports, by stable id, and the benchmark that measures each: the
# run's JSON lists all of them (``headlines``), with no value where its benchmark did not run.
REQUIRED_IDS: dict[str, str] = {
    "v3_request_vs_atoma_v1": "crypto",
    "v3_request_vs_atoma_sdk": "crypto",
    "v3_chunk_us": "crypto",
    "v3_chunk_vs_aes_gcm": "crypto",
    "v3_client_crypto_share": "crypto",
    "v3_request_floor_vs_atoma_v1": "crypto",
    "v3_request_floor_vs_atoma_sdk": "crypto",
    "v3_chunk_floor_vs_aes_gcm": "crypto",
    "gateway_overhead_p50_ms_sqlite": "gateway",
    "gateway_overhead_p50_ms_postgres": "gateway",
    "gateway_vs_litellm_latency_ratio": "litellm",
    "gateway_vs_litellm_throughput_ratio": "litellm",
    "stream_confidential_vs_plain_1000": "stream_rate",
    "stream_confidential_vs_plain_5000": "stream_rate",
    "stream_gateway_peak_rss_mb": "stream_rate",
    "stream_node_peak_rss_mb": "stream_rate",
}


def run(benchmark: Benchmark, quick: bool, scratch: Path) -> dict[str, Any]:
    """One benchmark in its own process: what the runner saw, and the document it wrote."""
    args = [*(benchmark.quick_args if quick else benchmark.args)]
    result = scratch / f"{benchmark.module}.json"
    command = [sys.executable, "-m", f"benchmarks.{benchmark.module}", *args, "--json", str(result)]
    shown = " ".join(["python", "-m", f"benchmarks.{benchmark.module}", *args])
    print(f"running: {shown}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT, check=False
        )
        stderr, code = done.stderr, done.returncode
    except subprocess.TimeoutExpired:
        stderr, code = f"timed out after {BENCH_TIMEOUT:.0f} s", -1
    seconds = time.monotonic() - started
    print(f"  exit {code} after {seconds:.0f} s", file=sys.stderr, flush=True)
    document: dict[str, Any] | None = None
    if result.exists():
        try:
            document = json.loads(result.read_text())
        except ValueError:
            stderr += "\n(the benchmark's JSON document did not parse)"
    return {
        "module": benchmark.module,
        "command": shown,
        "seconds": round(seconds, 1),
        "returncode": code,
        "load_before": round(load_before, 2),
        "stderr_tail": stderr[-3000:] if code != 0 or document is None else "",
        "document": document,
    }


def derive_headlines(outcome: dict[str, Any]) -> None:
    """Headlines a benchmark's own output holds but does not state as one (kept from its tables,
    never re-measured): the gateway benchmark states the overhead of its first ledger only; the
    others' are in its overhead table's rows."""
    document = outcome["document"]
    if outcome["module"] != "gateway" or not document:
        return
    have = {h["id"] for h in document["headlines"]}
    first = next((h for h in document["headlines"] if h["id"].startswith("gateway_overhead")), None)
    table = next((t for t in document["tables"] if t["title"].startswith("p50 over direct")), None)
    if first is None or table is None:
        return
    for row in table["rows"]:
        label, value = str(row[0]), row[1]
        suffix = {"SQLite": "sqlite", "PostgreSQL": "postgres"}.get(label)
        if suffix is None or f"gateway_overhead_p50_ms_{suffix}" in have:
            continue
        target = first["target"]
        decided = verdict(value, first["format"], target)
        document["headlines"].append({
            **first, "id": f"gateway_overhead_p50_ms_{suffix}", "value": value,
            "what": first["what"].replace(first["what"].rsplit(", ", 1)[-1], f"{label} ledger"),
            "verdict": decided, "met": None if decided in (None, NOT_MEASURED) else decided == MET,
            "ratio": None, "compared": None, "detail": "from the benchmark's overhead table",
        })  # fmt: skip


def run_headlines(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every headline of the run by id, each with the benchmark that measured it; every required
    id is there, with no value (``met`` null) where its benchmark did not run or failed."""
    found: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for headline in (outcome["document"] or {}).get("headlines", []):
            found[headline["id"]] = {
                "benchmark": outcome["module"],
                **{k: headline.get(k) for k in HEADLINE_FIELDS},
                "what": headline["what"],
                "verdict": headline["verdict"],
            }
    ran = {o["module"] for o in outcomes if o["document"]}
    for id, module in REQUIRED_IDS.items():
        if id not in found:
            why = "not in this run" if module not in ran else "the benchmark did not report it"
            found[id] = {"benchmark": module, "id": id, "value": None, "unit": None,
                         "baseline": None, "ratio": None, "target": None, "met": None,
                         "what": id, "verdict": why}  # fmt: skip
    return list(found.values())


def run_document(
    outcomes: list[dict[str, Any]], quick: bool, when: datetime.datetime
) -> dict[str, Any]:
    for outcome in outcomes:
        derive_headlines(outcome)
    return {
        "schema": RUN_SCHEMA,
        "generated_at": when.isoformat(timespec="seconds"),
        "quick": quick,
        "seconds": round(sum(o["seconds"] for o in outcomes), 1),
        "machine": machine(),
        "headlines": run_headlines(outcomes),
        "benchmarks": outcomes,
    }


def headlines(outcome: dict[str, Any], bold: bool = False) -> list[str]:
    document = outcome["document"]
    lines = [headline_text(h, bold) for h in document["headlines"]] if document else []
    if outcome["returncode"] != 0:
        failed = f"`benchmarks/{outcome['module']}.py` FAILED (exit {outcome['returncode']})"
        lines.insert(0, failed)
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, ".0f" if abs(value) >= 100 else ".3g")
    return str(value)


def id_table(rows: list[dict[str, Any]]) -> list[str]:
    """The run's headlines by stable id (``BENCHMARKS.json``'s ``headlines``)."""
    out = [
        "**Headlines by id** (as in `BENCHMARKS.json`; `met` is blank where nothing was measured)",
        "",
        "| id | benchmark | value | unit | baseline (same run) | ratio | target | met |",
        "|---|---|---:|---|---|---:|---|---|",
    ]
    for row in rows:
        target = row["target"]
        goal = f"{target['relation']} {target['value']:g}" if target else "-"
        met = {True: "yes", False: "**no**", None: row.get("verdict") or "-"}[row["met"]]
        out.append(
            f"| `{row['id']}` | {row['benchmark']} | {_cell(row['value'])} | {row['unit'] or '-'} "
            f"| {row['baseline'] or '-'} | {_cell(row['ratio'])} | {goal} | {met} |"
        )
    return out


def render(run: dict[str, Any]) -> str:
    """``docs/BENCHMARKS.md`` from the run's JSON document."""
    quick = run["quick"]
    mode = (
        "**quick mode** (`--quick`: fewer iterations, 8 clients x 10 s of load)"
        if quick
        else "full mode (each benchmark's defaults: 64 clients x 60 s of load)"
    )
    when = datetime.datetime.fromisoformat(run["generated_at"])
    cores = int(run["machine"]["cores"]) if run["machine"]["cores"].isdigit() else 1
    outcomes = run["benchmarks"]
    # Only the first start says whether *other* work was running: later load averages include the
    # previous benchmarks' own processes (a 1-minute average decays slowly).
    before = outcomes[0]["load_before"] if outcomes else 0.0
    busy = (
        f" **Other work was running on this machine when the run started** (1-minute load "
        f"average {before:.1f} on {cores} cores): absolute times are inflated and the ratios "
        "noisier than on an idle machine."
        if before > cores / 2
        else f" The machine was otherwise idle when the run started (1-minute load average "
        f"{before:.2f} on {cores} cores); the load average given for each later benchmark "
        "includes the tail of the benchmarks before it."
    )
    out = [
        "# Benchmarks",
        "",
        f"Generated by `python -m benchmarks{' --quick' if quick else ''}` (or `veil bench`) on "
        f"{when:%Y-%m-%d %H:%M} UTC in {mode}; the whole run took {run['seconds'] / 60:.1f} "
        "minutes. Rendered from the run's JSON document (`BENCHMARKS.json` beside this file): do "
        "not edit by hand, rerun to refresh. Every ratio compares two things measured in the same "
        f"run on the same machine.{busy}",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in run["machine"].items()],
        "",
        "Everything ran on this one machine over loopback: the clients, the gateways, the nodes, "
        "PostgreSQL, Redis and the models (SmolLM2-135M-Instruct Q4_1 on llama.cpp, "
        "all-MiniLM-L6-v2 on CPU torch). There is no TEE and no GPU here, so these numbers say "
        "how Veil's own work (crypto, routing, ledger) compares with its baselines, not how fast "
        "a production deployment is (see `docs/SCALING.md`). The vLLM stand-in "
        "(`benchmarks/upstream_standin.py`) stands in for a GPU server that cannot run here.",
        "",
        "## Headlines",
        "",
    ]
    for outcome in outcomes:
        out += [f"- {line}" for line in headlines(outcome, bold=True)]
    out += ["", *id_table(run.get("headlines", []))]
    for number, outcome in enumerate(outcomes, 1):
        document = outcome["document"]
        title = document["title"] if document else outcome["module"]
        out += [
            "",
            f"## {number}. {title} (`benchmarks/{outcome['module']}.py`)",
            "",
            f"- **Command:** `{outcome['command']}` - {outcome['seconds']:.0f} s, exit "
            f"{outcome['returncode']}",
            f"- **Date:** {when:%Y-%m-%d} - **machine:** as above; 1-minute load average when it "
            f"started: {outcome['load_before']:.2f} on {cores} cores",
        ]
        if document:
            out += render_markdown(document)
        if outcome["stderr_tail"]:
            out += ["", "Error output (end):", "", "```text", outcome["stderr_tail"].strip(), "```"]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run every benchmark and write the report."
    )
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick arguments")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown report")
    parser.add_argument(
        "--json", type=Path, default=None, help="the run's JSON (default: --out with .json)"
    )
    parser.add_argument(
        "--only", action="append", choices=[b.module for b in BENCHMARKS], help="repeatable"
    )
    args = parser.parse_args(argv)
    json_out: Path = args.json or args.out.with_suffix(".json")
    when = datetime.datetime.now(datetime.UTC)
    chosen = [b for b in BENCHMARKS if not args.only or b.module in args.only]
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as scratch:
        outcomes = [run(benchmark, args.quick, Path(scratch)) for benchmark in chosen]
    document = run_document(outcomes, args.quick, when)
    for path in (args.out, json_out):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(document, indent=2) + "\n")
    args.out.write_text(render(json.loads(json_out.read_text())))  # from the JSON, as written
    print(f"wrote {json_out} and {args.out}", file=sys.stderr)
    for outcome in document["benchmarks"]:
        for line in headlines(outcome):
            print(f"- {line}")
    return 0 if all(o["returncode"] == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
