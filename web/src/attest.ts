// The node's evidence, checked in the page before anything is sealed: the same steps, names and
// formulas as veil.attestation.report.verify_evidence, for the formats the page can verify.
//   release       a signed release (references.ts, release.ts), when the user configured a release
//                 key: its measurement sets join the pins in the steps below
//   format        a CPU TEE the page verifies; "none" only with the session's explicit
//                 "development node: no TEE" acknowledgement (the client's insecure_no_tee)
//   quote         TDX: the quote's signatures and collateral (tdx.ts, dcap-qvl in WebAssembly)
//   SNP steps     SEV-SNP: VCEK signature, VCEK <- ASK <- AMD's pinned ARK, VCEK extensions,
//                 guest policy, TCB minimums, measurement pinned (snp.ts, WebCrypto + PKI.js)
//   GPU steps     each GPU: SPDM signature, device chain to NVIDIA's pinned root, FWID, nonce =
//                 gpu_nonce, RIMs (XML-DSig, versions, measurements), OCSP replies, versions
//                 pinned (gpu.ts, rim.ts, ocsp.ts)
//   binding       report_data = SHA-512("veil-v2 report" || x25519 || ed25519 || gpu_digest ||
//                 nonce), or with a post-quantum key SHA-512("veil-v3 report" || x25519 ||
//                 ed25519 || SHA-256(kem_public_key) || gpu_digest || nonce), computed here
//   expected keys the evidence's keys are the lock's, the post-quantum key included
//   nonce         the evidence answers the page's own fresh nonce

import { concat, fromB64, same, sha256, sha512, toHex, utf8 } from "./bytes";
import { gpuNonce } from "./gpu";
import type { ReleaseRefs } from "./references";

export interface Step {
  name: string;
  ok: boolean;
  detail: string;
  notChecked?: boolean;
}

export interface Report {
  format: string;
  ok: boolean;
  insecure: boolean;
  steps: Step[];
  facts: Record<string, string>;
}

export interface Expected {
  x25519: Uint8Array;
  ed25519: Uint8Array;
  kem: Uint8Array | null;
  nonce: Uint8Array;
}

