// NVIDIA reference integrity manifests (RIMs) verified in the page, as veil.attestation.rim:
// a RIM is a SWID tag that NVIDIA signs with one enveloped XML-DSig (ECDSA P-384, SHA-384,
// C14N 1.1); its signing chain comes from the signature's KeyInfo and must end at NVIDIA's pinned
// RIM root. The XML signature is checked with xmldsigjs (WebCrypto), never a hand-written
// canonicalisation; the page reads only the signed element (the whole SoftwareIdentity minus the
// enveloped signature), as Python reads signxml's signed_xml.
//
// C14N 1.1: xmldsigjs implements C14N 1.0. C14N 1.1 differs from 1.0 in one thing only, the
// xml:* attributes (xml:id, xml:base, xml:lang, xml:space) an element inherits from ancestors that
// a document subset leaves out (W3C C14N 1.1, section 2.4). A RIM with no attribute in the xml:
// namespace therefore canonicalizes to the same bytes under both (NVIDIA's have none). So the
// page registers xmldsigjs's C14N 1.0 under the C14N 1.1 URI and refuses, before any signature
// check, a RIM that has any xml:* attribute: there the two could differ, and it fails closed.
import { CryptoConfig, SignedXml, XmlDsigC14NTransform } from "xmldsigjs";
import { fromB64, fromUtf8, same } from "./bytes";
import { chainProblem, ecKey, parseDer, stamp, type Cert } from "./x509";

// SHA-256 of the DER of NVIDIA's RIM signing root, "NVIDIA CoRIM signing Root CA" (pki_nvidia.RIM_ROOT_SHA256).
export const RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1";
const DSIG = "http://www.w3.org/2000/09/xmldsig#";
const SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384";
const XML_NS = "http://www.w3.org/XML/1998/namespace";
const C14N11 = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384";
const MEASUREMENT_SIZE = 48, MAX_RIM_SIZE = 1 << 20, MAX_ALTERNATIVES = 64;
const VBIOS_VERSION = /^[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}$/;

/** C14N 1.1, valid only for documents without xml:* attributes (checked in loadRim). */
class C14N11Transform extends XmlDsigC14NTransform {
  Algorithm = C14N11;
}
CryptoConfig.RegisterTransform(C14N11, C14N11Transform);

/** The two halves of SignedXml.Verify, separately, to say which failed (as signxml does). */
class RimSignature extends SignedXml {
  signatureValid(key: CryptoKey): Promise<boolean> {
    return this.ValidateSignatureValue([key]);
  }
  async referencesValid(root: Element): Promise<boolean> {
    try {
      return await this.ValidateReferences(root.cloneNode(true) as Element);
    } catch {
      return false;
    }
  }
}

export class RimError extends Error {}

export type RimKind = "driver" | "vbios";

export interface Rim {
  name: string;
  kind: RimKind;
  version: string;
  tagId: string;
  measurements: Map<number, Uint8Array[]>; // active ones only: index -> alternatives
  chain: Cert[];
}

const children = (e: Element, ns: string, local: string) => Array.from(e.children).filter((c) => c.namespaceURI === ns && c.localName === local);

function keyInfoChain(root: Element, name: string): Cert[] {
  const certs: Cert[] = [];
  for (const sig of children(root, DSIG, "Signature"))
    for (const ki of children(sig, DSIG, "KeyInfo"))
      for (const data of children(ki, DSIG, "X509Data"))
        for (const node of children(data, DSIG, "X509Certificate")) {
          try {
            certs.push(parseDer(fromB64((node.textContent ?? "").replace(/\s+/g, ""))));
          } catch {
            throw new RimError(`RIM '${name}': a KeyInfo certificate is not DER X.509`);
          }
        }
  if (!certs.length) throw new RimError(`RIM '${name}' carries no signing certificate in its KeyInfo`);
  return certs;
}

