// Veil's console: sign in, chat and embeddings sealed in this page (veil-v3), the node's
// attestation verified here before anything is sealed, usage, and admin for admin keys.
import "./style.css";
import type { Report, Step } from "./attest";
import type { ReleaseRefs } from "./references";
import { clear, h } from "./dom";
import { AttestationFailed, confidential, UnverifiableNode, type Receipt } from "./flow";
import { ApiError, Gateway, storedKey, storeKey, Unreachable } from "./gateway";
import { renderMarkdown } from "./markdown";
import { renderReport } from "./trust";
import { renderUsage } from "./usage";
import { renderAdmin } from "./admin";
import { IntegrityError } from "./v3";
import { checkTdx, MEASUREMENTS, type Pins } from "./tdx";
import { checkSnp, type SnpPins } from "./snp";
import { checkGpus, type GpuPins } from "./gpu";
import { extraPinProblem } from "./pins";
import { checkRelease } from "./references";
import { releaseConfig, releaseEditor } from "./release_panel";

const NO_TEE_STORAGE = "veil.allow_no_tee";
const app = document.getElementById("app") as HTMLElement;
const base = (document.querySelector('meta[name="veil-gateway"]') as HTMLMetaElement | null)?.content ?? "";

interface Turn { role: "user" | "assistant"; content: string }
const state = {
  gw: null as Gateway | null,
  models: [] as { id: string; kind: string }[],
  conversation: [] as Turn[], // kept in this page only
  report: null as Report | null,
  abort: null as AbortController | null,
};

const PINS_STORAGE = "veil.pins";
const allowNoTee = () => sessionStorage.getItem(NO_TEE_STORAGE) === "1";

/** The measurements this browser pins (not secret: kept in localStorage). */
function loadPins(): Pins {
  try {
    return JSON.parse(localStorage.getItem(PINS_STORAGE) ?? "{}") as Pins;
  } catch {
    return {};
  }
}

