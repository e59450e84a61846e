"""`veil bench` runs the checkout's benchmarks and writes the report; here on the quickest one
(crypto), to show the command, the runner and the report hold together. Timings are not asserted:
only that each comparison ran and printed a ratio against its same-run baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RATIO = r"\*\*\d+(\.\d+)?x\*\*"


def test_veil_bench_writes_a_report_with_machine_baselines_and_ratios(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    veil = Path(sys.executable).with_name("veil")
    done = subprocess.run(
        [str(veil), "bench", "--quick", "--only", "crypto", "--out", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Benchmarks")
    assert "## Machine" in text and "| cores |" in text
    assert "**Baseline (same run):**" in text
    headlines = text.split("## Headlines", 1)[1].split("\n## ", 1)[0]
    for what in (
        "veil-v2 / atoma-v1 crypto per request",
        "veil-v2 / atoma-v1 crypto per stream chunk",
        "Veil (atoma-v1) / atoma-sdk 0.1.3 crypto per 2 KiB request",
        "opening 200 B chunks, atoma-sdk's `decrypt_message` / Veil's",
        "AES-256-GCM on 1 MiB",
    ):
        line = next((ln for ln in headlines.splitlines() if what in ln), None)
        assert line is not None, f"no headline for {what!r} in:\n{headlines}"
        assert re.search(RATIO, line), line
        assert re.search(r"target [<>]= [\d.]+x: (met|NOT MET)\)", line), line
    # The command's own summary repeats the headlines on stdout.
    assert "veil-v2 / atoma-v1 crypto per request" in done.stdout


def test_veil_bench_outside_a_checkout_says_what_it_needs(tmp_path: Path) -> None:
    from veil.bench import find_checkout

    assert find_checkout(tmp_path / "nowhere" / "bench.py") is None
    assert find_checkout() == Path(__file__).resolve().parents[1]