/** Why the signature is not the one shape NVIDIA signs (signxml's config in rim._config), or null. */
function shapeProblem(doc: Document, sigs: Element[]): string | null {
  if (sigs.length !== 1) return `${sigs.length} enveloped signatures, expected 1`;
  for (const el of Array.from(doc.getElementsByTagName("*")))
    for (const a of Array.from(el.attributes)) if (a.namespaceURI === XML_NS) return `it has an xml:${a.localName} attribute, where C14N 1.0 and 1.1 differ (the page has only 1.0)`;
  const info = children(sigs[0], DSIG, "SignedInfo");
  if (info.length !== 1) return "not one SignedInfo";
  const alg = (parent: Element, local: string) => children(parent, DSIG, local).map((e) => e.getAttribute("Algorithm"));
  if (alg(info[0], "CanonicalizationMethod").join() !== C14N11) return "SignedInfo is not canonicalized with C14N 1.1";
  if (alg(info[0], "SignatureMethod").join() !== ECDSA_SHA384) return "the signature method is not ECDSA-SHA384";
  const refs = children(info[0], DSIG, "Reference");
  if (refs.length !== 1) return `${refs.length} signed references, expected 1`;
  if (refs[0].getAttribute("URI") !== "") return "the reference is not the whole document (URI \"\")";
  if (alg(refs[0], "DigestMethod").join() !== DIGEST_SHA384) return "the digest method is not SHA-384";
  const transforms = children(refs[0], DSIG, "Transforms").flatMap((t) => alg(t, "Transform"));
  if (transforms.join(" ") !== `${ENVELOPED} ${C14N11}`) return "the transforms are not enveloped-signature then C14N 1.1";
  return null;
}

/** rim.load_rim: the signing chain (KeyInfo, to the pinned RIM root, valid at ``at``), then the
 *  XML signature by its leaf, then the version and active measurements the signature covers. */
export async function loadRim(data: Uint8Array, at: Date, name: string, pins: string[] = [RIM_ROOT_SHA256]): Promise<Rim> {
  if (data.length > MAX_RIM_SIZE) throw new RimError(`RIM '${name}' is ${data.length} bytes, more than ${MAX_RIM_SIZE}`);
  let text: string;
  try {
    text = fromUtf8(data);
  } catch {
    throw new RimError(`RIM '${name}' is not well-formed XML: not UTF-8 text`);
  }
  // no DTD, so no entities to expand: refused before parsing, as signxml refuses it (Python reads
  // the signing chain first; either way the RIM fails)
  if (/<!DOCTYPE/i.test(text)) throw new RimError(`RIM '${name}': not a signature signxml accepts: DTD declarations are not supported in XML input`);
  const doc = new DOMParser().parseFromString(text, "application/xml");
  const error = doc.getElementsByTagName("parsererror")[0];
  if (error !== undefined) throw new RimError(`RIM '${name}' is not well-formed XML: ${(error.querySelector("div")?.textContent ?? error.textContent ?? "").trim()}`);
  const root = doc.documentElement;
  // 1. the signing chain from KeyInfo: leaf first, to the pinned RIM root, valid at ``at``
  const chain = keyInfoChain(root, name);
  const problem = await chainProblem(chain, at, pins, `RIM '${name}' signing chain`);
  if (problem !== null) throw new RimError(problem);
  // 2. the XML signature by the leaf, via xmldsigjs: SignedInfo's signature, then the digest
  const sigs = children(root, DSIG, "Signature");
  const shape = shapeProblem(doc, sigs);
  if (shape !== null) throw new RimError(`RIM '${name}': not a signature signxml accepts: ${shape}`);
  const signed = new RimSignature(doc);
  let key: CryptoKey;
  try {
    signed.LoadXml(sigs[0]);
    key = await ecKey(chain[0]);
  } catch (e) {
    throw new RimError(`RIM '${name}': not a signature signxml accepts: ${(e as Error).message}`);
  }
  const when = `RIM '${name}': XML signature does not verify at ${stamp(at)}`;
  let valid = false;
  try {
    valid = await signed.signatureValid(key);
  } catch {
    valid = false;
  }
  if (!valid) throw new RimError(`${when}: Signature verification failed: `);
  if (!(await signed.referencesValid(root))) throw new RimError(`${when}: Digest mismatch for reference 0 ()`);
  // 3. what the signature covers (the root minus the enveloped signature): version, measurements
  if (root.namespaceURI !== SWID || root.localName !== "SoftwareIdentity") throw new RimError(`RIM '${name}': the signed element is not a SWID SoftwareIdentity`);
  const version = children(root, SWID, "Meta")[0]?.getAttribute("colloquialVersion");
  if (!version) throw new RimError(`RIM '${name}': no Meta/@colloquialVersion`);
  return { name, kind: VBIOS_VERSION.test(version) ? "vbios" : "driver", version, tagId: root.getAttribute("tagId") ?? "", measurements: measurements(root, name), chain };
}

