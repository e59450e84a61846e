// AMD SEV-SNP reports verified in the page: the steps and names of veil.attestation.verify_snp
// (check_snp), with the VCEK and AMD's chain the node's bundle carries (a page cannot reach
// AMD's key distribution service, so a bundle without them fails closed):
//   SNP signature          the VCEK's ECDSA P-384 / SHA-384 signature over report bytes 0x000-0x29F
//   SNP certificate chain  VCEK <- ASK <- ARK, RSA-PSS SHA-384, all valid at the verification time;
//                          the ARK is AMD's root for the product (pinned by SHA-256 fingerprint)
//   SNP VCEK extensions    the VCEK's chip id and TCB extensions equal CHIP_ID and REPORTED_TCB
//   SNP policy             the guest policy forbids debugging and a migration agent
//   SNP TCB                REPORTED_TCB meets the pinned per-component minimums (if any)
//   measurements           MEASUREMENT equals a pinned snp_measurement, or with a verified release
//                          one of its sev_snp measurements that the pins (if any) allow; none fails
// The report layout is AMD's ABI spec (publication 56860), as abi_snp.py reads it.
import * as asn1js from "asn1js";
import type { Step } from "./attest";
import type { ReleaseRefs } from "./references";
import { buf, concat, fromB64, fromHex, same, sha256, toHex } from "./bytes";
import { commonNames, curveOf, decodeOne, ecKey, extension, fixed, parseDer, parsePem, pssProblem, stamp, validity, type Cert } from "./x509";

export const PRODUCTS = ["Milan", "Genoa", "Turin"] as const;
export type Product = (typeof PRODUCTS)[number];

// SHA-256 of the DER of AMD's ARKs (the same pins as verify_snp_vcek.ARK_SHA256).
const ARK_SHA256: Record<Product, string> = {
  Milan: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
  Genoa: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
  Turin: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
};
const OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2";
const OID_HWID = "1.3.6.1.4.1.3704.1.4";
export const OID_TCB: Record<string, string> = {
  bootloader: "1.3.6.1.4.1.3704.1.3.1",
  tee: "1.3.6.1.4.1.3704.1.3.2",
  snp: "1.3.6.1.4.1.3704.1.3.3",
  microcode: "1.3.6.1.4.1.3704.1.3.8",
  fmc: "1.3.6.1.4.1.3704.1.3.9",
};
const SIGNING_KEYS: Record<number, string> = { 0: "VCEK", 1: "VLEK", 7: "none" };
const REPORT_SIZE = 1184;
const SIGNED_SIZE = 0x2a0;

export type Tcb = Record<string, number>;

export interface SnpReport {
  version: number;
  guest_svn: number;
  policy: bigint;
  vmpl: number;
  signature_algo: number;
  signing_key: string;
  report_data: string;
  measurement: string;
  host_data: string;
  chip_id: string;
  reported_tcb: Tcb;
  current_tcb: Tcb;
  committed_tcb: Tcb;
  launch_tcb: Tcb;
  product: Product | null;
  signed: Uint8Array;
  /** r || s, 48 bytes each, big-endian (null if either does not fit P-384). */
  signature: Uint8Array | null;
}

export interface SnpPins {
  snp_measurement?: string | string[];
  snp_min_tcb?: Tcb;
}

export class SnpFormatError extends Error {}

function productFromCpuid(family: number, model: number): Product | null {
  if (family === 0x19) {
    if (model <= 0x0f) return "Milan";
    if ((model >= 0x10 && model <= 0x1f) || (model >= 0xa0 && model <= 0xaf)) return "Genoa";
  }
  if (family === 0x1a && model <= 0x1f) return "Turin";
  return null;
}

function decodeTcb(raw: bigint, product: Product | null): Tcb {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, raw, true);
  if (product === "Turin") return { bootloader: b[1], tee: b[2], snp: b[3], microcode: b[7], fmc: b[0] };
  return { bootloader: b[0], tee: b[1], snp: b[6], microcode: b[7] };
}

