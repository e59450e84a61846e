"""One benchmark run as one JSON document, and the human report rendered from it.

A benchmark builds a :class:`Report` as it measures: the baselines it compares against (measured in
the same run), its tables of measurements, and its headlines, each a value (most often a ratio
against a baseline) with a target and the verdict on it. ``Report.emit`` writes the document as
JSON (``--json PATH``) and prints the text report rendered from that same document, so what a
person reads and what a program reads cannot disagree. The document::

    {"schema": "veil-benchmark/1", "benchmark", "title", "description", "arguments",
     "started_at", "seconds", "machine": {...}, "baselines": [{"id", "description"}],
     "headlines": [{"id", "what", "kind", "value", "unit", "format", "baseline", "ratio",
                    "target", "met", "verdict", "compared", "detail"}],
     "tables": [{"title", "columns": [{"name", "format"}], "rows": [[cell, ...]], "notes"}],
     "notes": [...], "failures": {label: count}, "ok": bool}

``id`` is stable across runs (``veil bench --json`` and tests key on it; a headline that names
none gets one from ``KNOWN_IDS`` or a slug of its text). ``kind`` is ``"ratio"`` (``value`` =
measured / baseline, unit ``x``) or ``"measure"``; ``baseline`` is the id of the same-run baseline
it is compared with; ``ratio`` is the value for a ratio, and for a measure with ``compared`` its
numerator / denominator (else null). A target is ``{"relation": "<=" | ">=" | "<" | "==",
"value"}``; the verdict is ``"met"``, ``"NOT MET"``, ``"not measured"`` (a target but no value:
never a made-up number) or null (no target), and ``met`` the same as true / false / null. Verdicts
are decided on the value as displayed, so the printed figure and the verdict always agree.
"""

from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "veil-benchmark/1"
Relation = Literal["<=", ">=", "<", "=="]
RELATIONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    "==": operator.eq,
}
MET, NOT_MET, NOT_MEASURED = "met", "NOT MET", "not measured"
Cell = float | int | str | None


def machine() -> dict[str, str]:
    """The machine the numbers come from, and the commit they measure."""
    cpu = ram = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "GPU / TEE": "none / none (CPU only; attestation 'none')",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "commit": git_revision(),
    }


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if dirty else head


def shown(value: float, fmt: str) -> float:
    """``value`` as it is displayed with ``fmt``: what a verdict is decided on."""
    return float(format(value, fmt))


# Headlines of benchmarks that name no id themselves: (benchmark, text the ``what`` starts with,
# text it ends with, id). Their ``what`` strings are these modules' own; keep the two in step.
KNOWN_IDS: tuple[tuple[str, str, str, str], ...] = (
    ("gateway", "latency the gateway adds", "SQLite ledger", "gateway_overhead_p50_ms_sqlite"),
    ("gateway", "latency the gateway adds", "PostgreSQL ledger",
     "gateway_overhead_p50_ms_postgres"),
    ("gateway", "p99 latency the gateway adds", "SQLite ledger", "gateway_overhead_p99_ms_sqlite"),
    ("gateway", "p99 latency the gateway adds", "PostgreSQL ledger",
     "gateway_overhead_p99_ms_postgres"),
    ("gateway", "lock + request through the gateway", "PostgreSQL / SQLite",
     "gateway_throughput_postgres_vs_sqlite"),
    ("gateway", "gateway memory", "", "gateway_rss_mb"),
    ("gateway", "ledgers that balance", "", "gateway_ledgers_balanced"),
    ("client", "opening a 500-chunk stream", "", "client_stream_open_vs_atoma_sdk"),
    ("client", "client crypto as a share", "", "client_crypto_share_pct"),
    ("node_overhead", "node, embeddings p50 latency, confidential atoma-v1", "",
     "node_embeddings_p50_atoma_v1_vs_plain"),
    ("node_overhead", "node, embeddings p50 latency, confidential veil-v3", "",
     "node_embeddings_p50_v3_vs_plain"),
    ("node_overhead", "node, streamed chat tokens/s, confidential atoma-v1", "",
     "node_stream_tokens_atoma_v1_vs_plain"),
    ("node_overhead", "node, streamed chat tokens/s, confidential veil-v3", "",
     "node_stream_tokens_v3_vs_plain"),
    ("node_overhead", "node RSS", "", "node_rss_mb"),
    ("ledger", "ledger reserve + settle", "", "ledger_postgres_vs_sqlite"),
    ("ledger", "ledger overspend", "", "ledger_overspend_units"),
    ("load", "load, `veil serve`", "", "load_serve_rps"),
    ("load", "load, 2 gateways", "", "load_cluster_vs_serve"),
    ("load", "ledger setups that balance", "", "load_ledgers_balanced"),
    ("ratelimit", "rate limiter in process", "", "ratelimit_in_process_vs_unlimited"),
    ("ratelimit", "rate limiter on Redis", "", "ratelimit_redis_vs_unlimited"),
)  # fmt: skip


