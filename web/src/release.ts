// Signed release manifests in the page, as veil.attestation.release_ed25519 / release_manifest
// verify them: the manifest's exact bytes (never re-serialised), a veil-release-signature-v1
// document over "veil release v1\0" || SHA-256(manifest), checked with WebCrypto Ed25519 against
// the release keys the USER configured in the Attestation panel (never the gateway's or node's).
//   (1) sizes and document format   (2) the document names this manifest's digest
//   (3) its key is one the user trusts   (4) the signature verifies   (5) a valid manifest
// Sigstore bundles are refused here (fail closed): sigstore-js needs Node's crypto module, so a
// Sigstore release is verified with `veil release verify --bundle` or `veil attest verify`.
import { buf, concat, fromB64, fromHex, fromUtf8, same, sha256, toB64, toHex, utf8 } from "./bytes";

export const SIGNATURE_FORMAT = "veil-release-signature-v1";
const SIGNATURE_DOMAIN = utf8.encode("veil release v1\0");
export const MAX_MANIFEST_SIZE = 1 << 20;
export const MAX_BUNDLE_SIZE = 1 << 20;
const MEASUREMENT_SIZE = 48;
export const TDX_FIELDS = ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_config_id", "mr_owner", "mr_owner_config"] as const;
const TOP_FIELDS = ["release", "tdx", "sev_snp", "gpu", "models", "console_bundle_sha256", "created_at"];

/** A release that is not signed by a trusted key, or does not say what it must (one line). */
export class ReleaseError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "ReleaseError";
  }
}

export interface Manifest {
  release: string;
  /** Per set: the pinned fields (TDX_FIELDS names) -> 96 lowercase hex digits. */
  tdx: Record<string, string>[];
  sev_snp: string[];
  gpu: [string, string][];
  models: Record<string, string>;
  console_bundle_sha256: string | null;
  created_at: string | number | null;
}

export interface VerifiedRelease {
  manifest: Manifest;
  signer: string;
  /** SHA-256 (hex) of the manifest's exact bytes. */
  digest: string;
}

export const signerText = (key: Uint8Array): string => `ed25519: ${toB64(key)}`;

function fail(where: string, msg: string): never {
  throw new ReleaseError(`manifest is not a valid release manifest: ${where}: ${msg}`);
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

function extra(doc: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(doc)) if (!allowed.includes(k)) fail(where ? `${where}.${k}` : k, "Extra inputs are not permitted");
}

function measurement(value: unknown, where: string): string {
  if (typeof value !== "string") fail(where, "must be a hex string");
  const hex = value.trim().toLowerCase().replace(/^0x/, "");
  if (hex.length % 2 || /[^0-9a-f]/.test(hex)) fail(where, "must be hex");
  if (hex.length !== 2 * MEASUREMENT_SIZE) fail(where, `must be ${MEASUREMENT_SIZE} bytes (${2 * MEASUREMENT_SIZE} hex digits), found ${hex.length / 2} bytes`);
  return hex;
}

function list(doc: Record<string, unknown>, name: string): unknown[] {
  const v = doc[name];
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(name, "Input should be a valid list");
  return v;
}

function text(v: unknown, where: string, low: number, high: number): string {
  if (typeof v !== "string") fail(where, "Input should be a valid string");
  if (v.length < low || v.length > high) fail(where, `String should have ${low}..${high} characters`);
  return v;
}

