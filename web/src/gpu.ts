// NVIDIA Hopper GPU evidence verified in the page: the steps and names of
// veil.attestation.verify_nvidia (check_gpu), one set per GPU of the bundle (report_gpus.py):
//   GPU signature          the device leaf's ECDSA P-384 / SHA-384 signature over request ||
//                          response minus the signature (so over the nonce too)
//   GPU certificate chain  leaf <- ... <- root, each signed by the next (a CA), all valid at the
//                          verification time; the root is NVIDIA's pinned device identity root
//   GPU FWID               the leaf's DICE TcbInfo FWID equals the FWID the report names
//   GPU nonce              the request's nonce is gpu_nonce = SHA-256("veil gpu nonce" || x25519
//                          || ed25519 || nonce) of this bundle
//   GPU RIM signatures     each RIM's XML-DSig (xmldsigjs, ECDSA P-384 / SHA-384) by the first
//                          KeyInfo certificate, whose chain ends at NVIDIA's pinned RIM root and
//                          is valid at the verification time (rim.ts); no RIMs: not checked
//   GPU firmware versions  the driver RIM is for the reported driver, the VBIOS RIM for the
//                          reported VBIOS, and both versions are among the pins, if any
//   GPU measurements       every active RIM measurement equals the report's block at its index;
//                          without RIMs, accepted only by pinned driver and VBIOS versions
//   GPU OCSP, GPU RIM OCSP the bundle's recorded OCSP replies (ocsp.ts, PKI.js) say GOOD at the
//                          verification time for the device chain (leaf excluded: NVIDIA's
//                          responders do not know it) and the RIM chains (root excluded); a reply
//                          for no given certificate fails "GPU OCSP"; no replies: not checked.
// The report layout is SPDM 1.1 GET_MEASUREMENTS || MEASUREMENTS, as abi_nvidia.py reads it.
import * as asn1js from "asn1js";
import type { Step } from "./attest";
import type { ReleaseRefs } from "./references";
import { buf, fromB64, fromHex, fromUtf8, same, sha256, toHex, utf8 } from "./bytes";
import { DEFAULT_OCSP_MAX_AGE, loadReplies, ocspStep, rimChainPairs } from "./ocsp";
import { checkMeasurements, checkVersions, loadRims } from "./rim";
import { chainProblem, curveOf, decodeOne, ecKey, extension, label, OID, parsePem, stamp, type Cert } from "./x509";

// SHA-256 of the DER of NVIDIA's device identity root (pki_nvidia.DEVICE_ROOT_SHA256).
const DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";
const TCB_INFO_OID = "2.23.133.5.4.1";
const REQUEST_SIZE = 37, NONCE_SIZE = 32, SIGNATURE_SIZE = 96, RESPONSE_HEADER_SIZE = 8;
const OPAQUE_DRIVER = 3, OPAQUE_VBIOS = 6, OPAQUE_FWID = 20;
const GPU_NONCE_LABEL = utf8.encode("veil gpu nonce");

export interface GpuPins {
  gpu_driver_versions?: string[];
  gpu_vbios_versions?: string[];
}

export class GpuFormatError extends Error {}

export interface GpuReport {
  signed: Uint8Array;
  signature: Uint8Array;
  nonce: Uint8Array;
  measurements: Map<number, Uint8Array>;
  opaque: Map<number, Uint8Array>;
  driver: string | null;
  vbios: string | null;
  fwid: Uint8Array | null;
}

const le = (b: Uint8Array, at: number, size: number) => b.subarray(at, at + size).reduceRight((n, x) => n * 256 + x, 0);

function decode(data: Uint8Array): Uint8Array {
  if (data[0] === 0x11 && data[1] === 0xe0) return data;
  const text = new TextDecoder().decode(data);
  if (/^[0-9a-fA-F\s]+$/.test(text)) {
    const hex = text.replace(/\s+/g, "");
    if (hex.length % 2) throw new GpuFormatError("report hex text has an odd number of digits");
    return fromHex(hex);
  }
  return data;
}

