// The attestation panel: every verification step of the last lock, pass / fail, and the verdict.
import type { Report } from "./attest";
import { clear, h } from "./dom";

export function verdictText(report: Report): string {
  if (!report.ok) {
    const failed = report.steps.filter((s) => !s.ok).map((s) => s.name);
    return `REFUSED: ${report.format} evidence failed ${failed.join(", ")}; nothing was sealed or sent`;
  }
  if (report.insecure) return "NO TEE: development node, accepted for this session only";
  return `VERIFIED: ${report.format} evidence, every step passed`;
}

export function renderReport(into: HTMLElement, report: Report | null): void {
  if (report === null) {
    clear(into, h("p", { class: "muted", testid: "attestation-verdict" }, "No node checked yet: the first request locks a node and verifies its evidence here."));
    return;
  }
  const cls = !report.ok ? "verdict bad" : report.insecure ? "verdict warn" : "verdict good";
  const rows = report.steps.map((s) =>
    h(
      "tr",
      { class: s.notChecked ? "nc" : s.ok ? "pass" : "fail", testid: `step-${s.name.replace(/\s+/g, "-")}` },
      h("td", {}, s.name),
      h("td", { class: "outcome" }, s.notChecked ? "not checked" : s.ok ? "pass" : "FAIL"),
      h("td", {}, s.detail),
    ),
  );
  const facts = Object.entries(report.facts).map(([k, v]) => h("li", {}, `${k}: ${v}`));
  clear(
    into,
    h("p", { class: cls, testid: "attestation-verdict" }, verdictText(report)),
    h("table", { class: "steps" }, h("thead", {}, h("tr", {}, h("th", {}, "step"), h("th", {}, "outcome"), h("th", {}, "detail"))), h("tbody", {}, ...rows)),
    facts.length ? h("ul", { class: "facts" }, ...facts) : null,
  );
}
