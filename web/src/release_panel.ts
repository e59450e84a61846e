// The Attestation panel's release section: the user's trusted Ed25519 release keys (localStorage
// "veil.release_keys": the trust anchor is the user's, never the gateway's or the node's) and an
// optionally loaded release (its manifest and signature document as exact bytes, localStorage
// "veil.release"), re-verified on every lock: a stored verdict is never trusted.
import { clear, h } from "./dom";
import { decodeLoaded, encodeLoaded, type ReleaseConfig } from "./references";
import { parseKeys, ReleaseError, verifyRelease } from "./release";

const KEYS_STORAGE = "veil.release_keys";
const RELEASE_STORAGE = "veil.release";

/** The release configuration the evidence checks use; bad stored keys fail closed (no key). */
export function releaseConfig(): ReleaseConfig {
  let keys: Uint8Array[] = [];
  try {
    keys = parseKeys(localStorage.getItem(KEYS_STORAGE) ?? "");
  } catch {
    keys = [];
  }
  return { keys, loaded: decodeLoaded(localStorage.getItem(RELEASE_STORAGE)) };
}

async function fileBytes(input: HTMLInputElement): Promise<Uint8Array | null> {
  const file = input.files?.[0];
  return file ? new Uint8Array(await file.arrayBuffer()) : null;
}

async function describeCurrent(out: HTMLElement): Promise<void> {
  const config = releaseConfig();
  if (!config.loaded) {
    clear(out, h("span", { class: "muted" }, config.keys.length ? `no release loaded; ${config.keys.length} trusted key(s): a node must show a release signed by one of them` : "no release key configured: measurements come from the pins alone"));
    return;
  }
  try {
    const v = await verifyRelease(config.loaded.manifest, config.loaded.signature, config.keys);
    const m = v.manifest;
    clear(out, h("span", { class: "ok" }, `VERIFIED release ${m.release} (manifest sha256 ${v.digest}) signed by ${v.signer}: ${m.tdx.length} TDX, ${m.sev_snp.length} SEV-SNP, ${m.gpu.length} GPU set(s)${m.created_at ? `, created ${m.created_at}` : ""}`));
  } catch (e) {
    clear(out, h("span", { class: "error" }, `REFUSED: ${e instanceof ReleaseError ? e.reason : String(e)}`));
  }
}

export function releaseEditor(): HTMLElement {
  const manifest = h("input", { type: "file", testid: "release-manifest", accept: ".json,application/json", "aria-label": "release manifest" });
  const signature = h("input", { type: "file", testid: "release-signature", accept: ".json,.sig,application/json", "aria-label": "release signature" });
  const keys = h("textarea", { rows: 2, testid: "release-keys", spellcheck: "false", placeholder: "base64 of a 32-byte Ed25519 release key, one per line" });
  keys.value = localStorage.getItem(KEYS_STORAGE) ?? "";
  const out = h("p", { testid: "release-verdict" });
  const load = async () => {
    try {
      parseKeys(keys.value);
    } catch (e) {
      clear(out, h("span", { class: "error" }, `REFUSED: ${(e as Error).message}`));
      return;
    }
    localStorage.setItem(KEYS_STORAGE, keys.value.trim());
    const m = await fileBytes(manifest), s = await fileBytes(signature);
    if (m === null && s === null) {
      localStorage.removeItem(RELEASE_STORAGE);
      return describeCurrent(out);
    }
    if (m === null || s === null) {
      localStorage.removeItem(RELEASE_STORAGE);
      clear(out, h("span", { class: "error" }, "REFUSED: a release needs both its manifest and its signature document; no release is loaded"));
      return;
    }
    try {
      await verifyRelease(m, s, parseKeys(keys.value));
      localStorage.setItem(RELEASE_STORAGE, encodeLoaded(m, s));
      await describeCurrent(out);
    } catch (e) {
      localStorage.removeItem(RELEASE_STORAGE);
      clear(out, h("span", { class: "error" }, `REFUSED: ${e instanceof ReleaseError ? e.reason : String(e)}; no release is loaded`));
    }
  };
  const forget = () => {
    localStorage.removeItem(RELEASE_STORAGE);
    void describeCurrent(out);
  };
  void describeCurrent(out);
  return h(
    "div",
    {},
    h("h2", {}, "Signed release"),
    h("p", { class: "muted" }, "Trust a release instead of (or as well as) pins: a node is then accepted only if its measurements are in one of the release's sets, narrowed by any pin. The release must be signed by one of your own Ed25519 release keys (`veil release keygen` / `veil release sign`); Sigstore releases are verified with `veil attest verify`."),
    h("label", {}, "Manifest ", manifest),
    h("label", {}, " Signature ", signature),
    h("label", {}, "Trusted release keys ", keys),
    h("button", { type: "button", testid: "load-release", onclick: () => void load() }, "Load release"),
    h("button", { type: "button", testid: "forget-release", onclick: forget }, "Forget release"),
    out,
  );
}