def headline_id(benchmark: str, what: str) -> str:
    """The stable id of a headline that names none: from ``KNOWN_IDS``, else a slug of ``what``."""
    for name, start, end, known in KNOWN_IDS:
        if name == benchmark and what.startswith(start) and what.endswith(end):
            return known
    slug = re.sub(r"[^a-z0-9]+", "_", what.lower()).strip("_")
    return f"{benchmark}_{slug}"[:80]


def verdict(value: float | None, fmt: str, target: dict[str, Any] | None) -> str | None:
    if target is None:
        return None
    if value is None:
        return NOT_MEASURED
    ok = RELATIONS[target["relation"]](shown(value, fmt), float(target["value"]))
    return MET if ok else NOT_MET


class Table:
    """Rows of measurements under named columns; numbers are kept as numbers."""

    def __init__(self, title: str, columns: Sequence[tuple[str, str]], notes: str = "") -> None:
        self.title = title
        self.columns = [{"name": name, "format": fmt} for name, fmt in columns]
        self.rows: list[list[Cell]] = []
        self.notes = notes

    def row(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def document(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
        }


class Report:
    def __init__(self, benchmark: str, title: str, description: str, arguments: Sequence[str]):
        self.benchmark = benchmark
        self.title = title
        self.description = description
        # The arguments that shape the run (where its JSON goes does not).
        kept = list(arguments)
        if "--json" in kept:
            at = kept.index("--json")
            del kept[at : at + 2]
        self.arguments = kept
        self.started_at = datetime.datetime.now(datetime.UTC)
        self._started = time.monotonic()
        self.baselines: list[dict[str, str]] = []
        self.headlines: list[dict[str, Any]] = []
        self.tables: list[Table] = []
        self.notes: list[str] = []
        self.failures: dict[str, int] = {}

    def baseline(self, id: str, description: str) -> str:
        self.baselines.append({"id": id, "description": description})
        return id

    def table(self, title: str, columns: Sequence[tuple[str, str]], notes: str = "") -> Table:
        table = Table(title, columns, notes)
        self.tables.append(table)
        return table

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, label: str, count: int = 1) -> None:
        self.failures[label] = self.failures.get(label, 0) + count

    def ratio(
        self,
        what: str,
        numerator: float | None,
        denominator: float | None,
        *,
        baseline: str,
        unit: str = "",
        target: tuple[Relation, float] | None = None,
        fmt: str = ".2f",
        detail: str = "",
        id: str | None = None,
    ) -> dict[str, Any]:
        """A headline ``numerator / denominator`` (in ``x``), one side of it being the same-run
        baseline ``baseline``; ``what`` says which way round (``unit``: the two sides' unit)."""
        value = numerator / denominator if numerator is not None and denominator else None
        compared = {"numerator": numerator, "denominator": denominator, "unit": unit}
        return self._headline(
            what, "ratio", value, "x", fmt, baseline, target, detail, compared, id
        )

    def measure(
        self,
        what: str,
        value: float | None,
        unit: str,
        *,
        baseline: str | None = None,
        target: tuple[Relation, float] | None = None,
        fmt: str = ".1f",
        detail: str = "",
        id: str | None = None,
        compared: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A headline that is a measured value (a latency, a rate, a size) rather than a ratio;
        ``compared`` (``numerator``, ``denominator``, ``unit``) gives it a ratio to its baseline."""
        return self._headline(
            what, "measure", value, unit, fmt, baseline, target, detail, compared, id
        )

    def _headline(
        self,
        what: str,
        kind: str,
        value: float | None,
        unit: str,
        fmt: str,
        baseline: str | None,
        target: tuple[Relation, float] | None,
        detail: str,
        compared: dict[str, Any] | None,
        id: str | None,
    ) -> dict[str, Any]:
        if baseline is not None and baseline not in {b["id"] for b in self.baselines}:
            raise ValueError(f"headline {what!r} names an unknown baseline {baseline!r}")
        stable = id or headline_id(self.benchmark, what)
        if stable in {h["id"] for h in self.headlines}:
            raise ValueError(f"headline id {stable!r} used twice")
        goal = None if target is None else {"relation": target[0], "value": target[1]}
        decided = verdict(value, fmt, goal)
        ratio: float | None = value if kind == "ratio" else None
        if kind == "measure" and compared is not None:
            top, bottom = compared.get("numerator"), compared.get("denominator")
            ratio = top / bottom if top is not None and bottom else None
        headline = {
            "id": stable,
            "what": what,
            "kind": kind,
            "value": value,
            "unit": unit,
            "format": fmt,
            "baseline": baseline,
            "ratio": ratio,
            "target": goal,
            "met": None if decided in (None, NOT_MEASURED) else decided == MET,
            "verdict": decided,
            "compared": compared,
            "detail": detail,
        }
        self.headlines.append(headline)
        return headline

    def document(self, ok: bool) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "title": self.title,
            "description": self.description,
            "arguments": self.arguments,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self._started, 1),
            "machine": machine(),
            "baselines": self.baselines,
            "headlines": self.headlines,
            "tables": [t.document() for t in self.tables],
            "notes": self.notes,
            "failures": self.failures,
            "ok": ok and not self.failures,
        }

    def emit(self, json_path: Path | None, ok: bool = True) -> int:
        """Write the JSON document (if asked), print the text rendered from it; the exit code."""
        document = self.document(ok)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(document, indent=2) + "\n")
        sys.stdout.write(render_text(document))
        sys.stdout.flush()
        return 0 if document["ok"] else 1


# --- rendering ---------------------------------------------------------------------------------


def cell_text(cell: Cell, fmt: str) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, int | float) and not isinstance(cell, bool) and fmt:
        return format(cell, fmt)
    return str(cell)


def headline_text(headline: dict[str, Any], bold: bool = False) -> str:
    """One line: what, the value, the target and the verdict, then any detail."""
    value = headline["value"]
    unit = headline["unit"]
    joined = unit if unit in ("x", "%") else f" {unit}" if unit else ""
    figure = "n/a" if value is None else f"{format(value, headline['format'])}{joined}"
    line = f"{headline['what']}: {f'**{figure}**' if bold else figure}"
    extra = [headline["detail"]] if headline["detail"] else []
    target = headline["target"]
    if target is not None:
        extra.append(
            f"target {target['relation']} {target['value']:g}{joined}: {headline['verdict']}"
        )
    return line + (f" ({'; '.join(extra)})" if extra else "")


def _grid(table: dict[str, Any]) -> list[list[str]]:
    formats = [c["format"] for c in table["columns"]]
    return [[c["name"] for c in table["columns"]]] + [
        [cell_text(cell, fmt) for cell, fmt in zip(row, formats, strict=True)]
        for row in table["rows"]
    ]


def table_text(table: dict[str, Any]) -> list[str]:
    grid = _grid(table)
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [table["title"], ""]
    if table["notes"]:
        lines[1:1] = [table["notes"]]
    lines += [line(grid[0]), "-" * len(line(grid[0])), *(line(row) for row in grid[1:])]
    return lines


def table_markdown(table: dict[str, Any]) -> list[str]:
    grid = _grid(table)
    out = [f"**{table['title']}**", ""]
    if table["notes"]:
        out += [table["notes"], ""]
    out.append("| " + " | ".join(grid[0]) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(grid[0]) - 1)) + "|")
    out += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return out


def render_text(document: dict[str, Any]) -> str:
    out = [document["title"], "", document["description"], ""]
    for baseline in document["baselines"]:
        out.append(f"baseline {baseline['id']}: {baseline['description']}")
    for table in document["tables"]:
        out += ["", *table_text(table)]
    if document["notes"]:
        out += ["", *document["notes"]]
    if document["failures"]:
        out += ["", "Failures:"] + [f"  {k} x{v}" for k, v in sorted(document["failures"].items())]
    out += ["", "Headlines", ""] + [f"- {headline_text(h)}" for h in document["headlines"]]
    return "\n".join(out) + "\n"


def render_markdown(document: dict[str, Any]) -> list[str]:
    """The body of one benchmark's section in ``docs/BENCHMARKS.md`` (its heading excluded)."""
    out = [f"- **Measures:** {document['description']}"]
    out += [
        f"- **Baseline (same run):** {b['id']}: {b['description']}" for b in document["baselines"]
    ]
    out.append("")
    for table in document["tables"]:
        out += [*table_markdown(table), ""]
    out += [f"- {note}" for note in document["notes"]]
    if document["failures"]:
        out += [
            "",
            "Failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(document["failures"].items())),
        ]
    return out