/** Python's int() of an attribute: optional sign, digits with single underscores, spaces around. */
function pyInt(text: string | null): number | null {
  const m = /^\s*([+-]?)(\d+(?:_\d+)*)\s*$/.exec(text ?? "");
  return m ? Number(m[1] + m[2].replace(/_/g, "")) : null;
}

/** bytes.fromhex: hex pairs, whitespace allowed before each pair; null when it is not that. */
function pyFromHex(text: string | null): Uint8Array | null {
  if (text === null || !/^(\s*[0-9a-fA-F]{2})*\s*$/.test(text)) return null;
  return Uint8Array.from(text.match(/[0-9a-fA-F]{2}/g) ?? [], (x) => parseInt(x, 16));
}

function measurements(signed: Element, name: string): Map<number, Uint8Array[]> {
  const found = new Map<number, Uint8Array[]>();
  for (const payload of children(signed, SWID, "Payload"))
    for (const resource of children(payload, SWID, "Resource")) {
      if (resource.getAttribute("type") !== "Measurement") continue;
      const index = pyInt(resource.getAttribute("index")), count = pyInt(resource.getAttribute("alternatives"));
      const size = pyInt(resource.getAttribute("size") ?? String(MEASUREMENT_SIZE));
      if (index === null || count === null || size === null) throw new RimError(`RIM '${name}': a measurement's index or alternatives is not a number`);
      const active = resource.getAttribute("active");
      if (active !== "True" && active !== "False") throw new RimError(`RIM '${name}': measurement ${index} has active=${active === null ? "None" : `'${active}'`}`);
      if (active === "False") continue;
      if (!(index >= 0 && index < 256) || !(count >= 1 && count <= MAX_ALTERNATIVES) || size !== MEASUREMENT_SIZE) throw new RimError(`RIM '${name}': measurement ${index} has ${count} alternatives of ${size} bytes`);
      if (found.has(index)) throw new RimError(`RIM '${name}': measurement ${index} appears twice`);
      const values: Uint8Array[] = [];
      for (let k = 0; k < count; k++) {
        const value = pyFromHex(resource.getAttributeNS(SHA384_NS, `Hash${k}`)) ?? new Uint8Array();
        if (value.length !== MEASUREMENT_SIZE) throw new RimError(`RIM '${name}': measurement ${index} Hash${k} is not 48 hex bytes`);
        values.push(value);
      }
      found.set(index, values);
    }
  return found;
}

/** verify_nvidia_rim.load_rims: the RIMs that verified, and why the others did not. */
export async function loadRims(rims: Array<[string, Uint8Array]>, at: Date, pins?: string[]): Promise<[Rim[], string[]]> {
  const loaded: Rim[] = [], problems: string[] = [];
  for (const [name, data] of rims) {
    try {
      loaded.push(await loadRim(data, at, name, pins));
    } catch (e) {
      if (!(e instanceof RimError)) throw e;
      problems.push(e.message);
    }
  }
  return [loaded, problems];
}

// -- steps 6 and 7 (verify_nvidia_rim.check_versions, check_measurements) ----------------------------
export interface Check {
  name: string;
  ok: boolean | null; // null: not checked
  detail: string;
}

/** The report fields the RIM steps read (gpu.ts's GpuReport). */
interface Reported {
  driver: string | null;
  vbios: string | null;
  measurements: Map<number, Uint8Array>;
}

const sameVersion = (a: string, b: string) => a.trim().toLowerCase() === b.trim().toLowerCase();
const VERSIONS = "GPU firmware versions", MEASUREMENTS = "GPU measurements";