export function tcbText(tcb: Tcb): string {
  return Object.entries(tcb).map(([k, v]) => `${k} ${v}`).join(" / ");
}

/** abi_snp.parse_snp_report: a 1184-byte version 2 or 3 report, little-endian fields. */
export function parseSnpReport(raw: Uint8Array, product: Product | null = null): SnpReport {
  if (raw.length !== REPORT_SIZE) throw new SnpFormatError(`an SEV-SNP attestation report is ${REPORT_SIZE} bytes, got ${raw.length}`);
  const v = new DataView(raw.buffer, raw.byteOffset, raw.length);
  const version = v.getUint32(0, true);
  if (version !== 2 && version !== 3) throw new SnpFormatError(`unsupported SEV-SNP report version ${version} (this verifier reads versions 2, 3)`);
  let named = product;
  if (version >= 3) named = productFromCpuid(raw[0x188], raw[0x189]) ?? named;
  const field = (at: number, size: number) => toHex(raw.subarray(at, at + size));
  const tcb = (at: number) => decodeTcb(v.getBigUint64(at, true), named);
  const be = (at: number) => fixed(raw.slice(at, at + 72).reverse(), 48);
  const r = be(0x2a0), s = be(0x2e8);
  return {
    version,
    guest_svn: v.getUint32(0x004, true),
    policy: v.getBigUint64(0x008, true),
    vmpl: v.getUint32(0x030, true),
    signature_algo: v.getUint32(0x034, true),
    signing_key: SIGNING_KEYS[(v.getUint32(0x048, true) >> 2) & 0b111] ?? `reserved(${(v.getUint32(0x048, true) >> 2) & 0b111})`,
    report_data: field(0x050, 64),
    measurement: field(0x090, 48),
    host_data: field(0x0c0, 32),
    chip_id: field(0x1a0, 64),
    current_tcb: tcb(0x038),
    reported_tcb: tcb(0x180),
    committed_tcb: tcb(0x1e0),
    launch_tcb: tcb(0x1f0),
    product: named,
    signed: raw.subarray(0, SIGNED_SIZE),
    signature: r && s ? concat(r, s) : null,
  };
}

export function policyText(p: bigint): string {
  const bit = (n: number) => (p >> BigInt(n)) & 1n;
  return `0x${p.toString(16)} (abi >= ${(p >> 8n) & 0xffn}.${p & 0xffn}, debug ${bit(19) ? "allowed" : "off"}, migration agent ${bit(18) ? "allowed" : "off"}, smt ${bit(16) ? "allowed" : "off"}, single socket ${bit(20) ? "required" : "not required"})`;
}

class Fail extends Error {
  constructor(readonly step: string, reason: string) {
    super(reason);
  }
}

const SIG = "SNP signature", CHAIN = "SNP certificate chain", EXT = "SNP VCEK extensions";

