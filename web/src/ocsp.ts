// Recorded OCSP replies checked in the page, as pki_nvidia (load_ocsp_reply, matches, check_ocsp)
// and verify_nvidia_ocsp (ocsp_step, rim_chain_pairs): parsed with PKI.js (OCSPResponse,
// BasicOCSPResponse), hashes and signatures with WebCrypto. A reply is matched to a certificate by
// its CertID (serial, issuer name hash, issuer key hash); it must be signed by the issuer or by a
// responder the issuer delegated (signed by it, OCSP-signing usage, valid at the time), say GOOD,
// and be fresh: thisUpdate <= at <= nextUpdate, or at most a day old without nextUpdate.
import * as asn1js from "asn1js";
import { BasicOCSPResponse, OCSPResponse, RelativeDistinguishedNames, SingleResponse } from "pkijs";
import { buf, same } from "./bytes";
import { curveOf, curveSize, decodeOne, ecdsaIssued, ecKey, fromCertificate, hasEku, label, OID, rawEcdsa, stamp, validity, type Cert } from "./x509";

const BASIC = "1.3.6.1.5.5.7.48.1.1";
const DAY = 24 * 3600 * 1000;
export const DEFAULT_OCSP_MAX_AGE = DAY; // pki_nvidia.DEFAULT_OCSP_MAX_AGE, for a reply without nextUpdate
const HASHES: Record<string, string> = { "1.3.14.3.2.26": "SHA-1", [OID.sha256]: "SHA-256", [OID.sha384]: "SHA-384", [OID.sha512]: "SHA-512" };
const SIG_HASH: Record<string, [string, string]> = {
  [OID.ecdsaSha256]: ["ECDSA", "SHA-256"],
  [OID.ecdsaSha384]: ["ECDSA", "SHA-384"],
  [OID.ecdsaSha512]: ["ECDSA", "SHA-512"],
  "1.2.840.113549.1.1.11": ["RSA", "SHA-256"],
  "1.2.840.113549.1.1.12": ["RSA", "SHA-384"],
  "1.2.840.113549.1.1.13": ["RSA", "SHA-512"],
};
// OCSPResponseStatus names, as cryptography's enum
const STATUS = ["SUCCESSFUL", "MALFORMED_REQUEST", "INTERNAL_ERROR", "TRY_LATER", "", "SIG_REQUIRED", "UNAUTHORIZED"];

export class OcspError extends Error {}

export interface OcspReply {
  name: string;
  status: number;
  basic: BasicOCSPResponse | null; // for a SUCCESSFUL reply
  single: SingleResponse | null;
}

