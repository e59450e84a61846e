"""`veil bench` runs the checkout's benchmarks and writes the run as JSON, then the report rendered
from it; here on the quickest one (crypto), to show the command, the runner, the JSON and the report
hold together. Timings are not asserted: only that each comparison ran against its same-run
baseline and came out as a ratio with a verdict on its target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEADLINES = (
    "veil-v2 / atoma-v1 crypto per request",
    "veil-v2 / atoma-v1 crypto per stream chunk",
    "Veil (atoma-v1) / atoma-sdk 0.1.3 crypto per 2 KiB request",
    "opening 200 B chunks, atoma-sdk's `decrypt_message` / Veil's",
    "AES-256-GCM on 1 MiB, Veil's calls / `openssl speed`",
)


def test_veil_bench_writes_json_with_machine_baselines_and_a_verdict_per_headline(
    tmp_path: Path,
) -> None:
    report = tmp_path / "BENCHMARKS.md"
    veil = Path(sys.executable).with_name("veil")
    done = subprocess.run(
        [str(veil), "bench", "--quick", "--only", "crypto", "--out", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(report.with_suffix(".json").read_text())
    assert run["schema"] == "veil-benchmark-run/1" and run["quick"] is True
    assert {"CPU", "cores", "RAM", "OS", "Python", "commit"} <= set(run["machine"])
    [outcome] = run["benchmarks"]
    assert outcome["module"] == "crypto" and outcome["returncode"] == 0
    document = outcome["document"]
    assert document["schema"] == "veil-benchmark/1" and document["ok"] is True
    assert document["machine"]["cores"] == run["machine"]["cores"]
    baselines = {b["id"]: b["description"] for b in document["baselines"]}
    assert {"atoma-v1", "atoma-sdk 0.1.3", "openssl speed"} <= set(baselines)
    assert all(baselines.values())
    headlines = {h["what"]: h for h in document["headlines"]}
    assert set(HEADLINES) <= set(headlines), sorted(headlines)
    for what in HEADLINES:
        headline = headlines[what]
        assert headline["kind"] == "ratio" and headline["unit"] == "x", headline
        assert headline["baseline"] in baselines, headline
        assert isinstance(headline["value"], float) and headline["value"] > 0, headline
        compared = headline["compared"]
        assert compared["numerator"] / compared["denominator"] == headline["value"], headline
        assert headline["target"]["relation"] in ("<=", ">="), headline
        assert headline["verdict"] in ("met", "NOT MET"), headline
    # The tables hold numbers, not text made of numbers.
    assert document["tables"] and all(
        isinstance(cell, float) for table in document["tables"] for row in table["rows"]
        for cell in row[1:]
    )  # fmt: skip
    # The Markdown report and the command's own summary are rendered from that JSON.
    text = report.read_text()
    assert text.startswith("# Benchmarks") and "## Machine" in text and "| cores |" in text
    assert "**Baseline (same run):** atoma-v1:" in text
    for what in HEADLINES:
        headline = headlines[what]
        shown = f"{format(headline['value'], headline['format'])}x"
        assert f"- {what}: **{shown}** (target " in text
        assert f"- {what}: {shown} (target " in done.stdout


def test_veil_bench_outside_a_checkout_says_what_it_needs(tmp_path: Path) -> None:
    from veil.bench import find_checkout

    assert find_checkout(tmp_path / "nowhere" / "bench.py") is None
    assert find_checkout() == Path(__file__).resolve().parents[1]