/** abi_nvidia.parse_gpu_report: every length checked before it is used. */
export function parseGpuReport(data: Uint8Array): GpuReport {
  const raw = decode(data);
  const minimum = REQUEST_SIZE + RESPONSE_HEADER_SIZE + NONCE_SIZE + 2 + SIGNATURE_SIZE;
  if (raw.length < minimum) throw new GpuFormatError(`a GPU attestation report is at least ${minimum} bytes, got ${raw.length}`);
  const request = raw.subarray(0, REQUEST_SIZE), response = raw.subarray(REQUEST_SIZE);
  if (request[0] !== 0x11 || request[1] !== 0xe0) throw new GpuFormatError(`expected an SPDM 1.1 GET_MEASUREMENTS request (11 e0), found ${toHex(request.subarray(0, 2))}`);
  if (!(request[2] & 0x01)) throw new GpuFormatError("the request did not ask for a signed response");
  if (response[0] !== request[0] || response[1] !== 0x60) throw new GpuFormatError(`expected an SPDM 1.1 MEASUREMENTS response (11 60), found ${toHex(response.subarray(0, 2))}`);
  const blockCount = response[4], recordSize = le(response, 5, 3);
  let at = RESPONSE_HEADER_SIZE;
  if (at + recordSize + NONCE_SIZE + 2 > response.length - SIGNATURE_SIZE) throw new GpuFormatError(`measurement record of ${recordSize} bytes overruns the ${response.length}-byte response`);
  const measurements = new Map<number, Uint8Array>();
  const record = response.subarray(at, at + recordSize);
  for (let o = 0; o < record.length; ) {
    if (o + 4 > record.length) throw new GpuFormatError(`truncated measurement block header at offset ${o}`);
    const index = record[o], spec = record[o + 1], size = le(record, o + 2, 2);
    const body = record.subarray(o + 4, o + 4 + size);
    if (body.length !== size) throw new GpuFormatError(`measurement block ${index} overruns the record`);
    if (!(spec & 0x01) || size < 3) throw new GpuFormatError(`measurement block ${index} is not in the DMTF format`);
    if (3 + le(body, 1, 2) !== size) throw new GpuFormatError(`measurement block ${index}: value of ${le(body, 1, 2)} bytes in a ${size}-byte block`);
    if (measurements.has(index)) throw new GpuFormatError(`measurement block ${index} appears twice`);
    measurements.set(index, body.subarray(3));
    o += 4 + size;
  }
  if (measurements.size !== blockCount) throw new GpuFormatError(`the response announces ${blockCount} measurement blocks, the record holds ${measurements.size}`);
  at += recordSize + NONCE_SIZE;
  const opaqueSize = le(response, at, 2);
  at += 2;
  if (at + opaqueSize + SIGNATURE_SIZE !== response.length) throw new GpuFormatError(`response is ${response.length} bytes, its length fields say ${at + opaqueSize + SIGNATURE_SIZE}`);
  const opaque = new Map<number, Uint8Array>();
  const od = response.subarray(at, at + opaqueSize);
  for (let o = 0; o < od.length; ) {
    if (o + 4 > od.length) throw new GpuFormatError(`truncated opaque field header at offset ${o}`);
    const kind = le(od, o, 2), size = le(od, o + 2, 2), value = od.subarray(o + 4, o + 4 + size);
    if (value.length !== size) throw new GpuFormatError(`opaque field ${kind} overruns the opaque data`);
    if (opaque.has(kind)) throw new GpuFormatError(`opaque field ${kind} appears twice`);
    opaque.set(kind, value);
    o += 4 + size;
  }
  const d = opaque.get(OPAQUE_DRIVER), v = opaque.get(OPAQUE_VBIOS), f = opaque.get(OPAQUE_FWID);
  let driver: string | null = null;
  if (d !== undefined) {
    let end = d.length;
    while (end > 0 && d[end - 1] === 0) end--;
    if (d.subarray(0, end).some((x) => x > 0x7f)) throw new GpuFormatError("driver version is not ASCII text");
    driver = fromUtf8(d.subarray(0, end));
  }
  if (v !== undefined && v.length !== 8) throw new GpuFormatError(`VBIOS version field is ${v.length} bytes, expected 8`);
  if (f !== undefined && f.length !== 48) throw new GpuFormatError(`FWID field is ${f.length} bytes, expected 48`);
  return {
    signed: raw.subarray(0, raw.length - SIGNATURE_SIZE),
    signature: raw.subarray(raw.length - SIGNATURE_SIZE),
    nonce: request.subarray(4, 4 + NONCE_SIZE),
    measurements,
    opaque,
    driver,
    vbios: v === undefined ? null : [3, 2, 1, 0, 4].map((i) => v[i].toString(16).padStart(2, "0").toUpperCase()).join("."),
    fwid: f ?? null,
  };
}

