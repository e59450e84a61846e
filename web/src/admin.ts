// Admin (admin API keys only): users and their limits, stacks and top-ups, nodes with their
// health and the gateway's attestation verdict on each.
import { clear, h } from "./dom";
import { ApiError, type Gateway } from "./gateway";

interface Stack { stack_small_id: number; user: string; model: string; free_units: number; used_units: number; total_units: number; state: string }
interface NodeRow { node_small_id: number; url: string; state: string; healthy: boolean; reason: string | null; key_id: string | null; models: Record<string, string>; attestation: Record<string, unknown> | null }

function form(testid: string, fields: [string, string, string][], label: string, act: (v: Record<string, string>) => Promise<string>): HTMLElement {
  const inputs = fields.map(([name, placeholder, type]) => h("input", { name, placeholder, type, testid: `${testid}-${name}`, "aria-label": placeholder }));
  const out = h("div", { class: "out" });
  const submit = async (ev: Event) => {
    ev.preventDefault();
    const values = Object.fromEntries(inputs.map((i) => [i.name, i.value.trim()]));
    try {
      clear(out, h("span", { class: "ok", testid: `${testid}-result` }, await act(values)));
    } catch (e) {
      clear(out, h("span", { class: "error", testid: `${testid}-error` }, e instanceof ApiError ? `${e.code}: ${e.message}` : String((e as Error).message)));
    }
  };
  return h("form", { class: "row", testid, onsubmit: submit }, ...inputs, h("button", { type: "submit", testid: `${testid}-submit` }, label), out);
}

const num = (s: string) => Number.parseInt(s, 10);

function verdict(a: Record<string, unknown> | null): string {
  if (a === null) return "not checked yet";
  const when = typeof a.checked_at === "number" ? ` (checked ${new Date(a.checked_at * 1000).toISOString()})` : "";
  return `${String(a.format)} ${a.ok ? "accepted" : "REFUSED"}: ${String(a.detail ?? "")}${a.release ? `; release ${String(a.release)}` : ""}${when}`;
}

export async function renderAdmin(into: HTMLElement, gw: Gateway): Promise<void> {
  let stacks: Stack[], nodes: NodeRow[];
  try {
    [{ stacks }, { nodes }] = await Promise.all([gw.json<{ stacks: Stack[] }>("GET", "/admin/stacks"), gw.json<{ nodes: NodeRow[] }>("GET", "/admin/nodes")]);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      clear(into, h("p", { class: "muted", testid: "admin-refused" }, "Admin needs an admin API key."));
      return;
    }
    throw e;
  }
  const stacksBox = h("div", {});
  const showStacks = (list: Stack[]) =>
    clear(
      stacksBox,
      h(
        "table",
        { class: "grid", testid: "admin-stacks" },
        h("thead", {}, h("tr", {}, ...["stack", "user", "model", "units left", "used", "total", "state"].map((t) => h("th", {}, t)))),
        h("tbody", {}, ...list.map((s) => h("tr", {}, ...[s.stack_small_id, s.user, s.model, s.free_units, s.used_units, s.total_units, s.state].map((c) => h("td", {}, String(c)))))),
      ),
    );
  showStacks(stacks);
  // After a change only the table is reloaded: the form's result stays on screen.
  const refresh = () => void gw.json<{ stacks: Stack[] }>("GET", "/admin/stacks").then((r) => showStacks(r.stacks), () => {});
  clear(
    into,
    h("h2", {}, "Users"),
    form("create-user", [["name", "user name", "text"], ["requests_per_minute", "requests/min (optional)", "number"], ["concurrency", "concurrency (optional)", "number"]], "Create user", async (v) => {
      const body: Record<string, unknown> = { name: v.name };
      if (v.requests_per_minute) body.requests_per_minute = num(v.requests_per_minute);
      if (v.concurrency) body.concurrency = num(v.concurrency);
      const made = await gw.json<{ user: string; api_key: string }>("POST", "/admin/users", body);
      return `created ${made.user}; API key (shown once): ${made.api_key}`;
    }),
    form("set-limits", [["name", "user name", "text"], ["requests_per_minute", "requests/min (0: default)", "number"], ["concurrency", "concurrency (0: default)", "number"]], "Set rate limits", async (v) => {
      const body: Record<string, unknown> = {};
      if (v.requests_per_minute) body.requests_per_minute = num(v.requests_per_minute);
      if (v.concurrency) body.concurrency = num(v.concurrency);
      const set = await gw.json<Record<string, unknown>>("PATCH", `/admin/users/${encodeURIComponent(v.name)}/limits`, body);
      return `limits of ${String(set.user)}: ${JSON.stringify(set)}`;
    }),
    h("h2", {}, "Stacks"),
    form("create-stack", [["user", "user", "text"], ["model", "model", "text"], ["units", "units", "number"]], "Create stack", async (v) => {
      const s = await gw.json<Stack>("POST", "/admin/stacks", { user: v.user, model: v.model, units: num(v.units) });
      refresh();
      return `stack ${s.stack_small_id}: ${s.total_units} units of ${s.model} for ${s.user}`;
    }),
    form("top-up", [["stack", "stack id", "number"], ["units", "units", "number"]], "Top up", async (v) => {
      const s = await gw.json<Stack>("POST", `/admin/stacks/${num(v.stack)}/top-up`, { units: num(v.units) });
      refresh();
      return `stack ${s.stack_small_id} now has ${s.total_units} units`;
    }),
    stacksBox,
    h("h2", {}, "Nodes"),
    h(
      "table",
      { class: "grid", testid: "admin-nodes" },
      h("thead", {}, h("tr", {}, ...["node", "url", "state", "health", "key", "models", "gateway's attestation verdict"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        ...nodes.map((n) =>
          h("tr", {}, ...[String(n.node_small_id), n.url, n.state, n.healthy ? "healthy" : `unhealthy: ${n.reason ?? ""}`, n.key_id ?? "", Object.keys(n.models).join(", "), verdict(n.attestation)].map((c) => h("td", {}, c))),
        ),
      ),
    ),
  );
}