export function checkVersions(report: Reported, rims: Rim[], rimsGiven: number, drivers: string[], vbios: string[]): Check {
  const actual = `driver ${report.driver}, VBIOS ${report.vbios}`;
  if (!rimsGiven && !drivers.length && !vbios.length) return { name: VERSIONS, ok: null, detail: `no RIMs and no version pins (${actual})` };
  const problems: string[] = [];
  if (report.driver === null || report.vbios === null) problems.push("the report does not state its driver and VBIOS versions");
  if (rimsGiven) {
    for (const [kind, reported] of [["driver", report.driver], ["vbios", report.vbios]] as const) {
      const ofKind = rims.filter((r) => r.kind === kind);
      const shown = kind === "vbios" ? "VBIOS" : kind;
      if (!ofKind.length) problems.push(`no valid ${shown} RIM given`);
      for (const rim of ofKind) if (reported === null || !sameVersion(rim.version, reported)) problems.push(`${shown} RIM '${rim.name}' is for ${rim.version}, the GPU runs ${reported}`);
      if (ofKind.length > 1) problems.push(`more than one ${shown} RIM given`);
    }
  }
  if (drivers.length && !drivers.some((p) => report.driver && sameVersion(report.driver, p))) problems.push(`driver ${report.driver} is not among the pinned ${drivers.join(", ")}`);
  if (vbios.length && !vbios.some((p) => report.vbios && sameVersion(report.vbios, p))) problems.push(`VBIOS ${report.vbios} is not among the pinned ${vbios.join(", ")}`);
  if (problems.length) return { name: VERSIONS, ok: false, detail: problems.join("; ") };
  const sources = [rimsGiven ? "the RIMs" : "", drivers.length || vbios.length ? "the version pins" : ""].filter(Boolean).join(" and ");
  return { name: VERSIONS, ok: true, detail: `${actual} match ${sources}` };
}

/** Step 7; ``unpinned`` is the page's own words for "no RIM and no pins" (where to pin). */
export function checkMeasurements(report: Reported, rims: Rim[], rimProblems: string[], drivers: string[], vbios: string[], unpinned: string): [Check, number] {
  const actual = `driver ${report.driver}, VBIOS ${report.vbios}`;
  const fail = (detail: string, matched = 0): [Check, number] => [{ name: MEASUREMENTS, ok: false, detail }, matched];
  if (!rims.length && !rimProblems.length) {
    if (drivers.length && vbios.length) return [{ name: MEASUREMENTS, ok: true, detail: `no RIM given: the ${report.measurements.size} measurements are not compared; the firmware is accepted by its signed versions (${actual}), which the version pins decide` }, 0];
    return fail(unpinned);
  }
  // 1. the golden values: driver and VBIOS RIMs must not both claim an index
  const golden = new Map<number, Uint8Array[]>();
  const clashes: number[] = [];
  for (const rim of rims)
    for (const [index, values] of rim.measurements) {
      if (golden.has(index)) clashes.push(index);
      golden.set(index, values);
    }
  if (clashes.length) return fail(`two RIMs both set measurement index(es) ${clashes.sort((a, b) => a - b).join(", ")}`);
  // 2. each active one against the report's block (RIM index i = SPDM block i + 1)
  const mismatched: number[] = [];
  for (const [index, values] of [...golden].sort((a, b) => a[0] - b[0])) {
    const seen = report.measurements.get(index + 1) ?? new Uint8Array();
    if (!values.some((v) => same(seen, v))) mismatched.push(index);
  }
  const matched = golden.size - mismatched.length;
  const unverified = rimProblems.length ? " (against RIMs whose signatures did not all verify)" : "";
  if (!golden.size) return fail("no valid RIM to compare with");
  if (mismatched.length) {
    return fail(`${mismatched.length} of ${golden.size} active measurements differ from the RIMs, at index(es) ${mismatched.join(", ")}${unverified}`, matched);
  }
  if (rimProblems.length) return fail(`all ${matched} active measurements match, but not every RIM verified`, matched);
  const kinds = new Set(rims.map((r) => r.kind));
  if (!(kinds.has("driver") && kinds.has("vbios"))) {
    const absent = kinds.has("vbios") ? "driver" : "VBIOS";
    return fail(`all ${matched} active measurements match, but no ${absent} RIM was given: the ${absent}'s measurements are unchecked`, matched);
  }
  return [{ name: MEASUREMENTS, ok: true, detail: `all ${matched} active measurements match the RIMs (${rims.map((r) => r.name).join(", ")})` }, matched];
}
