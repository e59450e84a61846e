// Usage: the caller's stacks with units left, units charged per day, receipts as JSON.
import { clear, h, svg } from "./dom";
import { attestedNodes } from "./flow";
import type { Gateway } from "./gateway";

interface Stack { stack_small_id: number; model: string; total_units: number; used_units: number; reserved_units: number; free_units: number; state: string }
interface UsageRow { id: number; time: number; model: string; charged_units: number; [k: string]: unknown }

async function allUsage(gw: Gateway): Promise<{ user: string; usage: UsageRow[] }> {
  const rows: UsageRow[] = [];
  let after = 0;
  let user = "";
  for (let page = 0; page < 50; page++) {
    const doc = await gw.json<{ user: string; usage: UsageRow[]; next_after: number | null }>("GET", `/v1/usage?limit=1000&after=${after}`);
    user = doc.user;
    rows.push(...doc.usage);
    if (doc.next_after === null) break;
    after = doc.next_after;
  }
  return { user, usage: rows };
}

export function perDay(rows: UsageRow[]): [string, number][] {
  const days = new Map<string, number>();
  for (const r of rows) {
    const day = new Date(r.time * 1000).toISOString().slice(0, 10);
    days.set(day, (days.get(day) ?? 0) + r.charged_units);
  }
  return [...days.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
}

function chart(days: [string, number][]): SVGElement {
  const width = 640, height = 200, pad = 36;
  const max = Math.max(1, ...days.map(([, n]) => n));
  const bar = days.length ? (width - 2 * pad) / days.length : 0;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "data-testid": "usage-chart", "aria-label": "units used per day" });
  root.append(svg("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: "axis" }));
  root.append(svg("text", { x: 2, y: pad - 8, class: "label" }, `${max} units`));
  days.forEach(([day, n], i) => {
    const barHeight = ((height - 2 * pad) * n) / max;
    const x = pad + i * bar + 4;
    const rect = svg("rect", { x, y: height - pad - barHeight, width: Math.max(2, bar - 8), height: barHeight, class: "bar", "data-day": day, "data-units": n });
    rect.append(svg("title", {}, `${day}: ${n} units`));
    root.append(rect, svg("text", { x, y: height - pad + 14, class: "label" }, day.slice(5)), svg("text", { x, y: height - pad - barHeight - 4, class: "label" }, String(n)));
  });
  if (!days.length) root.append(svg("text", { x: width / 2 - 60, y: height / 2, class: "label" }, "no charges yet"));
  return root;
}

export async function renderUsage(into: HTMLElement, gw: Gateway): Promise<void> {
  clear(into, h("p", { class: "muted" }, "Loading usage…"));
  const [{ stacks }, usage] = await Promise.all([gw.json<{ stacks: Stack[] }>("GET", "/v1/stacks"), allUsage(gw)]);
  const total = usage.usage.reduce((n, r) => n + r.charged_units, 0);
  const download = () => {
    const document = { ...usage, stacks, attested_nodes: attestedNodes };
    const blob = new Blob([JSON.stringify(document, null, 1)], { type: "application/json" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `veil-usage-${usage.user}.json` });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  clear(
    into,
    h("h2", {}, "Stacks"),
    h(
      "table",
      { class: "grid", testid: "stacks" },
      h("thead", {}, h("tr", {}, ...["stack", "model", "units left", "used", "reserved", "total", "state"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...stacks.map((s) =>
          h("tr", {}, h("td", {}, String(s.stack_small_id)), h("td", {}, s.model), h("td", { class: "num", testid: `units-left-${s.stack_small_id}` }, String(s.free_units)), h("td", { class: "num" }, String(s.used_units)), h("td", { class: "num" }, String(s.reserved_units)), h("td", { class: "num" }, String(s.total_units)), h("td", {}, s.state)),
        ),
      ),
    ),
    h("h2", {}, "Units used per day"),
    chart(perDay(usage.usage)),
    h("p", { testid: "usage-total" }, `${usage.usage.length} charged request(s), ${total} units in all.`),
    h("button", { type: "button", testid: "download-receipts", onclick: download }, "Download receipts (JSON, for veil usage --verify)"),
  );
}