const trustHooks = () => ({
  allowNoTee: allowNoTee(),
  checkRelease: (evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>) => checkRelease(evidence, releaseConfig(), steps, facts),
  verifyTdx: (quote: Uint8Array, evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => checkTdx(quote, evidence, steps, { pins: loadPins(), facts, release }),
  verifySnp: (report: Uint8Array, evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => checkSnp(report, evidence, steps, { pins: loadPins() as SnpPins, facts, release }),
  verifyGpus: (gpus: unknown[], nonce: Uint8Array, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => checkGpus(gpus, nonce, steps, { pins: loadPins() as GpuPins, facts, release }),
  onAttestation: (r: Report) => {
    state.report = r;
  },
});

function pinsEditor(): HTMLElement {
  const area = h("textarea", { rows: 4, testid: "pins", spellcheck: "false" });
  area.value = JSON.stringify(loadPins(), null, 1);
  const out = h("span", {});
  const save = () => {
    try {
      const pins = JSON.parse(area.value || "{}") as Record<string, unknown>;
      for (const [k, v] of Object.entries(pins)) {
        const extra = extraPinProblem(k, v);
        if (extra) throw new Error(extra);
        if (extra === undefined && (!(MEASUREMENTS as readonly string[]).includes(k) || typeof v !== "string" || !/^[0-9a-f]{96}$/i.test(v))) throw new Error(`${k}: expected one of ${MEASUREMENTS.join(", ")} with 48 bytes of hex (or snp_measurement, snp_min_tcb, gpu_driver_versions, gpu_vbios_versions)`);
      }
      localStorage.setItem(PINS_STORAGE, JSON.stringify(pins));
      clear(out, h("span", { class: "ok" }, "saved: nodes must match these"));
    } catch (e) {
      clear(out, h("span", { class: "error" }, String((e as Error).message)));
    }
  };
  return h("div", {}, h("h2", {}, "Pinned measurements"), h("p", { class: "muted" }, "Strict means pinned: a TDX node is accepted only if its MRTD and RTMRs equal these, an SEV-SNP node only if its measurement is snp_measurement (and its TCB meets snp_min_tcb), a GPU only if its driver and VBIOS are among gpu_driver_versions and gpu_vbios_versions (JSON, hex)."), area, h("button", { type: "button", testid: "save-pins", onclick: save }, "Save pins"), out);
}

/** An error as the user can act on it; integrity failures name the check and show no text. */
function explain(e: unknown): { testid: string; text: string } {
  if (e instanceof IntegrityError) return { testid: "integrity-error", text: `Integrity check failed (${e.check}): ${e.message}. The answer was discarded; nothing from the failed chunk is shown.` };
  if (e instanceof AttestationFailed) return { testid: "attestation-error", text: `Attestation refused: ${e.message}.` };
  if (e instanceof UnverifiableNode) return { testid: "attestation-error", text: `Node refused: ${e.message}.` };
  if (e instanceof Unreachable) return { testid: "unreachable-error", text: `Unreachable: ${e.message}. Check your connection and the gateway URL.` };
  if (e instanceof ApiError) {
    if (e.status === 402) return { testid: "balance-error", text: `Stack exhausted: ${e.message}. See Usage for the units left on each stack; an admin can top it up.` };
    if (e.status === 429) return { testid: "rate-limit-error", text: `Rate limited: ${e.message}.${e.retryAfter !== null ? ` Retry in ${e.retryAfter} s.` : ""}` };
    if (e.status === 401) return { testid: "auth-error", text: `Not signed in: ${e.message}. Sign in again with a valid API key.` };
    if (e.status === 503 || e.status === 502) return { testid: "unreachable-error", text: `Node unreachable or failing (${e.code}): ${e.message}. Try again in a moment.` };
    return { testid: "api-error", text: `${e.code}: ${e.message}` };
  }
  if ((e as Error)?.name === "AbortError") return { testid: "stopped", text: "Stopped." };
  return { testid: "api-error", text: String((e as Error)?.message ?? e) };
}

function errorBox(e: unknown): HTMLElement {
  const { testid, text } = explain(e);
  return h("div", { class: testid === "stopped" ? "note" : "error", role: "alert", testid }, text);
}

function signIn(): void {
  const input = h("input", { type: "password", autocomplete: "off", placeholder: "veil_…", testid: "api-key", "aria-label": "API key" });
  const status = h("div", {});
  const submit = async (ev: Event) => {
    ev.preventDefault();
    const gw = new Gateway(base, input.value.trim());
    try {
      await gw.json("GET", "/v1/stacks"); // checks the key
      storeKey(input.value.trim());
      await start(gw);
    } catch (e) {
      clear(status, errorBox(e));
    }
  };
  clear(
    app,
    h(
      "form",
      { class: "signin", onsubmit: submit },
      h("h1", {}, "Veil console"),
      h("p", {}, "Your prompts are sealed in this page to an attested node; the gateway only sees ciphertext. The API key stays in this tab (sessionStorage) and is sent only as the bearer header."),
      h("label", {}, "API key ", input),
      h("button", { type: "submit", testid: "sign-in" }, "Sign in"),
      status,
    ),
  );
}

async function start(gw: Gateway): Promise<void> {
  state.gw = gw;
  const models = await gw.json<{ data: { id: string; kind: string }[] }>("GET", "/v1/models");
  state.models = models.data;
  const views: Record<string, HTMLElement> = { chat: chatView(), embeddings: embedView(), attestation: h("section", { id: "attestation" }), usage: h("section", { id: "usage" }), admin: h("section", { id: "admin" }) };
  const main = h("main", {});
  const show = async (name: string) => {
    for (const b of nav.querySelectorAll("button")) b.classList.toggle("active", b.dataset.view === name);
    clear(main, views[name]);
    try {
      if (name === "attestation") {
        renderReport(views.attestation, state.report);
        views.attestation.append(pinsEditor(), releaseEditor());
      }
      if (name === "usage") await renderUsage(views.usage, gw);
      if (name === "admin") await renderAdmin(views.admin, gw);
    } catch (e) {
      clear(views[name], errorBox(e));
    }
  };
  const nav = h(
    "nav",
    {},
    ...Object.keys(views).map((v) => h("button", { type: "button", "data-view": v, testid: `nav-${v}`, onclick: () => void show(v) }, v[0].toUpperCase() + v.slice(1))),
    h("button", { type: "button", class: "signout", testid: "sign-out", onclick: () => { storeKey(null); state.conversation = []; signIn(); } }, "Sign out"),
  );
  clear(app, h("header", {}, h("strong", {}, "Veil"), nav), trustBar(), main);
  await show("chat");
}

function trustBar(): HTMLElement {
  const box = h("input", { type: "checkbox", testid: "allow-no-tee", checked: allowNoTee() });
  box.addEventListener("change", () => sessionStorage.setItem(NO_TEE_STORAGE, box.checked ? "1" : "0"));
  return h(
    "div",
    { class: "trust" },
    h("label", { class: "danger" }, box, " Development node: no TEE. I accept that nothing protects my prompt on a node whose evidence says \u201cnone\u201d (this session only)."),
  );
}

function modelPicker(kind: string, testid: string): HTMLSelectElement {
  const options = state.models.filter((m) => m.kind === kind || (kind === "chat" && !m.kind));
  return h("select", { testid, "aria-label": "model" }, ...options.map((m) => h("option", { value: m.id }, m.id)));
}

function receiptBlock(receipt: Receipt): HTMLElement {
  const pre = h("pre", { testid: "receipt", hidden: true }, JSON.stringify(receipt, null, 1));
  const u = receipt.usage;
  const summary = `${u ? `${u.prompt_tokens}+${u.completion_tokens} tokens` : "no usage"} · node key ${receipt.node_key_id} · ${receipt.attestation.insecure ? "NO TEE" : receipt.attestation.format} · signature ${receipt.signature_verified ? "verified" : "MISSING"} · ${receipt.chunks_verified} chunk(s) verified`;
  return h("div", { class: "receipt" }, h("button", { type: "button", class: "link", testid: "show-receipt", onclick: () => { pre.hidden = !pre.hidden; } }, "Receipt"), h("span", { class: "muted" }, ` ${summary}`), pre);
}

function chatView(): HTMLElement {
  const model = modelPicker("chat", "model");
  const prompt = h("textarea", { rows: 4, testid: "prompt", placeholder: "Ask something. It is sealed here, before it leaves the page." });
  const maxTokens = h("input", { type: "number", min: 1, max: 4096, value: 128, testid: "max-tokens", "aria-label": "max tokens" });
  const log = h("div", { class: "conversation" });
  const status = h("div", {});
  const send = h("button", { type: "submit", testid: "send" }, "Send");
  const stop = h("button", { type: "button", testid: "stop", disabled: true, onclick: () => state.abort?.abort() }, "Stop");
  const submit = async (ev: Event) => {
    ev.preventDefault();
    const text = prompt.value.trim();
    if (!text || !state.gw) return;
    clear(status);
    for (const old of log.querySelectorAll("[data-testid=answer]")) old.removeAttribute("data-testid");
    log.append(h("div", { class: "turn user" }, text));
    const answer = h("div", { class: "turn assistant markdown", testid: "answer", "aria-live": "polite" });
    log.append(answer);
    const messages = [...state.conversation, { role: "user" as const, content: text }];
    let content = "";
    state.abort = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    try {
      const { receipt } = await confidential(state.gw, "chat", { model: model.value, messages, stream: true, max_tokens: Number(maxTokens.value) || 128 }, {
        ...trustHooks(),
        signal: state.abort.signal,
        onChunk: (chunk) => {
          const delta = ((chunk.choices as Record<string, unknown>[])?.[0]?.delta as Record<string, unknown>) ?? {};
          if (typeof delta.content === "string") content += delta.content;
          renderMarkdown(answer, content);
        },
      });
      answer.dataset.verified = "true";
      state.conversation = [...messages, { role: "assistant", content }];
      prompt.value = "";
      log.append(receiptBlock(receipt));
    } catch (e) {
      answer.replaceChildren(); // nothing of an answer that failed a check stays on screen
      answer.dataset.verified = "false";
      clear(status, errorBox(e));
      if ((e as Error)?.name === "AbortError" && content) {
        renderMarkdown(answer, content);
        answer.append(h("p", { class: "muted" }, "(stopped: this partial answer was never signed by the node)"));
      }
    } finally {
      send.disabled = false;
      stop.disabled = true;
      state.abort = null;
    }
  };
  return h(
    "section",
    { id: "chat" },
    log,
    h("form", { class: "composer", onsubmit: submit }, h("div", { class: "row" }, h("label", {}, "Model ", model), h("label", {}, "Max tokens ", maxTokens), h("button", { type: "button", testid: "new-chat", onclick: () => { state.conversation = []; clear(log); clear(status); } }, "New chat")), prompt, h("div", { class: "row" }, send, stop)),
    status,
  );
}

function embedView(): HTMLElement {
  const model = modelPicker("embeddings", "embed-model");
  const input = h("textarea", { rows: 3, testid: "embed-input", placeholder: "Text to embed (sealed like a prompt)" });
  const out = h("div", {});
  const submit = async (ev: Event) => {
    ev.preventDefault();
    if (!state.gw || !input.value.trim()) return;
    clear(out, h("p", { class: "muted" }, "Sealing and sending…"));
    try {
      const { document, receipt } = await confidential(state.gw, "embeddings", { model: model.value, input: [input.value] }, trustHooks());
      const data = (document.data as { embedding: number[] }[]) ?? [];
      const vector = data[0]?.embedding ?? [];
      clear(out, h("p", { testid: "embed-result", "data-dimensions": vector.length }, `${vector.length} dimensions: [${vector.slice(0, 6).map((x) => x.toFixed(4)).join(", ")}, …]`), receiptBlock(receipt));
    } catch (e) {
      clear(out, errorBox(e));
    }
  };
  return h("section", { id: "embeddings" }, h("form", { onsubmit: submit }, h("label", {}, "Model ", model), input, h("button", { type: "submit", testid: "embed-send" }, "Embed")), out);
}

const key = storedKey();
if (key) start(new Gateway(base, key)).catch(() => signIn());
else signIn();
