"""`veil bench` runs the checkout's benchmarks and writes the run as JSON, then the report rendered
from it; here on the crypto benchmark and the streaming one, to show the command, the runner, the
JSON and the report hold together. Timings are not asserted: only that each headline has its stable
id, was compared against a baseline measured in the same run, and came out with a verdict on its
target; and that every headline the run must report is listed by id, with no value where its
benchmark did not run (never a made-up number)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.__main__ import HEADLINE_FIELDS, REQUIRED_IDS, derive_headlines
from benchmarks.report import Report, headline_id

RUN = ("crypto", "stream_rate")
# The ratio headlines of the crypto benchmark (veil-v3 against its baselines), by id.
CRYPTO_RATIOS = (
    "v3_request_vs_atoma_v1",
    "v3_request_vs_atoma_sdk",
    "v3_chunk_vs_aes_gcm",
    "v1_request_vs_atoma_sdk",
    "atoma_sdk_chunk_open_vs_veil",
    "aes_gcm_vs_openssl",
    # the design's floors: the least work v3 requires, against the same baselines
    "v3_request_floor_vs_atoma_v1",
    "v3_request_floor_vs_atoma_sdk",
    "v3_chunk_floor_vs_aes_gcm",
)


def check_measured(headline: dict[str, Any], baselines: dict[str, str]) -> None:
    """A headline of a benchmark that ran: a value, against a same-run baseline, a verdict."""
    assert set(HEADLINE_FIELDS) <= set(headline), headline
    assert isinstance(headline["value"], int | float) and headline["value"] >= 0, headline
    assert headline["baseline"] in baselines, headline
    assert isinstance(headline["ratio"], float) and headline["ratio"] > 0, headline
    if headline["target"] is not None:
        assert headline["target"]["relation"] in ("<=", ">=", "<", "=="), headline
        assert headline["met"] is (headline["verdict"] == "met"), headline


def test_veil_bench_writes_every_headline_by_id_against_same_run_baselines(
    tmp_path: Path,
) -> None:
    report = tmp_path / "BENCHMARKS.md"
    json_out = tmp_path / "run.json"
    veil = Path(sys.executable).with_name("veil")
    only = [arg for name in RUN for arg in ("--only", name)]
    done = subprocess.run(
        [str(veil), "bench", "--quick", *only, "--out", str(report), "--json", str(json_out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(json_out.read_text())
    assert run["schema"] == "veil-benchmark-run/1" and run["quick"] is True
    assert {"CPU", "cores", "RAM", "OS", "Python", "commit"} <= set(run["machine"])
    outcomes = {o["module"]: o for o in run["benchmarks"]}
    assert set(outcomes) == set(RUN)
    documents = {name: o["document"] for name, o in outcomes.items()}
    for name, document in documents.items():
        assert outcomes[name]["returncode"] == 0 and document["ok"] is True, name
        assert document["schema"] == "veil-benchmark/1"
        assert document["machine"]["cores"] == run["machine"]["cores"]

    # Every id the run must report is in the run's list, once; those of the benchmarks that ran
    # carry a value against a baseline of their own document (measured in this run), the others
    # none at all.
    listed = {h["id"]: h for h in run["headlines"]}
    assert len(listed) == len(run["headlines"])
    assert set(REQUIRED_IDS) <= set(listed), sorted(set(REQUIRED_IDS) - set(listed))
    for id, module in REQUIRED_IDS.items():
        headline = listed[id]
        assert headline["benchmark"] == module
        if module in RUN:
            baselines = {b["id"]: b["description"] for b in documents[module]["baselines"]}
            assert all(baselines.values())
            check_measured(headline, baselines)
        else:
            assert headline["value"] is None and headline["met"] is None, headline

    crypto = documents["crypto"]
    crypto_baselines = {b["id"] for b in crypto["baselines"]}
    assert {"atoma-v1", "atoma-sdk 0.1.3", "AES-256-GCM", "openssl speed"} <= crypto_baselines
    by_id = {h["id"]: h for h in crypto["headlines"]}
    for id in CRYPTO_RATIOS:
        headline = by_id[id]
        assert headline["kind"] == "ratio" and headline["unit"] == "x", headline
        compared = headline["compared"]
        assert compared["numerator"] / compared["denominator"] == headline["value"], headline
        assert headline["ratio"] == headline["value"] and headline["target"] is not None
    assert by_id["v3_chunk_us"]["unit"] == "us" and by_id["v3_chunk_us"]["target"]["value"] == 25
    # The client's share is taken against a real model; the stand-in's (which answers at once)
    # is reported beside it, against its own baseline and without a target.
    share, standin = by_id["v3_client_crypto_share"], by_id["v3_client_crypto_share_standin"]
    assert share["unit"] == standin["unit"] == "%"
    assert share["baseline"] == "a real round trip" and share["target"] is not None
    assert standin["baseline"] == "a stand-in round trip" and standin["target"] is None
    # Neither report speaks of the suite that was deleted.
    assert "veil-v2" not in json.dumps(crypto)
    # The tables hold numbers, not text made of numbers.
    assert crypto["tables"] and all(
        isinstance(cell, float) for table in crypto["tables"] for row in table["rows"]
        for cell in row[1:]
    )  # fmt: skip

    # The Markdown report and the command's own summary are rendered from that JSON.
    text = report.read_text()
    assert text.startswith("# Benchmarks") and "## Machine" in text and "| cores |" in text
    assert "**Baseline (same run):** atoma-v1:" in text
    for id in REQUIRED_IDS:
        assert f"| `{id}` |" in text
    for headline in crypto["headlines"]:
        if headline["value"] is None:
            continue
        shown = format(headline["value"], headline["format"])
        assert f"- {headline['what']}: **{shown}" in text
        assert f"- {headline['what']}: {shown}" in done.stdout


def test_headlines_of_benchmarks_that_name_no_id_get_their_stable_ids() -> None:
    """The gateway benchmark (not built on ids) states its SQLite overhead as a headline and its
    PostgreSQL overhead only in a table: both come out under their stable ids."""
    report = Report("gateway", "t", "d", [])
    direct = report.baseline("direct to the node", "the same request straight to the node")
    overhead = report.table("p50 over direct, and where the time goes", [("ledger", ""),
                            ("request leg ms", ".1f")])  # fmt: skip
    overhead.row("SQLite", 2.5)
    overhead.row("PostgreSQL", 4.0)
    report.measure(
        "latency the gateway adds to a confidential embeddings request (p50, request leg "
        "against the same request sent to the node directly), SQLite ledger",
        2.5, "ms", baseline=direct, target=("<=", 3.0),
        compared={"numerator": 2.5, "denominator": 10.0, "unit": "ms"},
    )  # fmt: skip
    outcome: dict[str, Any] = {"module": "gateway", "document": report.document(True)}
    derive_headlines(outcome)
    by_id = {h["id"]: h for h in outcome["document"]["headlines"]}
    assert by_id["gateway_overhead_p50_ms_sqlite"]["met"] is True
    postgres = by_id["gateway_overhead_p50_ms_postgres"]
    assert postgres["value"] == 4.0 and postgres["met"] is False
    assert postgres["baseline"] == "direct to the node"
    assert headline_id("nowhere", "Some New Headline, 5x") == "nowhere_some_new_headline_5x"


def test_a_headline_without_a_value_is_not_measured_never_met() -> None:
    report = Report("litellm", "t", "d", [])
    baseline = report.baseline("LiteLLM proxy", "LiteLLM in front of the same upstream")
    headline = report.ratio(
        "added p50 latency", None, None, baseline=baseline, target=("<=", 0.5),
        id="gateway_vs_litellm_latency_ratio",
    )  # fmt: skip
    assert headline["value"] is None and headline["ratio"] is None
    assert headline["met"] is None and headline["verdict"] == "not measured"


def test_veil_bench_outside_a_checkout_says_what_it_needs(tmp_path: Path) -> None:
    from veil.bench import find_checkout

    assert find_checkout(tmp_path / "nowhere" / "bench.py") is None
    assert find_checkout() == Path(__file__).resolve().parents[1]