/** The nonce each GPU signs (evidence.gpu_nonce). */
export async function gpuNonce(x25519: Uint8Array, ed25519: Uint8Array, nonce: Uint8Array): Promise<Uint8Array> {
  const all = new Uint8Array(GPU_NONCE_LABEL.length + 64 + nonce.length);
  all.set(GPU_NONCE_LABEL);
  all.set(x25519, GPU_NONCE_LABEL.length);
  all.set(ed25519, GPU_NONCE_LABEL.length + 32);
  all.set(nonce, GPU_NONCE_LABEL.length + 64);
  return sha256(all);
}

/** verify_nvidia_device.leaf_fwid: the one SHA-384 FWID among the TcbInfo SEQUENCE's members. */
function leafFwid(leaf: Cert): Uint8Array | string {
  const raw = extension(leaf, TCB_INFO_OID);
  if (raw === null) return `the leaf '${label(leaf)}' has no TcbInfo extension`;
  const value = decodeOne(raw);
  if (value === null) return "the leaf's TcbInfo extension is not DER";
  if (!(value instanceof asn1js.Sequence)) return "the leaf's TcbInfo extension is not one SEQUENCE";
  const found: Uint8Array[] = [];
  for (const c of value.valueBlock.value) {
    if (!(c instanceof asn1js.Sequence) || c.valueBlock.value.length !== 2) continue;
    const [alg, digest] = c.valueBlock.value;
    if (alg instanceof asn1js.ObjectIdentifier && alg.valueBlock.toString() === OID.sha384 && digest instanceof asn1js.OctetString) found.push(new Uint8Array(digest.valueBlock.valueHexView));
  }
  if (found.length !== 1 || found[0].length !== 48) return "the leaf's TcbInfo does not hold exactly one SHA-384 FWID";
  return found[0];
}

interface GpuOptions {
  at: Date;
  expectedNonce: Uint8Array;
  rims: Array<[string, Uint8Array]>; // name -> bytes (verify_gpu_report names a list "RIM 1", ...)
  ocsp: Array<[string, Uint8Array]>; // DER or base64 text ("reply 1", ...)
  rimRoots?: string[]; // SHA-256 (hex) of the pinned RIM roots; NVIDIA's by default
  drivers: string[];
  vbios: string[];
}

/** One GPU's steps (verify_gpu_report's order); its facts, or null if it could not be parsed. */
export async function checkGpu(data: Uint8Array, chainPem: string, steps: Step[], o: GpuOptions): Promise<Record<string, string> | null> {
  const add = (name: string, ok: boolean, detail: string) => steps.push({ name, ok, detail });
  const skip = (name: string, detail: string) => steps.push({ name, ok: true, notChecked: true, detail });
  let report: GpuReport, chain: Cert[];
  try {
    report = parseGpuReport(data);
    try {
      chain = parsePem(chainPem);
    } catch {
      chain = [];
    }
    if (!chain.length) throw new GpuFormatError("the GPU certificate chain is not PEM X.509");
    if (chain.length < 2) throw new GpuFormatError(`the GPU certificate chain has ${chain.length} certificate(s); leaf to root expected`);
  } catch (e) {
    add("GPU report", false, (e as Error).message);
    return null;
  }
  const leaf = chain[0];
  if (curveOf(leaf) !== "P-384") {
    add("GPU signature", false, `the leaf '${label(leaf)}' has no P-384 key`);
  } else {
    const ok = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-384" }, await ecKey(leaf), buf(report.signature), buf(report.signed));
    add("GPU signature", ok, ok ? `ECDSA P-384/SHA-384 by the device leaf over the ${report.signed.length} signed bytes` : `the report's signature does not verify with the leaf '${label(leaf)}': the report was altered or not made by this GPU`);
  }
  const problem = await chainProblem(chain, o.at, [DEVICE_ROOT_SHA256], "GPU device chain");
  add("GPU certificate chain", problem === null, problem ?? `${chain.length} certificates, each signed by the next and valid at ${stamp(o.at)}, ending at the pinned '${label(chain[chain.length - 1])}'`);
  const fwid = leafFwid(leaf);
  if (typeof fwid === "string") add("GPU FWID", false, fwid);
  else if (report.fwid === null) add("GPU FWID", false, "the report carries no FWID field");
  else if (!same(fwid, report.fwid)) add("GPU FWID", false, "the report's FWID differs from the leaf certificate's: the report was not made by the firmware the certificate was issued to");
  else add("GPU FWID", true, `the leaf's TcbInfo FWID equals the report's (${toHex(report.fwid).slice(0, 16)}...)`);
  const fresh = same(o.expectedNonce, report.nonce);
  add("GPU nonce", fresh, fresh ? "the report answers this bundle's gpu_nonce (its keys and the page's nonce)" : "the report was made for another nonce (stale or replayed)");
  // RIMs (verify_nvidia_rim), then OCSP (verify_nvidia_ocsp), as verify_gpu_report
  const [loaded, rimProblems] = await loadRims(o.rims, o.at, o.rimRoots);
  if (!o.rims.length) skip("GPU RIM signatures", "no RIMs given");
  else if (rimProblems.length) add("GPU RIM signatures", false, rimProblems.join("; "));
  else add("GPU RIM signatures", true, `${loaded.length} RIM(s) signed by NVIDIA (XML-DSig, chain to the pinned RIM root valid at ${stamp(o.at)})`);
  const unpinned = `no RIM given and the firmware versions are not pinned, so nothing vouches for the GPU's measurements: pin gpu_driver_versions = ["${report.driver}"] and gpu_vbios_versions = ["${report.vbios}"] in the Attestation panel`;
  const [measured, matched] = checkMeasurements(report, loaded, rimProblems, o.drivers, o.vbios, unpinned);
  const [replies, replyProblems] = loadReplies(o.ocsp);
  const used = new Set<number>();
  const devicePairs = chain.slice(1, -1).map((c, i): [Cert, Cert] => [c, chain[i + 2]]); // not the leaf, which NVIDIA's OCSP does not know
  let device = await ocspStep("GPU OCSP", "device chain", devicePairs, replies, used, o.at, DEFAULT_OCSP_MAX_AGE, replyProblems);
  const rimOcsp = await ocspStep("GPU RIM OCSP", "RIM chains", rimChainPairs(loaded.map((r) => r.chain)), replies, used, o.at, DEFAULT_OCSP_MAX_AGE, []);
  const stray = replies.filter((_, i) => !used.has(i)).map((r) => `'${r.name}'`);
  if (stray.length) {
    const detail = `OCSP reply(ies) ${stray.join(", ")} match no certificate given`;
    device = { name: "GPU OCSP", ok: false, detail: device.ok === null ? detail : `${device.detail}; ${detail}` };
  }
  for (const c of [checkVersions(report, loaded, o.rims.length, o.drivers, o.vbios), measured, device, rimOcsp]) {
    if (c.ok === null) skip(c.name, c.detail);
    else add(c.name, c.ok, c.detail);
  }
  return { gpu_driver: String(report.driver), gpu_vbios: String(report.vbios), gpu_nonce: toHex(report.nonce), gpu_measurements_matched: String(matched) };
}

