"""A verification as named steps: ``Step`` (one check and its outcome) and ``VerificationReport``.

Each step is pass, FAIL or "not checked" (it cannot apply to the input, e.g. the binding of a
bare quote given without keys). A report passes only if no step failed and it has steps.
Every verifier module adds its steps to a ``VerificationReport``; ``report.py`` runs them all.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Step:
    """One check. ``not_checked`` marks a step that cannot apply to the input (e.g. the key
    binding of a bare quote given without keys): it is no failure, and it is never a pass either.
    ``expected`` / ``actual`` carry the reference and the value seen, for a mismatch."""

    name: str
    ok: bool
    detail: str
    not_checked: bool = False
    expected: str | None = None
    actual: str | None = None

    @property
    def outcome(self) -> str:
        return "not checked" if self.not_checked else "pass" if self.ok else "FAIL"


@dataclass
class VerificationReport:
    subject: str
    steps: list[Step] = field(default_factory=list)
    tcb_status: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        name: str,
        ok: bool,
        detail: str,
        *,
        expected: str | None = None,
        actual: str | None = None,
    ) -> Step:
        step = Step(name, ok, detail, expected=expected, actual=actual)
        self.steps.append(step)
        return step

    def not_checked(self, name: str, detail: str) -> Step:
        """A step that cannot apply to this input; shown, never counted as a pass."""
        step = Step(name, True, detail, not_checked=True)
        self.steps.append(step)
        return step

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def failures(self) -> list[Step]:
        return [step for step in self.steps if not step.ok]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "tcb_status": self.tcb_status,
            "steps": [
                {
                    "name": s.name,
                    "outcome": s.outcome,
                    "ok": s.ok,
                    "detail": s.detail,
                    **({"expected": s.expected} if s.expected is not None else {}),
                    **({"actual": s.actual} if s.actual is not None else {}),
                }
                for s in self.steps
            ],
            "facts": self.facts,
        }

    def render(self) -> RenderableType:
        """A table of the steps, the facts worth pinning, and a one-line verdict (for rich)."""
        styles = {"pass": "green", "FAIL": "bold red", "not checked": "dim"}
        steps = Table(title=f"Attestation: {self.subject}", title_justify="left", expand=False)
        steps.add_column("step", no_wrap=True)
        steps.add_column("result", no_wrap=True)
        steps.add_column("detail", overflow="fold")
        for s in self.steps:
            detail = s.detail
            if s.expected is not None or s.actual is not None:
                detail += f"\n  expected {s.expected or '-'}\n  actual   {s.actual or '-'}"
            steps.add_row(s.name, Text(s.outcome, style=styles[s.outcome]), detail)
        parts: list[RenderableType] = [steps]
        if self.facts:
            facts = Table(show_header=False, box=None, pad_edge=False)
            facts.add_column(style="dim", no_wrap=True)
            facts.add_column(overflow="fold")
            for key, value in self.facts.items():
                shown = ", ".join(value) if isinstance(value, list) else str(value)
                facts.add_row(key, shown or "-")
            parts.append(facts)
        verdict = (
            Text("PASS: every check that applies passed", style="bold green")
            if self.ok
            else Text(f"FAIL: {', '.join(s.name for s in self.failures)}", style="bold red")
        )
        parts.append(verdict)
        return Group(*parts)

    def to_text(self) -> str:
        lines = [f"{s.name}: {s.outcome}: {s.detail}" for s in self.steps]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two byte strings (the steps compare measurements and bindings)."""
    return hmac.compare_digest(a, b)


def iso(at: datetime) -> str:
    """A verification time as the reports show it."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