/** release_manifest.parse_manifest: the exact bytes' JSON; unknown fields and bad sizes are errors. */
export function parseManifest(raw: Uint8Array): Manifest {
  if (raw.length > MAX_MANIFEST_SIZE) throw new ReleaseError(`manifest is ${raw.length} bytes, more than the ${MAX_MANIFEST_SIZE} a manifest may have`);
  let doc: unknown;
  try {
    doc = JSON.parse(fromUtf8(raw));
  } catch (e) {
    throw new ReleaseError(`manifest is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(doc)) fail("manifest", "Input should be a valid dictionary");
  extra(doc, TOP_FIELDS, "");
  if (!("release" in doc)) fail("release", "Field required");
  const release = text(doc.release, "release", 1, 200);
  const tdx = list(doc, "tdx").map((entry, i) => {
    const where = `tdx.${i}`;
    if (!isObject(entry)) fail(where, "Input should be a valid dictionary");
    extra(entry, TDX_FIELDS, where);
    const set: Record<string, string> = {};
    for (const name of TDX_FIELDS) if (entry[name] !== undefined && entry[name] !== null) set[name] = measurement(entry[name], `${where}.${name}`);
    if (!Object.keys(set).length) fail(where, `a TDX measurement set must pin at least one of ${TDX_FIELDS.join(", ")}`);
    return set;
  });
  const sev_snp = list(doc, "sev_snp").map((entry, i) => {
    if (!isObject(entry)) fail(`sev_snp.${i}`, "Input should be a valid dictionary");
    extra(entry, ["measurement"], `sev_snp.${i}`);
    if (!("measurement" in entry)) fail(`sev_snp.${i}.measurement`, "Field required");
    return measurement(entry.measurement, `sev_snp.${i}.measurement`);
  });
  const gpu = list(doc, "gpu").map((entry, i): [string, string] => {
    if (!isObject(entry)) fail(`gpu.${i}`, "Input should be a valid dictionary");
    extra(entry, ["driver_version", "vbios_version"], `gpu.${i}`);
    return [text(entry.driver_version, `gpu.${i}.driver_version`, 1, 64), text(entry.vbios_version, `gpu.${i}.vbios_version`, 1, 64)];
  });
  const models: Record<string, string> = {};
  if (doc.models !== undefined) {
    if (!isObject(doc.models)) fail("models", "Input should be a valid dictionary");
    for (const [id, digest] of Object.entries(doc.models)) {
      if (!id) fail("models", "a model id must not be empty");
      if (typeof digest !== "string" || !/^sha256:[0-9a-f]{64}$/.test(digest)) fail("models", `model '${id}': digest must be 'sha256:' and 64 lowercase hex digits`);
      models[id] = digest;
    }
  }
  const bundle = doc.console_bundle_sha256 ?? null;
  if (bundle !== null && (typeof bundle !== "string" || !/^[0-9a-f]{64}$/.test(bundle))) fail("console_bundle_sha256", "String should match pattern '^[0-9a-f]{64}$'");
  const created = doc.created_at ?? null;
  const iso = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/i;
  if (created !== null && !(typeof created === "number" && Number.isFinite(created)) && (typeof created !== "string" || !iso.test(created) || Number.isNaN(Date.parse(created)))) fail("created_at", "Input should be a valid datetime");
  if (!tdx.length && !sev_snp.length) fail("manifest", "a release must list at least one TDX or SEV-SNP measurement set");
  return { release, tdx, sev_snp, gpu, models, console_bundle_sha256: bundle, created_at: created };
}

const pyRepr = (v: unknown): string => (v === undefined || v === null ? "None" : typeof v === "string" ? `'${v}'` : JSON.stringify(v));

function docBytes(doc: Record<string, unknown>, name: string, size: number): Uint8Array {
  const value = doc[name];
  if (typeof value !== "string") throw new ReleaseError(`signature document: ${name} must be a base64 string`);
  let raw: Uint8Array;
  try {
    raw = fromB64(value);
  } catch {
    throw new ReleaseError(`signature document: ${name} is not base64`);
  }
  if (raw.length !== size) throw new ReleaseError(`signature document: ${name} must be ${size} bytes, found ${raw.length}`);
  return raw;
}

/** release_ed25519.verify_ed25519, step for step, with WebCrypto's Ed25519. */
export async function verifyEd25519(manifest: Uint8Array, signatureDoc: unknown, trusted: Uint8Array[]): Promise<VerifiedRelease> {
  // (1)
  if (manifest.length > MAX_MANIFEST_SIZE) throw new ReleaseError(`manifest is ${manifest.length} bytes, more than the ${MAX_MANIFEST_SIZE} allowed`);
  if (!isObject(signatureDoc)) throw new ReleaseError("signature document must be a JSON object");
  const found = signatureDoc.format;
  if (found !== SIGNATURE_FORMAT) throw new ReleaseError(`signature document format: expected '${SIGNATURE_FORMAT}', found ${pyRepr(found)}`);
  const publicKey = docBytes(signatureDoc, "public_key", 32);
  const signature = docBytes(signatureDoc, "signature", 64);
  const claimed = signatureDoc.manifest_sha256;
  if (typeof claimed !== "string" || !/^[0-9a-fA-F]{64}$/.test(claimed)) throw new ReleaseError("signature document: manifest_sha256 must be 64 hex digits");
  // (2)
  const digest = await sha256(manifest);
  if (!same(fromHex(claimed), digest)) throw new ReleaseError(`signature is for manifest sha256 ${claimed.toLowerCase()}, this manifest is ${toHex(digest)}`);
  // (3) every configured key compared, none short-circuiting
  let ok = false;
  for (const key of trusted) ok = (key.length === 32 && same(key, publicKey)) || ok;
  if (!ok) throw new ReleaseError(`release signer is not trusted: signed by ${signerText(publicKey)}, which is not one of the ${trusted.length} Ed25519 key(s) configured`);
  // (4)
  let valid = false;
  try {
    const key = await crypto.subtle.importKey("raw", buf(publicKey), { name: "Ed25519" }, false, ["verify"]);
    valid = await crypto.subtle.verify({ name: "Ed25519" }, key, buf(signature), buf(concat(SIGNATURE_DOMAIN, digest)));
  } catch {
    valid = false;
  }
  if (!valid) throw new ReleaseError(`Ed25519 signature by ${signerText(publicKey)} does not verify over manifest sha256 ${toHex(digest)}`);
  // (5)
  return { manifest: parseManifest(manifest), signer: signerText(publicKey), digest: toHex(digest) };
}

function asDocument(raw: Uint8Array, what: string): Record<string, unknown> {
  if (raw.length > MAX_BUNDLE_SIZE) throw new ReleaseError(`${what} is ${raw.length} bytes, more than ${MAX_BUNDLE_SIZE}`);
  let doc: unknown;
  try {
    doc = JSON.parse(fromUtf8(raw));
  } catch {
    throw new ReleaseError(`${what} is not valid JSON`);
  }
  if (!isObject(doc)) throw new ReleaseError(`${what} must be a JSON object`);
  return doc;
}

export const SIGSTORE_REFUSED = "Sigstore release bundles are not verified in this page (the Sigstore libraries for JavaScript need Node's crypto module): verify the release with `veil release verify [MANIFEST] --bundle BUNDLE --identity ID --issuer ISSUER`, or the node with `veil attest verify` under a policy whose release_signers name that Sigstore identity; or sign the release with an Ed25519 release key";

/** release.verify_release for the forms the page verifies: an Ed25519 document; Sigstore refused. */
export async function verifyRelease(manifest: Uint8Array, signature: Uint8Array | Record<string, unknown>, trusted: Uint8Array[]): Promise<VerifiedRelease> {
  if (!trusted.length) throw new ReleaseError("no release signer configured: add a trusted Ed25519 release key in the Attestation panel");
  const doc = signature instanceof Uint8Array ? asDocument(signature, "release signature") : signature;
  if (doc.format === SIGNATURE_FORMAT) return verifyEd25519(manifest, doc, trusted);
  const mediaType = String(doc.mediaType ?? "");
  if (mediaType.startsWith("application/vnd.dev.sigstore.bundle")) throw new ReleaseError(SIGSTORE_REFUSED);
  throw new ReleaseError(`release signature: expected a ${SIGNATURE_FORMAT} document or a Sigstore bundle, found format ${pyRepr(String(doc.format ?? "None").slice(0, 60))} / mediaType ${pyRepr(mediaType.slice(0, 60))}`);
}

/** The trusted keys as the panel keeps them: base64 of 32-byte Ed25519 keys, one per line. */
export function parseKeys(textValue: string): Uint8Array[] {
  const keys: Uint8Array[] = [];
  for (const line of textValue.split(/[\s,]+/).filter(Boolean)) {
    let raw: Uint8Array;
    try {
      raw = fromB64(line);
    } catch {
      throw new ReleaseError(`release key ${line.slice(0, 20)}…: must be base64`);
    }
    if (raw.length !== 32) throw new ReleaseError(`release key ${line.slice(0, 20)}…: must be a 32-byte Ed25519 public key, found ${raw.length} bytes`);
    keys.push(raw);
  }
  return keys;
}