/** report_gpus.check_gpus: every GPU of the bundle, named "GPU signature 0", ... when several. */
export async function checkGpus(gpus: unknown[], expectedNonce: Uint8Array, steps: Step[], options: { at?: Date; pins?: GpuPins; facts?: Record<string, string>; release?: ReleaseRefs | null } = {}): Promise<void> {
  const pins = options.pins ?? {};
  // A verified release's GPU firmware pairs join the pinned versions (report_gpus.check_gpus).
  const sets = options.release?.gpuSets ?? [];
  const drivers = [...(pins.gpu_driver_versions ?? []).map(String), ...sets.map(([d]) => d)];
  const vbios = [...(pins.gpu_vbios_versions ?? []).map(String), ...sets.map(([, v]) => v)];
  if (!gpus.length) {
    if (drivers.length) steps.push({ name: "GPU evidence", ok: false, detail: sets.length ? "the pins or release expect confidential GPUs, and the bundle has none" : "the pins expect confidential GPUs, and the bundle has none" });
    return;
  }
  for (const [index, gpu] of gpus.entries()) {
    const g = (gpu ?? {}) as Record<string, unknown>;
    const sub: Step[] = [];
    let facts: Record<string, string> | null = null;
    try {
      const blobs = (v: unknown, prefix: string): Array<[string, Uint8Array]> => (Array.isArray(v) ? v.map((b, i) => [`${prefix} ${i + 1}`, fromB64(b)]) : []);
      facts = await checkGpu(fromB64(g.report), String(g.cert_chain ?? ""), sub, { at: options.at ?? new Date(), expectedNonce, rims: blobs(g.rims, "RIM"), ocsp: blobs(g.ocsp, "reply"), drivers, vbios });
    } catch (e) {
      sub.push({ name: "GPU report", ok: false, detail: `the GPU evidence is malformed (${(e as Error).message})` });
    }
    const suffix = gpus.length > 1 ? ` ${index}` : "";
    for (const s of sub) steps.push({ ...s, name: s.name + suffix });
    for (const [k, v] of Object.entries(facts ?? {})) if (options.facts) options.facts[`gpu${index}_${k}`] = v;
  }
}
