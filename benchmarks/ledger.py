"""The ledger under contention, measured: ``python -m benchmarks.ledger [--quick]``.

``veil.gateway.ledger.Ledger`` itself, in this process, with no gateway or HTTP in front: on SQLite
(a file in a temporary directory) and on PostgreSQL (a fresh database, created here and dropped
afterwards), one after the other, the same workload on each. The baseline is SQLite, measured in
the same run: the ratio printed is PostgreSQL ops/s / SQLite ops/s.

The workload: 64 concurrent asyncio tasks, each looping for T seconds

    reserve(random 1..256 units; on a named stack, or without one: the ledger's best fit)
    -> settle(a random part of the reservation: 0..units; 1 cycle in 16 asks for more than was
       reserved, which the ledger must cap at the reservation)

on four stacks shared by all tasks (one user, one model): three roomy ones (10^12 units, never
short) and one tight one that always has only 1,024 units not yet spent (each settle on it is
followed by a top-up of what it charged), so the tasks racing for it are often refused for lack of
units (``BalanceError``): the guarded ``UPDATE`` is what decides who gets the last units. An
ops/s figure counts completed reserve + settle cycles; calls/s counts every ledger call (refused
reserves and top-ups included). Latencies are per call.

Checked after each run, for every stack: ``used <= total`` and ``reserved + used <= total``,
``reserved == 0``, ``used ==`` the sum of what ``settle`` returned as charged for it (and each
settle charged exactly ``min(asked, reserved)``), ``total ==`` its initial units + the top-ups, and
``Ledger.reconcile()`` clean. **Overspend** (units charged beyond a stack's total, plus units
charged beyond what was settled) **must be 0**. Unexpected exceptions (anything but a refusal)
count as failures too.

Defaults: 20 s per database (under a minute in all); ``--quick``: 5 s. ``--json PATH`` writes the
run as JSON; the printed report is rendered from it. Exits 0 when the benchmark
ran and every check passed, 1 on any overspend, unbalanced stack, failed check or unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import fresh_postgres_database, postgres_admin_url, postgres_url_setting

from benchmarks.confidential import p_ms
from benchmarks.report import Report
from veil.gateway.ledger import Ledger, Reservation
from veil.wire.errors import VeilError

TASKS = 64
MODEL = "bench-model"
ROOMY_STACKS = 3
ROOMY_UNITS = 10**12
TIGHT_UNITS = 1_024  # units the tight stack has not yet spent, kept constant by top-ups
MAX_UNITS = 256  # largest reservation
OVERCHARGE_EVERY = 16  # one settle in this many asks for more than was reserved
TTL_SECONDS = 600.0  # nothing expires during a run: every reservation is settled by its task
WARMUP_SECONDS = 1.0
SEED = 20250601
STRAGGLER_SECONDS = 120.0  # how long past its end a phase (or the checks) may run at most


@dataclass
class Phase:
    """Counters of one timed phase."""

    cycles: int = 0
    calls: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    reserve_s: list[float] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ops(self) -> float:
        return self.cycles / self.elapsed if self.elapsed else 0.0

    @property
    def call_rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


@dataclass
class Books:
    """What the tasks did to each stack, warm-up included (for the checks afterwards)."""

    initial: dict[int, int] = field(default_factory=dict)
    settled: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    topped_up: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    mischarged: int = 0  # settles that did not charge exactly min(asked, reserved)
    errors: Counter[str] = field(default_factory=Counter)  # unexpected exceptions, by type
    first_error: dict[str, str] = field(default_factory=dict)


class RetryCounter(logging.Handler):
    """Counts the ledger's "transaction retried" log records (PostgreSQL deadlocks and
    serialization failures it retried)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retried" in record.getMessage():
            self.retries += 1


@dataclass(frozen=True)
class Setup:
    user_id: int
    node: int
    roomy: tuple[int, ...]
    tight: int

    @property
    def stacks(self) -> tuple[int, ...]:
        return (*self.roomy, self.tight)


async def prepare(ledger: Ledger, books: Books) -> Setup:
    user, _ = await ledger.create_user("ledger-bench")  # the API key is not needed: dropped
    node = await ledger.node_small_id("http://127.0.0.1:9/bench-node")
    roomy = []
    for _ in range(ROOMY_STACKS):
        stack = await ledger.create_stack(user.name, MODEL, ROOMY_UNITS)
        roomy.append(stack.id)
        books.initial[stack.id] = ROOMY_UNITS
    tight = await ledger.create_stack(user.name, MODEL, TIGHT_UNITS)
    books.initial[tight.id] = TIGHT_UNITS
    return Setup(user.id, node, tuple(roomy), tight.id)


def _unexpected(books: Books, exc: BaseException) -> None:
    name = type(exc).__name__
    books.errors[name] += 1
    books.first_error.setdefault(name, str(exc).splitlines()[0][:300] if str(exc) else name)