export interface Options {
  allowNoTee: boolean;
  /** Verifies a TDX quote (tdx.ts); returns the report_data it signs, adding its own steps. */
  verifyTdx?: (quote: Uint8Array, evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => Promise<Uint8Array | null>;
  /** Verifies an SEV-SNP report (snp.ts); returns the report_data it signs, adding its own steps. */
  verifySnp?: (report: Uint8Array, evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => Promise<Uint8Array | null>;
  /** Verifies the bundle's GPU reports against gpu_nonce (gpu.ts), adding their steps. */
  verifyGpus?: (gpus: unknown[], gpuNonce: Uint8Array, steps: Step[], facts: Record<string, string>, release: ReleaseRefs | null) => Promise<void>;
  /** Step "release" (references.checkRelease with the user's release keys); null: pins alone. */
  checkRelease?: (evidence: Record<string, unknown>, steps: Step[], facts: Record<string, string>) => Promise<ReleaseRefs | null>;
}

const V2_LABEL = utf8.encode("veil-v2 report");
const V3_LABEL = utf8.encode("veil-v3 report");
const GPUS_LABEL = utf8.encode("veil gpus");
const KEM_SIZE = 1184 + 32;

function bytesOf(doc: Record<string, unknown>, name: string, low: number, high = low): Uint8Array {
  const raw = fromB64(doc[name]);
  if (raw.length < low || raw.length > high) throw new Error(`${name} must be ${low === high ? low : `${low} to ${high}`} bytes`);
  return raw;
}

function be32(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n);
  return out;
}

async function gpuDigest(gpus: unknown[]): Promise<Uint8Array> {
  const parts: Uint8Array[] = [GPUS_LABEL];
  for (const gpu of gpus) {
    const g = gpu as Record<string, unknown>;
    const report = fromB64(g.report);
    const chain = utf8.encode(String(g.cert_chain ?? ""));
    parts.push(be32(report.length), report, be32(chain.length), chain);
  }
  return sha256(concat(...parts));
}

/** The 64 bytes an honest bundle's report_data holds (evidence.py's formula). */
export async function expectedReportData(
  x25519: Uint8Array,
  ed25519: Uint8Array,
  nonce: Uint8Array,
  gpus: Uint8Array,
  kem: Uint8Array | null,
): Promise<Uint8Array> {
  if (kem === null) return sha512(concat(V2_LABEL, x25519, ed25519, gpus, nonce));
  return sha512(concat(V3_LABEL, x25519, ed25519, await sha256(kem), gpus, nonce));
}

export async function verifyEvidence(document: unknown, expected: Expected, options: Options): Promise<Report> {
  const steps: Step[] = [];
  const facts: Record<string, string> = { verified_at: new Date().toISOString().replace(/\.\d+Z$/, "Z") };
  const add = (name: string, ok: boolean, detail: string) => steps.push({ name, ok, detail });
  const done = (format: string, insecure = false): Report => ({
    format,
    ok: steps.length > 0 && steps.every((s) => s.ok),
    insecure,
    steps,
    facts,
  });
  if (document === null || typeof document !== "object" || Array.isArray(document)) {
    add("format", false, "the lock carries no attestation evidence: the node cannot be trusted");
    return done("missing");
  }
  const doc = document as Record<string, unknown>;
  const format = String(doc.format);
  let x25519: Uint8Array, ed25519: Uint8Array, nonce: Uint8Array, reportData: Uint8Array;
  let kem: Uint8Array | null = null;
  try {
    x25519 = bytesOf(doc, "x25519_public_key", 32);
    ed25519 = bytesOf(doc, "ed25519_public_key", 32);
    nonce = bytesOf(doc, "nonce", 16, 64);
    reportData = bytesOf(doc, "report_data", 64);
    if (doc.kem_public_key != null) kem = bytesOf(doc, "kem_public_key", KEM_SIZE);
    if (doc.gpus != null && !Array.isArray(doc.gpus)) throw new Error("gpus must be a list");
    for (const g of (doc.gpus as unknown[] | undefined) ?? []) {
      if (g === null || typeof g !== "object") throw new Error("a GPU's evidence must be an object");
      fromB64((g as Record<string, unknown>).report);
    }
  } catch (e) {
    add("format", false, `the evidence is malformed (${(e as Error).message})`);
    return done(format);
  }
  const gpus = (doc.gpus as unknown[] | undefined) ?? [];
  let signed: Uint8Array | null;
  let insecure = false;
  if (format === "none") {
    if (doc.quote != null) {
      add("format", false, "evidence of format 'none' cannot carry a quote");
      return done(format);
    }
    insecure = options.allowNoTee;
    add(
      "format",
      options.allowNoTee,
      options.allowNoTee
        ? "no TEE: development only; accepted because you acknowledged a development node for this session"
        : "no TEE: development only; nothing protects this node's keys. Refused (tick the development-node acknowledgement to accept it for this session)",
    );
    signed = reportData; // only the document's own consistency: with no TEE nothing vouches for it
  } else if (format === "tdx" || format === "sev-snp") {
    const name = format === "tdx" ? "Intel TDX quote" : "AMD SEV-SNP attestation report";
    add("format", true, gpus.length ? `${name} with ${gpus.length} GPU report(s)` : name);
    const release = options.checkRelease ? await options.checkRelease(doc, steps, facts) : null;
    const verify = format === "tdx" ? options.verifyTdx : options.verifySnp;
    if (!verify) {
      add(format === "tdx" ? "quote" : "SNP signature", false, `this console cannot verify ${name}s`);
      return done(format);
    }
    let quote: Uint8Array;
    try {
      quote = fromB64(doc.quote);
    } catch {
      add(format === "tdx" ? "quote" : "SNP signature", false, `the ${format === "tdx" ? "quote" : "report"} is not base64`);
      return done(format);
    }
    signed = await verify(quote, doc, steps, facts, release);
    if (options.verifyGpus) await options.verifyGpus(gpus, await gpuNonce(x25519, ed25519, nonce), steps, facts, release);
    else if (gpus.length) add("gpus", false, "this console cannot verify GPU evidence: use `veil attest verify`");
    if (signed === null) return done(format);
  } else {
    add("format", false, `${format} evidence alone has no CPU TEE to bind the node's keys: GPU evidence is accepted only inside a TDX or SEV-SNP bundle`);
    return done(format);
  }
  const want = await expectedReportData(x25519, ed25519, nonce, await gpuDigest(gpus), kem);
  const formula = kem === null ? "veil-v2 report formula" : "veil-v3 report formula (with the post-quantum key)";
  if (!same(signed, want)) {
    add("binding", false, `the signed report_data is not the ${formula} of the bundle's keys, GPU evidence and nonce: this evidence does not vouch for these keys`);
    facts.report_data_expected = toHex(want);
  } else if (!same(reportData, signed)) {
    add("binding", false, "the document's report_data differs from the signed one");
  } else {
    add("binding", true, `report_data = ${formula}, computed in this page`);
  }
  const wrong: string[] = [];
  if (!same(x25519, expected.x25519)) wrong.push("X25519 encryption key");
  if (!same(ed25519, expected.ed25519)) wrong.push("Ed25519 signing key");
  if (expected.kem !== null && kem === null) {
    add("expected keys", false, "the evidence binds no post-quantum (ML-KEM-768 + X25519) key: nothing can be sealed to this node with veil-v3");
  } else if (expected.kem !== null && kem !== null && !same(kem, expected.kem)) {
    wrong.push("post-quantum key");
  }
  if (wrong.length) add("expected keys", false, `the evidence's ${wrong.join(" and ")} differ from the lock's`);
  else if (!steps.some((s) => s.name === "expected keys")) {
    add("expected keys", true, `X25519, Ed25519${expected.kem ? " and ML-KEM-768 + X25519" : ""} keys equal the lock's`);
  }
  const fresh = same(nonce, expected.nonce);
  add("nonce", fresh, fresh ? "the evidence answers this page's fresh nonce" : "the evidence was made for another nonce (stale or replayed)");
  return done(format, insecure);
}