function strictB64(raw: Uint8Array): Uint8Array | null {
  // base64.b64decode(b"".join(raw.split()), validate=True)
  const text = Array.from(raw, (c) => String.fromCharCode(c)).join("").replace(/[ \t\n\r\v\f]+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) return null;
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** A DER OCSP response, or its base64 text (NVIDIA's recorded .dat files). */
export function loadReply(name: string, data: Uint8Array): OcspReply {
  let raw = data;
  if (raw[0] !== 0x30) {
    const decoded = strictB64(raw);
    if (decoded === null) throw new OcspError(`OCSP reply '${name}' is neither DER nor base64`);
    raw = decoded;
  }
  const bad = new OcspError(`OCSP reply '${name}' is not a DER OCSP response`);
  const value = decodeOne(raw);
  if (value === null) throw bad;
  try {
    const response = new OCSPResponse({ schema: value });
    const status = response.responseStatus.valueBlock.valueDec;
    if (status !== 0) return { name, status, basic: null, single: null };
    const bytes = response.responseBytes;
    if (!bytes || bytes.responseType !== BASIC) throw bad;
    const inner = decodeOne(new Uint8Array(bytes.response.valueBlock.valueHexView));
    if (inner === null) throw bad;
    const basic = new BasicOCSPResponse({ schema: inner });
    // one SingleResponse per reply, as NVIDIA's responders answer (cryptography reads only those)
    if (basic.tbsResponseData.responses.length !== 1) throw bad;
    return { name, status, basic, single: basic.tbsResponseData.responses[0] };
  } catch {
    throw bad;
  }
}

async function digest(hash: string, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest(hash, buf(data)));
}

const keyBits = (c: Cert) => new Uint8Array(c.cert.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView);

/** Is ``reply`` about ``cert`` (serial number, issuer name hash and issuer key hash)? */
export async function matches(reply: OcspReply, cert: Cert, issuer: Cert): Promise<boolean> {
  if (reply.status !== 0 || reply.single === null) return false;
  const id = reply.single.certID;
  const hash = HASHES[id.hashAlgorithm.algorithmId];
  if (!hash) return false;
  const nameHash = await digest(hash, new Uint8Array(cert.cert.issuer.toSchema().toBER(false)));
  const keyHash = await digest(hash, keyBits(issuer));
  return id.serialNumber.isEqual(cert.cert.serialNumber) && same(new Uint8Array(id.issuerNameHash.valueBlock.valueHexView), nameHash) && same(new Uint8Array(id.issuerKeyHash.valueBlock.valueHexView), keyHash);
}

async function namesResponder(basic: BasicOCSPResponse, c: Cert): Promise<boolean> {
  const id = basic.tbsResponseData.responderID;
  if (id instanceof RelativeDistinguishedNames) return id.isEqual(c.cert.subject);
  if (id instanceof asn1js.OctetString) return same(new Uint8Array(id.valueBlock.valueHexView), await digest("SHA-1", keyBits(c)));
  return false;
}

async function signatureValid(basic: BasicOCSPResponse, signer: Cert): Promise<boolean> {
  const alg = SIG_HASH[basic.signatureAlgorithm.algorithmId];
  if (!alg) return false;
  const sig = new Uint8Array(basic.signature.valueBlock.valueHexView);
  const tbs = buf(basic.tbsResponseData.tbsView);
  try {
    if (alg[0] === "ECDSA") {
      const size = curveSize(signer);
      const raw = size === null ? null : rawEcdsa(sig, size);
      return raw !== null && curveOf(signer) !== null && (await crypto.subtle.verify({ name: "ECDSA", hash: alg[1] }, await ecKey(signer), buf(raw), tbs));
    }
    const spki = signer.cert.subjectPublicKeyInfo.toSchema().toBER(false);
    const key = await crypto.subtle.importKey("spki", spki, { name: "RSASSA-PKCS1-v1_5", hash: alg[1] }, false, ["verify"]);
    return await crypto.subtle.verify("RSASSA-PKCS1-v1_5", key, buf(sig), tbs);
  } catch {
    return false;
  }
}

/** Python's str(timedelta) for whole seconds ("1 day, 0:00:00"). */
function pyDelta(ms: number): string {
  const days = Math.floor(ms / DAY), rest = Math.floor((ms % DAY) / 1000);
  const hms = `${Math.floor(rest / 3600)}:${String(Math.floor((rest % 3600) / 60)).padStart(2, "0")}:${String(rest % 60).padStart(2, "0")}`;
  return days ? `${days} day${days === 1 ? "" : "s"}, ${hms}` : hms;
}

/** pki_nvidia.check_ocsp: throws OcspError unless ``reply`` says GOOD for ``cert`` at ``at``. */
export async function checkOcsp(reply: OcspReply, cert: Cert, issuer: Cert, at: Date, maxAge = DEFAULT_OCSP_MAX_AGE): Promise<void> {
  const what = `OCSP reply '${reply.name}' for '${label(cert)}'`;
  // 1. answered, and about this certificate
  if (reply.status !== 0 || reply.basic === null || reply.single === null) throw new OcspError(`${what}: responder status ${STATUS[reply.status] || reply.status}`);
  if (!(await matches(reply, cert, issuer))) throw new OcspError(`${what}: it is about another certificate (serial or issuer differs)`);
  const basic = reply.basic, single = reply.single;
  // 2. signed by the issuer or by a responder the issuer delegated
  let signer = issuer;
  if (!(await namesResponder(basic, issuer))) {
    const delegated: Cert[] = [];
    for (const c of basic.certs ?? []) {
      const wrapped = fromCertificate(c);
      if (await namesResponder(basic, wrapped)) delegated.push(wrapped);
    }
    if (!delegated.length) throw new OcspError(`${what}: the responder is neither the issuer nor a delegate it names`);
    signer = delegated[0];
    if (!(await ecdsaIssued(signer, issuer))) throw new OcspError(`${what}: responder certificate '${label(signer)}' is not signed by '${label(issuer)}'`);
    if (!hasEku(signer, OID.ocspSigning)) throw new OcspError(`${what}: responder '${label(signer)}' lacks the OCSP-signing usage`);
    const [start, end] = validity(signer);
    if (!(start <= at && at <= end)) throw new OcspError(`${what}: responder certificate '${label(signer)}' is valid ${stamp(start)} .. ${stamp(end)}, not at ${stamp(at)}`);
  }
  if (!(await signatureValid(basic, signer))) throw new OcspError(`${what}: the reply's signature does not verify`);
  // 3. the status: good [0], revoked [1] (revocationTime first), unknown [2]
  const status = single.certStatus as asn1js.BaseBlock;
  const tag = status.idBlock.tagClass === 3 ? status.idBlock.tagNumber : -1;
  if (tag === 1) {
    const time = (status as asn1js.Constructed).valueBlock.value[0];
    throw new OcspError(`${what}: REVOKED at ${time instanceof asn1js.GeneralizedTime ? stamp(time.toDate()) : "an unknown time"}`);
  }
  if (tag !== 0) throw new OcspError(`${what}: status ${tag === 2 ? "UNKNOWN" : "unreadable"}, expected GOOD`);
  // 4. fresh at ``at``
  const thisUpdate = single.thisUpdate, nextUpdate = single.nextUpdate;
  if (at < thisUpdate) throw new OcspError(`${what}: issued ${stamp(thisUpdate)}, after the verification time ${stamp(at)}`);
  if (nextUpdate !== undefined && at > nextUpdate) throw new OcspError(`${what}: stale, valid ${stamp(thisUpdate)} .. ${stamp(nextUpdate)}, not at ${stamp(at)}`);
  if (nextUpdate === undefined && at.getTime() - thisUpdate.getTime() > maxAge) throw new OcspError(`${what}: issued ${stamp(thisUpdate)}, older than the allowed ${pyDelta(maxAge)} at ${stamp(at)}`);
}

/** verify_nvidia_ocsp.load_replies. */
export function loadReplies(items: Array<[string, Uint8Array]>): [OcspReply[], string[]] {
  const replies: OcspReply[] = [], problems: string[] = [];
  for (const [name, data] of items) {
    try {
      replies.push(loadReply(name, data));
    } catch (e) {
      if (!(e instanceof OcspError)) throw e;
      problems.push(e.message);
    }
  }
  return [replies, problems];
}

export interface OcspCheck {
  name: string;
  ok: boolean | null; // null: not checked
  detail: string;
}

/** verify_nvidia_ocsp.ocsp_step: every pair covered by a matching reply that says GOOD at ``at``. */
export async function ocspStep(name: string, what: string, pairs: Array<[Cert, Cert]>, replies: OcspReply[], used: Set<number>, at: Date, maxAge: number, extraProblems: string[]): Promise<OcspCheck> {
  const covered: string[] = [], missing: string[] = [], problems = [...extraProblems];
  for (const [cert, issuer] of pairs) {
    const mine: number[] = [];
    for (const [i, reply] of replies.entries()) if (await matches(reply, cert, issuer)) mine.push(i);
    if (!mine.length) {
      missing.push(label(cert));
      continue;
    }
    for (const i of mine) {
      used.add(i);
      try {
        await checkOcsp(replies[i], cert, issuer, at, maxAge);
      } catch (e) {
        if (!(e instanceof OcspError)) throw e;
        problems.push(e.message);
      }
    }
    covered.push(label(cert));
  }
  if (!covered.length && !problems.length) return { name, ok: null, detail: `no OCSP replies for the ${what}: revocation not checked` };
  if (missing.length) problems.push(`no OCSP reply for ${missing.join(", ")}`);
  if (problems.length) return { name, ok: false, detail: problems.join("; ") };
  return { name, ok: true, detail: `GOOD at ${stamp(at)} for ${covered.join(", ")}` };
}

/** verify_nvidia_ocsp.rim_chain_pairs: each (certificate, issuer) of the RIM chains, once. */
export function rimChainPairs(chains: Cert[][]): Array<[Cert, Cert]> {
  const pairs: Array<[Cert, Cert]> = [], seen = new Set<string>();
  for (const chain of chains)
    for (let i = 0; i + 1 < chain.length; i++) {
      const c = chain[i].cert;
      const key = `${Array.from(new Uint8Array(c.serialNumber.valueBlock.valueHexView)).join(",")}|${Array.from(new Uint8Array(c.issuer.toSchema().toBER(false))).join(",")}`;
      if (!seen.has(key)) {
        seen.add(key);
        pairs.push([chain[i], chain[i + 1]]);
      }
    }
  return pairs;
}