async def one_cycle(
    ledger: Ledger, setup: Setup, books: Books, phase: Phase, rng: random.Random
) -> None:
    choice = rng.randrange(len(setup.stacks) + 1)
    stack_id = setup.stacks[choice] if choice < len(setup.stacks) else None  # else best fit
    units = rng.randint(1, MAX_UNITS)
    begun = time.perf_counter()
    phase.calls += 1
    try:
        held: Reservation = await ledger.reserve(
            setup.user_id,
            MODEL,
            units,
            node_small_id=setup.node,
            ttl_seconds=TTL_SECONDS,
            stack_id=stack_id,
        )
    except VeilError as exc:  # a refusal: BALANCE_ERROR expected on the tight stack
        phase.refusals[exc.code] += 1
        return
    except Exception as exc:
        _unexpected(books, exc)
        return
    reserved_at = time.perf_counter()
    phase.reserve_s.append(reserved_at - begun)
    if rng.randrange(OVERCHARGE_EVERY) == 0:
        asked = units + rng.randint(1, MAX_UNITS)
    else:
        asked = rng.randint(0, units)
    phase.calls += 1
    try:
        done = await ledger.settle(held.id, asked, prompt_tokens=asked)
    except Exception as exc:
        _unexpected(books, exc)
        return
    phase.settle_s.append(time.perf_counter() - reserved_at)
    charged = int(done.charged_units or 0)
    if done.state != "settled" or charged != min(asked, units):
        books.mischarged += 1
    books.settled[done.stack_id] += charged
    phase.cycles += 1
    if done.stack_id == setup.tight and charged:
        phase.calls += 1
        try:  # keep the tight stack tight: give back as many units as were just spent
            await ledger.top_up(setup.tight, charged)
            books.topped_up[setup.tight] += charged
        except Exception as exc:
            _unexpected(books, exc)