async function checkSignature(report: SnpReport, vcek: Cert): Promise<void> {
  if (report.signature_algo !== 1) throw new Fail(SIG, `signature algorithm ${report.signature_algo} is not 1 (ECDSA P-384 with SHA-384)`);
  if (report.signing_key !== "VCEK") throw new Fail(SIG, `the report is signed by the ${report.signing_key} key, and only VCEK-signed reports are verified here`);
  if (curveOf(vcek) !== "P-384") throw new Fail(SIG, "the VCEK's key is not an ECDSA P-384 key");
  const ok = report.signature !== null && (await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-384" }, await ecKey(vcek), buf(report.signature), buf(report.signed)));
  if (!ok) throw new Fail(SIG, "the report's signature does not verify with this VCEK: the report was altered or signed by another chip");
}

function ia5(der: Uint8Array | null): string | null {
  if (der === null) return null;
  const value = decodeOne(der);
  return value instanceof asn1js.IA5String ? value.valueBlock.value : null;
}

function productOfVcek(vcek: Cert): Product | null {
  const raw = extension(vcek, OID_PRODUCT_NAME);
  if (raw === null) return null;
  const name = ia5(raw);
  if (name === null) throw new Fail(CHAIN, "the VCEK's product-name extension is malformed");
  const stem = name.split("-", 1)[0].toLowerCase();
  const found = PRODUCTS.find((p) => p.toLowerCase() === stem);
  if (!found) throw new Fail(CHAIN, `the VCEK names an unknown product '${name}'`);
  return found;
}

async function checkChain(vcek: Cert, ask: Cert, ark: Cert, at: Date, reportProduct: Product | null): Promise<Product> {
  const fingerprint = toHex(await sha256(ark.der));
  const chosen = PRODUCTS.find((p) => same(fromHex(ARK_SHA256[p]), fromHex(fingerprint)));
  if (!chosen) throw new Fail(CHAIN, `the chain's ARK (SHA-256 ${fingerprint.slice(0, 16)}…) is none of AMD's pinned roots (${PRODUCTS.join(", ")})`);
  for (const [source, seen] of [["VCEK", productOfVcek(vcek)], ["report's CPUID", reportProduct]] as const) {
    if (seen !== null && seen !== chosen) throw new Fail(CHAIN, `the ${source} names a ${seen} processor, but the chain is ${chosen}'s`);
  }
  for (const [cert, issuer, what] of [[ark, ark, `ARK (${chosen})`], [ask, ark, "ASK"], [vcek, ask, "VCEK"]] as const) {
    const problem = await pssProblem(cert, issuer, what);
    if (problem) throw new Fail(CHAIN, problem);
  }
  for (const [what, cert] of [["VCEK", vcek], ["ASK", ask], ["ARK", ark]] as const) {
    const [start, end] = validity(cert);
    if (at < start || at > end) throw new Fail(CHAIN, `the ${what} is valid ${stamp(start)} to ${stamp(end)}, not at the verification time ${stamp(at)}`);
  }
  return chosen;
}

/** A short DER INTEGER (at most 2 value bytes, non-negative), as _der_uint accepts; else null. */
function derUint(der: Uint8Array | null): number | null {
  if (der === null) return null;
  const value = decodeOne(der);
  if (!(value instanceof asn1js.Integer)) return null;
  const body = new Uint8Array(value.valueBlock.valueHexView);
  if (body.length < 1 || body.length > 2 || body[0] & 0x80) return null;
  if (body.length > 1 && body[0] === 0 && !(body[1] & 0x80)) return null; // not minimal
  return body.reduce((n, b) => n * 256 + b, 0);
}

function checkExtensions(report: SnpReport, vcek: Cert): void {
  const names = commonNames(vcek);
  if (names.length !== 1 || names[0] !== "SEV-VCEK") throw new Fail(EXT, `the certificate is not a VCEK (subject CN ${names.join(", ") || "none"}, not SEV-VCEK)`);
  let hwid = extension(vcek, OID_HWID);
  if (hwid === null) throw new Fail(EXT, `the VCEK has no chip id extension (${OID_HWID})`);
  if (hwid.length === 66 && hwid[0] === 0x04 && hwid[1] === 0x40) hwid = hwid.subarray(2);
  if (!same(hwid, fromHex(report.chip_id))) throw new Fail(EXT, `the VCEK is for chip ${toHex(hwid).slice(0, 16)}…, the report is from chip ${report.chip_id.slice(0, 16)}…`);
  const wrong: string[] = [];
  for (const [name, svn] of Object.entries(report.reported_tcb)) {
    const raw = extension(vcek, OID_TCB[name]);
    if (raw === null) throw new Fail(EXT, `the VCEK has no ${name} TCB extension (${OID_TCB[name]})`);
    const value = derUint(raw);
    if (value === null) throw new Fail(EXT, `the VCEK's ${name} TCB extension is not a DER INTEGER`);
    if (value !== svn) wrong.push(`${name} ${value} in the VCEK, ${svn} in the report`);
  }
  if (wrong.length) throw new Fail(EXT, `the VCEK is for another TCB than the report's REPORTED_TCB: ${wrong.join("; ")}`);
}

const PASSED: Record<string, string> = {
  [SIG]: "SEV-SNP report signed by its VCEK (ECDSA P-384, SHA-384)",
  [CHAIN]: "VCEK <- ASK <- ARK to AMD's pinned root",
  [EXT]: "the VCEK's chip id and TCB extensions equal the report's CHIP_ID and REPORTED_TCB",
};

/** Steps 1-3 (verify_snp_report): throws Fail naming the step; the report and its product. */
async function verifyReport(raw: Uint8Array, vcekDer: Uint8Array, chainPem: string, at: Date): Promise<{ report: SnpReport; product: Product }> {
  let report: SnpReport;
  try {
    report = parseSnpReport(raw);
  } catch (e) {
    throw new Fail(SIG, `not a readable SEV-SNP report: ${(e as Error).message}`);
  }
  let vcek: Cert;
  try {
    vcek = parseDer(vcekDer);
  } catch {
    throw new Fail(SIG, "the VCEK is not a DER X.509 certificate");
  }
  await checkSignature(report, vcek);
  let certs: Cert[];
  try {
    certs = parsePem(chainPem);
  } catch {
    throw new Fail(CHAIN, "the cert_chain is not PEM X.509 certificates (expected ASK, then ARK)");
  }
  if (!certs.length) throw new Fail(CHAIN, "the cert_chain is not PEM X.509 certificates (expected ASK, then ARK)");
  if (certs.length !== 2) throw new Fail(CHAIN, `the cert_chain must hold 2 certificates (ASK, then ARK), got ${certs.length}`);
  const product = await checkChain(vcek, certs[0], certs[1], at, report.product);
  if (report.product !== product) report = parseSnpReport(raw, product); // a version 2 report
  checkExtensions(report, vcek);
  return { report, product };
}

function pinnedList(pins: SnpPins): string[] {
  const raw = pins.snp_measurement;
  return (raw === undefined ? [] : Array.isArray(raw) ? raw : [raw]).map((m) => String(m).toLowerCase().replace(/^0x/, ""));
}

/** The SNP steps on a bundle's report; returns the report_data it signs, or null if steps 1-3
 *  did not pass. ``evidence`` is the bundle (its ``vcek`` and ``cert_chain``). */
export async function checkSnp(
  raw: Uint8Array,
  evidence: Record<string, unknown>,
  steps: Step[],
  options: { at?: Date; pins?: SnpPins; facts?: Record<string, string>; allowDebug?: boolean; allowMigrationAgent?: boolean; release?: ReleaseRefs | null } = {},
): Promise<Uint8Array | null> {
  const at = options.at ?? new Date();
  const pins = options.pins ?? {};
  const add = (name: string, ok: boolean, detail: string) => steps.push({ name, ok, detail });
  if (evidence.vcek == null || evidence.cert_chain == null) {
    add(CHAIN, false, "no VCEK: the node offered none (vcek and cert_chain in its bundle), and this page cannot reach AMD's key distribution service: use `veil attest verify` (it fetches them with --kds-url)");
    return null;
  }
  let verified: { report: SnpReport; product: Product };
  try {
    let vcek: Uint8Array;
    try {
      vcek = fromB64(evidence.vcek);
    } catch {
      throw new Fail(SIG, "the bundle's vcek is not base64");
    }
    if (typeof evidence.cert_chain !== "string") throw new Fail(CHAIN, "the cert_chain is not PEM text");
    verified = await verifyReport(raw, vcek, evidence.cert_chain, at);
  } catch (e) {
    const fail = e instanceof Fail ? e : new Fail(SIG, `the SEV-SNP evidence could not be checked (${(e as Error).message})`);
    for (const step of [SIG, CHAIN, EXT]) {
      if (step === fail.step) break;
      add(step, true, PASSED[step]);
    }
    add(fail.step, false, fail.message);
    return null;
  }
  const { report, product } = verified;
  add(SIG, true, `SEV-SNP report v${report.version} signed by its VCEK (ECDSA P-384, SHA-384)`);
  add(CHAIN, true, `VCEK <- ASK <- ARK-${product} (AMD's pinned root), RSA-PSS SHA-384, all valid at ${stamp(at)}`);
  add(EXT, true, PASSED[EXT]);
  Object.assign(options.facts ?? {}, {
    snp_product: product,
    snp_measurement: report.measurement,
    snp_policy: policyText(report.policy),
    snp_reported_tcb: tcbText(report.reported_tcb),
    snp_chip_id: report.chip_id.slice(0, 16) + "…",
    report_data: report.report_data,
  });
  const problems: string[] = [];
  if ((report.policy >> 19n) & 1n && !options.allowDebug) problems.push("the guest policy allows debugging (bit 19): the host can read and alter guest memory");
  if ((report.policy >> 18n) & 1n && !options.allowMigrationAgent) problems.push("the guest policy allows a migration agent (bit 18): another VM can export its memory");
  add("SNP policy", !problems.length, problems.join("; ") || `guest policy ${policyText(report.policy)} is acceptable`);
  const minimum = pins.snp_min_tcb ?? {};
  const low: string[] = [];
  for (const [name, min] of Object.entries(minimum)) {
    if (!(name in OID_TCB)) low.push(`unknown TCB component '${name}' (known: ${Object.keys(OID_TCB).join(", ")})`);
    else if (!(name in report.reported_tcb)) low.push(`a minimum is set for ${name}, which a ${product} TCB lacks`);
    else if (report.reported_tcb[name] < min) low.push(`${name} is ${report.reported_tcb[name]}, the minimum is ${min}`);
  }
  const shown = Object.entries(minimum).map(([k, v]) => `${k} ${v}`).join(", ");
  const reported = tcbText(report.reported_tcb);
  if (low.length) add("SNP TCB", false, `reported TCB below the minimum: ${low.join("; ")}`);
  else add("SNP TCB", true, shown ? `reported TCB ${reported} meets ${shown}` : `reported TCB ${reported}; no minimum is set`);
  let accepted = pinnedList(pins);
  const release = options.release ?? null;
  if (release) {
    // report_snp: a verified release's sets, narrowed by any measurement pinned as well.
    const pinnedNow = accepted;
    accepted = release.snpMeasurements.filter((m) => !pinnedNow.length || pinnedNow.some((p) => p === m));
  }
  if (!accepted.length && release) {
    add("measurements", false, `release ${release.name} lists no SEV-SNP measurement${pinnedList(pins).length ? " that the pinned snp_measurement allows" : ""}: the node's ${report.measurement} is not part of it`);
  } else if (!accepted.length) {
    add("measurements", false, `no SNP measurement pinned: pin snp_measurement = "${report.measurement}" in the Attestation panel, or load a signed release`);
  } else if (accepted.some((m) => !/^[0-9a-f]{96}$/.test(m))) {
    add("measurements", false, "a pinned snp_measurement must be 48 bytes of hex");
  } else {
    let matched = false;
    for (const pin of accepted) matched = same(fromHex(pin), fromHex(report.measurement)) || matched; // every pin compared
    add("measurements", matched, matched ? "snp_measurement matches a pinned value" : `snp_measurement is ${report.measurement}, pinned: ${accepted.join(", ")}`);
    if (matched && release && options.facts) options.facts.release_match = `sev_snp[${release.snpMeasurements.indexOf(report.measurement)}]`;
  }
  return fromHex(report.report_data);
}

/** Step 3 alone (check_vcek_extensions), for tests and reviewers: why the VCEK is not this
 *  report's chip and TCB, or null. */
export function vcekExtensionsProblem(raw: Uint8Array, vcekDer: Uint8Array, product: Product | null = null): string | null {
  try {
    checkExtensions(parseSnpReport(raw, product), parseDer(vcekDer));
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}