async def run_phase(ledger: Ledger, setup: Setup, books: Books, seconds: float, seed: int) -> Phase:
    phase = Phase()
    deadline = time.perf_counter() + seconds

    async def task(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.perf_counter() < deadline:
            await one_cycle(ledger, setup, books, phase, rng)

    started = time.perf_counter()
    async with asyncio.timeout(seconds + STRAGGLER_SECONDS):  # a hung database ends the run
        await asyncio.gather(*(task(i) for i in range(TASKS)))
    phase.elapsed = time.perf_counter() - started
    return phase


# -- the checks afterwards --------------------------------------------------------------------


@dataclass
class StackCheck:
    id: int
    total: int
    expected_total: int
    reserved: int
    used: int
    settled: int

    @property
    def overspend(self) -> int:
        return max(0, self.used + self.reserved - self.total) + max(0, self.used - self.settled)

    @property
    def ok(self) -> bool:
        return (
            self.used <= self.total
            and self.reserved + self.used <= self.total
            and self.reserved == 0
            and self.used == self.settled
            and self.total == self.expected_total
        )


@dataclass
class Result:
    label: str
    phase: Phase
    books: Books
    stacks: list[StackCheck]
    problems: list[str]
    retries: int

    @property
    def overspend(self) -> int:
        return sum(s.overspend for s in self.stacks)

    @property
    def failed(self) -> bool:
        return (
            bool(self.problems or self.books.errors or self.books.mischarged)
            or self.overspend > 0
            or not all(s.ok for s in self.stacks)
        )


async def check(ledger: Ledger, setup: Setup, books: Books) -> tuple[list[StackCheck], list[str]]:
    checks = []
    for stack_id in setup.stacks:
        stack = await ledger.get_stack(stack_id)
        checks.append(
            StackCheck(
                id=stack_id,
                total=stack.total_units,
                expected_total=books.initial[stack_id] + books.topped_up[stack_id],
                reserved=stack.reserved_units,
                used=stack.used_units,
                settled=books.settled[stack_id],
            )
        )
    return checks, await ledger.reconcile()


async def bench(label: str, database_url: str, seconds: float, counter: RetryCounter) -> Result:
    ledger = await Ledger.open(database_url)
    try:
        books = Books()
        setup = await prepare(ledger, books)
        await run_phase(ledger, setup, books, WARMUP_SECONDS, SEED)  # connections, caches
        counter.retries = 0
        phase = await run_phase(ledger, setup, books, seconds, SEED + 1)
        retries = counter.retries
        async with asyncio.timeout(STRAGGLER_SECONDS):
            stacks, problems = await check(ledger, setup, books)
        return Result(label, phase, books, stacks, problems, retries)
    finally:
        await ledger.close()


# -- the report --------------------------------------------------------------------------------

TITLE = "Ledger: reserve + settle under contention, SQLite against PostgreSQL"
DESCRIPTION = (
    f"`Ledger` itself in one process: {TASKS} asyncio tasks looping reserve -> settle (a random "
    "part of the reservation; some ask for more, which must be capped) for T seconds on 4 shared "
    "stacks, one kept so tight that reservations are refused for lack of units; ops/s, latency "
    "per call, refusals by error, and every stack checked afterwards (overspend, nothing "
    "reserved, used == settled, reconcile clean)."
)


def report_ledger(report: Report, results: list[Result], seconds: float) -> None:
    sqlite = report.baseline(
        "SQLite",
        "SQLite (a file) measured in the same run with the same workload and seeds. Ratio = "
        "PostgreSQL ops/s / SQLite ops/s (above 1 means PostgreSQL is faster).",
    )
    runs = report.table(
        f"{TASKS} asyncio tasks x {seconds:.0f} s per database",
        [("database", ""), ("cycles", "d"), ("ops/s", ".0f"), ("calls/s", ".0f"),
         ("reserve p50 ms", ".1f"), ("reserve p95 ms", ".1f"), ("settle p50 ms", ".1f"),
         ("settle p95 ms", ".1f"), ("retried", "d"), ("refused", "")],
        notes=f"Each task loops reserve (1..{MAX_UNITS} units, on a named stack or best fit) -> "
        f"settle (a random part; 1 in {OVERCHARGE_EVERY} asks for more than reserved and must be "
        f"capped). Stacks: {ROOMY_STACKS} roomy ({ROOMY_UNITS:.0e} units), 1 tight (always "
        f"{TIGHT_UNITS} units unspent: topped up by what each settle on it charged). ops/s = "
        "completed reserve+settle cycles per second; calls/s = every ledger call (refused reserves "
        "and top-ups included); retried = transactions the ledger ran again after a PostgreSQL "
        "deadlock or serialization failure.",
    )  # fmt: skip
    for r in results:
        p = r.phase
        refused = ", ".join(f"{c} x{n}" for c, n in sorted(p.refusals.items())) or "none"
        runs.row(r.label, p.cycles, p.ops, p.call_rate, p_ms(p.reserve_s, 50),
                 p_ms(p.reserve_s, 95), p_ms(p.settle_s, 50), p_ms(p.settle_s, 95), r.retries,
                 refused)  # fmt: skip
    stacks = report.table(
        "Every stack after the run (warm-up included)",
        [("database", ""), ("stack", "d"), ("total", "d"), ("used", "d"), ("reserved", "d"),
         ("settled sum", "d"), ("overspend", "d"), ("ok", "")],
    )  # fmt: skip
    for r in results:
        for s in r.stacks:
            stacks.row(r.label, s.id, s.total, s.used, s.reserved, s.settled, s.overspend,
                       "yes" if s.ok else "NO")  # fmt: skip
    for r in results:
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(r.books.errors.items())) or "none"
        reconcile = "clean" if not r.problems else f"{len(r.problems)} problem(s)"
        report.note(
            f"{r.label}: reconcile(): {reconcile}; settles charging other than min(asked, "
            f"reserved): {r.books.mischarged}; unexpected errors: {errors}"
        )
        for problem in r.problems[:5]:
            report.note(f"{r.label}: {problem}")
        for name, message in sorted(r.books.first_error.items()):
            report.note(f"{r.label}: first {name}: {message}")
        for name, count in r.books.errors.items():
            report.fail(f"{r.label}: {name}", count)

    rates = {r.label: r.phase.ops for r in results}
    if "SQLite" in rates and "PostgreSQL" in rates:
        report.ratio(
            f"ledger reserve + settle, {TASKS} concurrent tasks, PostgreSQL / SQLite ops/s",
            rates["PostgreSQL"], rates["SQLite"], baseline=sqlite, unit="ops/s",
            detail=f"SQLite {rates['SQLite']:.0f} ops/s, PostgreSQL {rates['PostgreSQL']:.0f} ops/s",
        )  # fmt: skip
    failed = [r.label for r in results if r.failed]
    detail = ", ".join(f"{r.label} {r.overspend}" for r in results)
    checks = "passed" if not failed else "FAILED on " + ", ".join(failed)
    report.measure(
        "ledger overspend under contention", sum(r.overspend for r in results), "units",
        fmt="d", target=("==", 0), detail=f"{detail}; every other stack check: {checks}",
    )  # fmt: skip


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: the database is dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ledger",
        description="The Ledger under 64 concurrent tasks, on SQLite and PostgreSQL.",
    )
    parser.add_argument("--quick", action="store_true", help="5 s per database")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per database")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    parser.add_argument(
        "--postgres-url",
        default=postgres_url_setting(),
        help="a database on the server where this creates (and drops) its own database",
    )
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    if seconds <= 0:
        parser.error("--seconds must be positive")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    report = Report("ledger", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    counter = RetryCounter()
    ledger_log = logging.getLogger("veil.gateway.ledger")
    ledger_log.addHandler(counter)
    ledger_log.setLevel(logging.INFO)
    ledger_log.propagate = False  # counted, not printed

    results: list[Result] = []
    if args.only in (None, "sqlite"):
        print("SQLite...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="veil-bench-ledger-") as scratch:
            url = f"sqlite+aiosqlite:///{Path(scratch) / 'ledger.db'}"
            results.append(asyncio.run(bench("SQLite", url, seconds, counter)))
    if args.only in (None, "postgresql"):
        print("PostgreSQL...", file=sys.stderr, flush=True)
        admin = postgres_admin_url(args.postgres_url)
        with fresh_postgres_database(admin, "veil_ledger_") as url:
            results.append(asyncio.run(bench("PostgreSQL", url, seconds, counter)))
    report_ledger(report, results, seconds)
    return report.emit(args.json, ok=not any(r.failed for r in results))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
